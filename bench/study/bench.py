"""Driver of bench/study/run: see its header. Prints a Markdown table; writes results.json."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

flow, work, reps, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(os.path.join(work, "ds", "real"), exist_ok=True)
for i in range(200):
    with open(os.path.join(work, "ds", "real", f"{i:04}.jpg"), "wb") as f:
        f.write(os.urandom(4096))
shutil.copy(base, os.path.join(work, "base.ron"))


def study(name, points):
    lrs = ", ".join(f'{{"EPOCHS": "15", "LR": "{i + 1}e-5"}}' for i in range(points))
    text = f'Study(name: "{name}", base: "base.ron", grid: {{"train.env": [{lrs}]}})\n'
    with open(os.path.join(work, f"{name}.ron"), "w") as f:
        f.write(text)
    return f"{name}.ron"


def flow_cmd(*args, check=True):
    r = subprocess.run([flow, *args], cwd=work, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"flow {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def timed(*args):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        flow_cmd(*args)
        out.append(time.perf_counter() - t)
    return statistics.median(out), out


s12 = study("grid12", 12)
s1k = study("grid1k", 70)
n12 = json.loads(flow_cmd("--json", "check", s12).stdout)["files"][0]["instances"]
n1k = json.loads(flow_cmd("--json", "check", s1k).stdout)["files"][0]["instances"]
flow_cmd("run", "--json", "base.ron")
first = flow_cmd("run", "--json", s12)
executed = len(json.loads(first.stdout)["executed"])
noop_base, _ = timed("run", "--json", "base.ron")
noop_12, _ = timed("run", "--json", s12)
check_1k, _ = timed("check", s1k)
status_never, _ = timed("status", s1k)
flow_cmd("run", "--json", s1k)
status_1k, _ = timed("status", s1k)
noop_1k, _ = timed("run", "--json", s1k)
rows = [
    ("no-op, the one pipeline (17 instances)", noop_base, ""),
    (f"no-op, 12-variant study ({n12} instances)", noop_12, f"{noop_12 / noop_base:.1f}× the one pipeline"),
    (f"flow check, {n1k}-instance study", check_1k, ""),
    (f"flow status, {n1k}-instance study, never run", status_never, ""),
    (f"flow status, {n1k}-instance study, all fresh", status_1k, ""),
    (f"no-op, {n1k}-instance study", noop_1k, f"{noop_1k / noop_base:.1f}× the one pipeline"),
]
print(f"flow {flow_cmd('--version').stdout.strip()}; {os.cpu_count()} cores; median of {reps}")
print(f"(first run of the 12-variant study executed {executed} instances: the base's 17 were cached)\n")
print("| what | seconds | note |\n|---|---|---|")
for what, secs, note in rows:
    print(f"| {what} | {secs:.3f} | {note} |")
with open(os.path.join(work, "results.json"), "w") as f:
    json.dump({"rows": rows, "instances": {"grid12": n12, "grid1k": n1k}, "first_executed_12": executed}, f, indent=1)
