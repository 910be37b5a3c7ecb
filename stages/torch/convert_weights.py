#!/usr/bin/env python3
"""Convert a PyTorch checkpoint into the .safetensors file flow's `Train(pretrained: ...)` loads.

flow's models use their library's parameter names, so a converted state_dict loads by name:

    flow model            library name (source)
    ResNet18/34/50        resnet18 / resnet34 / resnet50 (torchvision; timm's resnets share the names)
    EfficientNetB0..B3    efficientnet_b0 .. efficientnet_b3 (torchvision)
    MobileNetV2           mobilenet_v2 (torchvision)
    ConvNeXtTiny          convnext_tiny (torchvision)
    MobileNetV3Small      mobilenet_v3_small (torchvision)
    MobileNetV3Large      mobilenet_v3_large (torchvision)
    VitS16                vit_small_patch16_224 (timm)
    MobileNetV4ConvSmall  mobilenetv4_conv_small (timm)

The classifier head (`fc.*`, `classifier.*`, ViT's `head.*`) may have any shape: flow skips it
when it does not fit its one-logit head, and reports that in meta.json. As a Radar/Spotter
backbone the same names sit under `backbone.`.

    # torchvision ImageNet weights (downloads them once into torch's cache)
    python convert_weights.py torchvision resnet18 weights/resnet18.safetensors
    python convert_weights.py torchvision convnext_tiny weights/convnext_tiny.safetensors

    # timm (pretrained weights from the Hugging Face hub)
    python convert_weights.py timm vit_small_patch16_224 weights/vit_s16.safetensors
    python convert_weights.py timm mobilenetv4_conv_small weights/mnv4s.safetensors

    # a checkpoint file: a state_dict, or a dict holding one under "state_dict" / "model"
    python convert_weights.py file my_checkpoint.pth weights/mine.safetensors

    # random init, one logit (never downloads; flow's tests compare names and outputs)
    python convert_weights.py torchvision convnext_tiny /tmp/cnx.safetensors --random --num-classes 1
    python convert_weights.py timm vit_small_patch16_224 /tmp/vit.safetensors --random --num-classes 1 --img-size 64

Needs `torch` and `safetensors` (pip install safetensors); torchvision or timm for those
sources. The core of it is just:

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "out.safetensors")
"""

import argparse
import sys


def build_model(source, name, weights="DEFAULT", random=False, num_classes=None, img_size=None):
    """The torchvision or timm model `name`: pretrained (downloads), or random-initialised
    when `random` (never downloads). `num_classes` / `img_size` are passed on when given."""
    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if source == "torchvision":
        import torchvision

        if img_size is not None:
            sys.exit("--img-size is for timm models")
        if not random and num_classes is not None:
            sys.exit("--num-classes needs --random for torchvision (its pretrained heads have 1000 classes)")
        return torchvision.models.get_model(name, weights=None if random else weights, **kwargs)
    if source == "timm":
        import timm

        if img_size is not None:
            kwargs["img_size"] = img_size
        return timm.create_model(name, pretrained=not random, **kwargs)
    raise ValueError(f"no model source {source!r}")


def load_state_dict(source, name, weights="DEFAULT", random=False, num_classes=None, img_size=None):
    import torch

    if source in ("torchvision", "timm"):
        return build_model(source, name, weights, random, num_classes, img_size).state_dict()
    if random or num_classes is not None or img_size is not None:
        sys.exit("--random, --num-classes and --img-size are for torchvision/timm models")
    obj = torch.load(name, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    return obj


def to_tensors(sd):
    """The tensors of a state_dict, contiguous on the CPU, without DataParallel / Lightning
    prefixes."""
    import torch

    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v.detach().cpu().contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=["torchvision", "timm", "file"])
    ap.add_argument("name", help="model name (torchvision/timm) or checkpoint path (file)")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--weights", default="DEFAULT", help="torchvision weights enum name (default: DEFAULT)")
    ap.add_argument("--random", action="store_true", help="random init (weights=None / pretrained=False); never downloads")
    ap.add_argument("--num-classes", type=int, default=None, help="classes of the head (with --random for torchvision)")
    ap.add_argument("--img-size", type=int, default=None, help="timm img_size (a ViT's position embeddings)")
    args = ap.parse_args()
    if not args.out.endswith(".safetensors"):
        sys.exit("the output file must end in .safetensors")

    from safetensors.torch import save_file

    sd = load_state_dict(args.source, args.name, args.weights, args.random, args.num_classes, args.img_size)
    out = to_tensors(sd)
    save_file(out, args.out)
    heads = [k for k in out if k.startswith(("fc.", "classifier.", "head."))]
    print(f"wrote {len(out)} tensors to {args.out}; head tensors (skipped by flow if their shape differs): {heads}")


if __name__ == "__main__":
    main()
