#!/usr/bin/env python3
"""Convert a PyTorch checkpoint into the .safetensors file flow's `Train(pretrained: ...)` loads.

flow's backbones use torchvision's parameter names (ResNet18/34/50, EfficientNetB0..B3,
MobileNetV2). The classifier head (`fc.*`, `classifier.1.*`) may have any shape: flow skips it
when it does not fit its one-logit head, and reports that in meta.json.

    # torchvision ImageNet weights (downloads them once into torch's cache)
    python convert_weights.py torchvision resnet18 weights/resnet18.safetensors
    python convert_weights.py torchvision efficientnet_b0 weights/effnet_b0.safetensors

    # timm (only models whose names match torchvision's, e.g. timm's resnet18/34/50)
    python convert_weights.py timm resnet18 weights/resnet18_timm.safetensors

    # a checkpoint file: a state_dict, or a dict holding one under "state_dict" / "model"
    python convert_weights.py file my_checkpoint.pth weights/mine.safetensors

Needs `torch` and `safetensors` (pip install safetensors); torchvision or timm for those
sources. The core of it is just:

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "out.safetensors")
"""

import argparse
import sys


def load_state_dict(source, name, weights):
    import torch

    if source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=weights)
        return model.state_dict()
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=True).state_dict()
    obj = torch.load(name, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=["torchvision", "timm", "file"])
    ap.add_argument("name", help="model name (torchvision/timm) or checkpoint path (file)")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--weights", default="DEFAULT", help="torchvision weights enum name (default: DEFAULT)")
    args = ap.parse_args()
    if not args.out.endswith(".safetensors"):
        sys.exit("the output file must end in .safetensors")

    import torch
    from safetensors.torch import save_file

    sd = load_state_dict(args.source, args.name, args.weights)
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        # DataParallel / Lightning prefixes
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v.detach().cpu().contiguous()
    save_file(out, args.out)
    heads = [k for k in out if k.startswith(("fc.", "classifier."))]
    print(f"wrote {len(out)} tensors to {args.out}; head tensors (skipped by flow if their shape differs): {heads}")


if __name__ == "__main__":
    main()
