"""Stand-in for a face cropper run by an `Exec` stage (examples/facecrop.ron).

Reads the Ingest outputs linked into the working directory (manifest.csv + images/), keeps
the central FRACTION of every image, and writes manifest.csv + images/ in the Ingest format
(same items, labels, sources and groups; each image in its input's format, PNG or JPEG; new
content hashes and sizes). The inputs are
read-only links into flow's store: results are written as new files (os.replace), never
through the links.
"""
import csv
import hashlib
import io
import os
import sys

from PIL import Image

frac = float(sys.argv[1]) if len(sys.argv) > 1 else 0.75
with open("manifest.csv", newline="") as f:
    reader = csv.DictReader(f)
    fields = reader.fieldnames
    rows = list(reader)
out = []
for r in rows:
    path = r["path"]
    src = Image.open(path)
    jpeg = src.format == "JPEG"
    img = src.convert("RGB")
    w, h = img.size
    cw, ch = max(1, int(w * frac)), max(1, int(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    buf = io.BytesIO()
    # Same format as the input (its file name says so): a JPEG stays a JPEG, as a cropper's
    # output would, re-encoded at a high quality.
    img.crop((left, top, left + cw, top + ch)).save(buf, **({"format": "JPEG", "quality": 95} if jpeg else {"format": "PNG"}))
    data = buf.getvalue()
    with open(path + ".tmp", "wb") as g:
        g.write(data)
    os.replace(path + ".tmp", path)
    out.append(dict(r, hash=hashlib.sha256(data).hexdigest(), width=cw, height=ch, format="jpeg" if jpeg else "png"))
with open("manifest.csv.tmp", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(out)
os.replace("manifest.csv.tmp", "manifest.csv")
print(f"cropped {len(out)} images to {frac:.0%}")
