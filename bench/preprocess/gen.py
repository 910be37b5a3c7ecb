"""Deterministic synthetic test images for the preprocessing benchmark.

    python gen.py OUT_DIR N SIZE FORMAT [QUALITY]      FORMAT: jpeg | png

Each image: a smooth random colour field (8x8 noise upscaled bicubic), a few random ellipses and
rectangles, and mild Gaussian noise, so the JPEG entropy (and file size, ~20-30 KB at 256 px,
quality 90) is in the range of natural photos instead of flat colours or pure noise.
Files are named 00000.jpg ... and only written when missing.
"""

import os
import sys

import numpy as np
from PIL import Image, ImageDraw


def make(rng: np.random.Generator, size: int) -> Image.Image:
    field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(field, "RGB").resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if rng.random() < 0.6:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, 6.0, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    out, n, size, fmt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    quality = int(sys.argv[5]) if len(sys.argv) > 5 else 90
    ext = {"jpeg": "jpg", "png": "png"}[fmt]
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        path = os.path.join(out, f"{i:05d}.{ext}")
        if os.path.exists(path):
            continue
        img = make(np.random.default_rng([size, i]), size)
        if fmt == "jpeg":
            img.save(path, "JPEG", quality=quality)
        else:
            img.save(path, "PNG")


if __name__ == "__main__":
    main()
