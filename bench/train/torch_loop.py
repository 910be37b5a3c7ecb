"""The same training loop as flow's Train stage, written the way a researcher would in PyTorch.

Reads the Preprocess stage's u8 shard (not timed), then trains MODEL (torchvision's resnet18,
convnext_tiny, mobilenet_v3_small, efficientnet_b0, or timm's vit_small_patch16_224 /
mobilenetv4_conv_small, written `timm/<name>`) with one logit: per batch, u8 HWC -> float, normalise (ImageNet), random horizontal flip (p=0.5),
NCHW, forward, BCE-with-logits, backward, AdamW (torch's default implementation), cosine lr.
Batches are built in the training process, vectorised (no per-image Python), which is the
fast way to write it. Prints one JSON line: images/s of each epoch's training loop.

usage: torch_loop.py PREPROCESS_DIR ROWS_CSV THREADS EPOCHS BATCH [MODEL]
  ROWS_CSV: the rows (of the shard) to train on, one per line, in flow's epoch-1 order is not
  required; the loop shuffles with its own seed.
"""
import json
import sys
import time

import numpy as np
import torch
import torchvision


def build(name, size):
    if name.startswith("timm/"):
        import timm

        kw = {"img_size": size} if "vit" in name else {}
        return timm.create_model(name[5:], pretrained=False, num_classes=1, **kw)
    return torchvision.models.get_model(name, weights=None, num_classes=1)


def main():
    pre, rows_csv, threads, epochs, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    meta = json.load(open(f"{pre}/preprocess.json"))
    s = meta["size"]
    assert len(meta["shards"]) == 1, "bench data fits one shard"
    pix = np.fromfile(f"{pre}/{meta['shards'][0]}", dtype=np.uint8).reshape(-1, s, s, 3)
    index = {}
    for line in open(f"{pre}/index.csv").read().splitlines()[1:]:
        f = line.split(",")
        index[int(f[0])] = int(f[3])
    rows = [int(x) for x in open(rows_csv).read().split()]
    x_all = torch.from_numpy(pix[rows].copy())  # [n, s, s, 3] u8
    y_all = torch.tensor([float(index[r]) for r in rows])
    n = len(rows)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    model = build(sys.argv[6] if len(sys.argv) > 6 else "resnet18", s)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    steps = epochs * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for b in range(0, n, bs):
            idx = perm[b : b + bs]
            x = x_all[idx].permute(0, 3, 1, 2).float().div_(255.0)
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(3)
            x = (x - mean) / std
            y = y_all[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x).view(-1), y)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
        rates.append(n / (time.perf_counter() - t0))
    print(json.dumps({"images_per_s": rates, "torch": torch.__version__, "threads": threads}))


if __name__ == "__main__":
    main()
