"""PIL + torchvision side of the preprocessing benchmark (single thread).

    python pil_bench.py DIR SIZE [--interp bilinear|bicubic] [--min-secs S]
                        [--compare RUST_DUMP --dump-count K] [--limit N]

Per image, from bytes already in memory (like the Rust side):
    Image.open(BytesIO(b)).convert("RGB")
    -> Resize(SIZE) -> CenterCrop(SIZE) -> ToTensor() -> Normalize(ImageNet mean/std)
Prints one line of JSON. With --compare, also the difference to the Rust tensors (f32 LE, CHW)
for the first K images, in 0..255 pixel units.
"""

import argparse
import io
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("size", type=int)
    ap.add_argument("--interp", default="bilinear", choices=["bilinear", "bicubic"])
    ap.add_argument("--min-secs", type=float, default=3.0)
    ap.add_argument("--compare")
    ap.add_argument("--dump-count", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N files (0: all)")
    a = ap.parse_args()

    torch.set_num_threads(1)
    interp = {
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
    }[a.interp]
    tf = transforms.Compose(
        [
            transforms.Resize(a.size, interpolation=interp),
            transforms.CenterCrop(a.size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    names = sorted(n for n in os.listdir(a.dir) if os.path.isfile(os.path.join(a.dir, n)))
    if a.limit:
        names = names[: a.limit]
    files = [open(os.path.join(a.dir, n), "rb").read() for n in names]

    def one(b: bytes) -> torch.Tensor:
        return tf(Image.open(io.BytesIO(b)).convert("RGB"))

    result = {"impl": "pil+torchvision", "files": len(files), "size": a.size, "interp": a.interp}
    if a.compare:
        k = min(a.dump_count, len(files))
        ours = np.fromfile(a.compare, dtype="<f4").reshape(k, 3, a.size, a.size)
        theirs = np.stack([one(b).numpy() for b in files[:k]])
        diff = np.abs(ours - theirs) * np.array(STD, dtype=np.float32)[None, :, None, None] * 255.0
        result["diff_vs_rust_mean_levels"] = round(float(diff.mean()), 3)
        result["diff_vs_rust_p99_levels"] = round(float(np.percentile(diff, 99)), 3)
        result["diff_vs_rust_max_levels"] = round(float(diff.max()), 3)

    for b in files:  # warm-up
        one(b)
    checksum = 0.0
    # CPU time of the process (one thread): the per-core figure, robust to other load.
    wall0, start = time.perf_counter(), time.process_time()
    n = 0
    while n == 0 or time.process_time() - start < a.min_secs:
        for b in files:
            checksum += float(one(b)[0, 0, 0])
        n += len(files)
    total = time.process_time() - start
    wall = time.perf_counter() - wall0

    start = time.process_time()
    nd = 0
    while nd == 0 or time.process_time() - start < a.min_secs / 3:
        for b in files:
            Image.open(io.BytesIO(b)).convert("RGB")
        nd += len(files)
    dec = time.process_time() - start

    result.update(
        images=n,
        cpu_seconds=round(total, 3),
        wall_seconds=round(wall, 3),
        images_per_cpu_s=round(n / total, 1),
        cpu_us_per_image=round(total / n * 1e6, 1),
        decode_only_cpu_us=round(dec / nd * 1e6, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
