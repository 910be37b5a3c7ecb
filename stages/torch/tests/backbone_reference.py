#!/usr/bin/env python3
"""Reference outputs for flow's backbone tests (`cargo test -p flow-stages-torch --lib backbones`).

    backbone_reference.py SOURCE NAME OUT.safetensors SIZE [--img-size N]
        [--map MODULE]... [--vit-map MODULE] [--pooled MODULE] [--pos-embed]

Builds the torchvision/timm model `NAME` with random weights and one class through
convert_weights.py (never downloads), perturbs what random init leaves trivial (batch-norm
statistics and affines, layer scales, the CLS token) so a swapped name cannot go unnoticed,
and writes its state_dict plus, under reserved `__` names: `__input` (a fixed [2, 3, SIZE,
SIZE] batch), `__output` (eval-mode model output), `__map.<i>` (outputs of the --map
modules, in order), `__pooled` (the --pooled module's output, flattened), and with
--pos-embed `__pos_src` / `__pos_dst` (timm's resample_abs_pos_embed of a 14x14-grid
embedding to SIZE/16).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import convert_weights  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source", choices=["torchvision", "timm"])
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("size", type=int)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--map", action="append", default=[])
    ap.add_argument("--vit-map", default=None)
    ap.add_argument("--pooled", default=None)
    ap.add_argument("--pos-embed", action="store_true")
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = convert_weights.build_model(args.source, args.name, random=True, num_classes=1, img_size=args.img_size)
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        for n, p in model.named_parameters():
            if n.endswith("layer_scale") or n == "cls_token":
                p.uniform_(0.2, 1.0)
    model.eval()

    mods = dict(model.named_modules())
    got = {}

    def hook(key):
        def f(_m, _i, out):
            got[key] = out.detach()
        return f

    for i, name in enumerate(args.map):
        mods[name].register_forward_hook(hook(f"__map.{i}"))
    if args.vit_map:
        mods[args.vit_map].register_forward_hook(hook("__vit"))
    if args.pooled:
        mods[args.pooled].register_forward_hook(hook("__pooled"))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, args.size, args.size, generator=g)
    with torch.no_grad():
        y = model(x)
    out = convert_weights.to_tensors(model.state_dict())
    out["__input"] = x
    out["__output"] = y
    for k, v in got.items():
        if k == "__vit":
            n, t, d = v.shape
            s = args.size // 16
            out["__map.0"] = v[:, 1:].transpose(1, 2).reshape(n, d, s, s)
        elif k == "__pooled":
            out[k] = v.flatten(1)
        else:
            out[k] = v
    if args.pos_embed:
        from timm.layers import resample_abs_pos_embed

        src = torch.randn(1, 1 + 14 * 14, 384, generator=g)
        out["__pos_src"] = src
        out["__pos_dst"] = resample_abs_pos_embed(src, [args.size // 16] * 2, num_prefix_tokens=1)
    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
