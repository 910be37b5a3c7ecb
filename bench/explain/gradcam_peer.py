"""pytorch-grad-cam on the items flow's Explain explained (bench/explain/run): for each fold,
torchvision resnet18(num_classes=1) with flow's model.safetensors, GradCAM and GradCAMPlusPlus
at layer4[-1] on the fold's held-out items (flow's Preprocess pixels, the model's
normalisation), batch 32. Prints {"items": n, "seconds": s}."""
import json, os, sys, time

import numpy as np
import torch, torchvision
from safetensors.torch import load_file
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

w, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
out = os.path.join(w, "out", "bench-explain")
pre = os.path.join(out, "pre")
info = json.load(open(os.path.join(pre, "preprocess.json")))
s = info["size"]
px = np.concatenate([np.fromfile(os.path.join(pre, f), dtype=np.uint8) for f in info["shards"]]).reshape(-1, s, s, 3)
rows = {}
import csv
for r in csv.DictReader(open(os.path.join(pre, "index.csv"))):
    rows[r["item"]] = int(r["row"])
total, n = 0.0, 0
for k in range(5):
    fold = os.path.join(out, "train", f"fold{k}")
    meta = json.load(open(os.path.join(fold, "meta.json")))
    norm = meta["normalize"]
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    doc = json.load(open(os.path.join(out, "explain", f"fold{k}", "explain.json")))
    idx = [rows[i["item"]] for i in doc["items"]]
    x = torch.from_numpy(px[idx]).permute(0, 3, 1, 2).float() / 255.0
    x = (x - mean) / std
    t0 = time.perf_counter()
    m = torchvision.models.resnet18(num_classes=1)
    m.load_state_dict(load_file(os.path.join(fold, "model.safetensors")))
    m.eval()
    for cls in (GradCAM, GradCAMPlusPlus):
        with cls(model=m, target_layers=[m.layer4[-1]]) as cam:
            for b in range(0, len(idx), 32):
                xb = x[b:b + 32]
                cam(input_tensor=xb, targets=[BinaryClassifierOutputTarget(1)] * len(xb))
    total += time.perf_counter() - t0
    n += len(idx)
print(json.dumps({"items": n, "seconds": total}))
