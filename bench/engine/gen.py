#!/usr/bin/env python3
"""The engine benchmark's dataset: N files of 4 KiB of random bytes named *.jpg under
ds/{real,fake}/<source>/, deterministic (seed 0). Sources: real/ffhq plus four fake ones;
files are dealt round-robin over the five.

    gen.py DIR N          writes DIR/ds (DIR/ds is removed first); prints a one-line summary
"""
import os
import random
import shutil
import sys

SOURCES = ["real/ffhq", "fake/stylegan2", "fake/sd15", "fake/dalle3", "fake/faceswap"]
SIZE = 4096


def main():
    root, n = sys.argv[1], int(sys.argv[2])
    ds = os.path.join(root, "ds")
    if os.path.exists(ds):
        shutil.rmtree(ds)
    rng = random.Random(0)
    made = set()
    for i in range(n):
        src = SOURCES[i % len(SOURCES)]
        j = i // len(SOURCES)
        d = os.path.join(ds, src)
        if d not in made:
            os.makedirs(d)
            made.add(d)
        with open(os.path.join(d, f"{j:06d}.jpg"), "wb") as f:
            f.write(rng.randbytes(SIZE))
    print(f"{n} files of {SIZE} B in {len(made)} directories under {ds}")


if __name__ == "__main__":
    main()
