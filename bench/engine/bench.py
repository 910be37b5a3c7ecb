#!/usr/bin/env python3
"""Timing driver of the engine benchmark (see bench/engine/README.md; run it via bench/engine/run).

    bench.py --work DIR --files N --reps R --flow BIN --peers VENV_BIN [--only flow,dvc,snakemake]
             [--mtime-restored]

Expects DIR/ds (gen.py). Each tool gets its own full copy of ds (DIR/<tool>/ds, `cp -a`) and its
pipeline files. Per repetition and tool, from an empty cache: first run, no-op rerun, calibrate's
param edited, one dataset file's content changed (in place, same size, mtime moves naturally);
optionally (--mtime-restored) another file changed with its mtime put back. Every command is timed
in wall-clock seconds with the peak RSS of its process tree (wait4's ru_maxrss: the largest single
process among the command and the descendants it reaped). Medians over repetitions.
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ["flow", "dvc", "snakemake"]
NAMES = {"flow": "flow", "dvc": "DVC", "snakemake": "Snakemake"}
SCENARIOS = ["first", "noop", "param", "onefile"]
TITLES = {
    "first": "first run (hash every file)",
    "noop": "no-op rerun",
    "param": "calibrate param edited",
    "onefile": "one dataset file changed",
    "mtime_restored": "one file changed, mtime restored",
}
# Files written less than this long ago are re-read by flow's stat cache ("racy git"
# protection, cache/src/filestate.rs RACY_NS = 2 s): keep the dataset older than that before a
# first run so the following no-op measures the steady state.
RACY_S = 2.1
# The stages that read ds: a tool "noticed" a dataset change iff one of them reran.
DS_STAGES = ("ingest", "preprocess")


def say(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def timed(argv, cwd, log, env=None):
    """Run argv in cwd, stdout+stderr to log; return (seconds, peak RSS in KiB, exit code)."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return dt, ru.ru_maxrss, p.returncode


def out_stamp(d, rel):
    try:
        st = os.stat(os.path.join(d, rel))
        return (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
        return None


class Tool:
    def __init__(self, name, root, args):
        self.name, self.dir, self.args = name, os.path.join(root, name), args
        self.n = 0  # log counter

    def log(self, scenario):
        self.n += 1
        return os.path.join(self.dir, "..", "logs", f"{self.name}-{self.n:02d}-{scenario}.log")

    def run(self, scenario):
        before = {r: out_stamp(self.dir, r) for r in ("manifest.txt", "pre/shard0")}
        log = self.log(scenario)
        dt, rss, rc = timed(self.argv(), self.dir, log, self.env())
        text = open(log, errors="replace").read()
        if rc != 0:
            sys.exit(f"bench.py: {self.name} failed ({scenario}, exit {rc}); log {log}:\n{text[-3000:]}")
        res = {"seconds": dt, "peak_rss_kib": rss}
        res.update(self.parse(text))
        after = {r: out_stamp(self.dir, r) for r in ("manifest.txt", "pre/shard0")}
        res["ds_stage_outputs_rewritten"] = any(before[r] != after[r] for r in before)
        return res


class Peer(Tool):
    """DVC and Snakemake: the peers' own files, outputs in the work dir, calibrate's method in
    a YAML params file."""
    PARAMS = None  # the YAML file holding `calibrate: {method: ...}`
    STATE_DIRS = ()  # the tool's own cache/state dirs, emptied by reset()
    STATE_FILES = ()
    OUTPUT_DIRS = ("pre", "models", "remodels")
    OUTPUT_FILES = ("manifest.txt", "folds.txt", "calib.txt", "hardneg.txt", "preds.txt", "report.txt")

    def reset(self):
        for d in self.STATE_DIRS + self.OUTPUT_DIRS:
            shutil.rmtree(os.path.join(self.dir, d), ignore_errors=True)
        for f in self.STATE_FILES + self.OUTPUT_FILES:
            try:
                os.remove(os.path.join(self.dir, f))
            except FileNotFoundError:
                pass
        self.set_param("temperature")

    def set_param(self, method):
        p = os.path.join(self.dir, self.PARAMS)
        s = open(p).read()
        open(p, "w").write(re.sub(r"calibrate: \{method: [a-z]+\}", f"calibrate: {{method: {method}}}", s))


class Flow(Tool):
    def setup(self):
        shutil.copy(os.path.join(HERE, "flow.ron"), self.dir)

    def reset(self):
        for d in (".flow", "out"):
            shutil.rmtree(os.path.join(self.dir, d), ignore_errors=True)
        self.set_param("temperature")

    def set_param(self, method):
        p = os.path.join(self.dir, "flow.ron")
        s = open(p).read()
        s2 = re.sub(r'"METHOD": "[a-z]+"', f'"METHOD": "{method}"', s)
        assert s2 != s or f'"METHOD": "{method}"' in s, "flow.ron: no METHOD env to edit"
        open(p, "w").write(s2)

    def argv(self):
        return [self.args.flow, "--json", "run", "flow.ron"]

    def env(self):
        return None

    def parse(self, text):
        # stdout is the JSON summary; anything else (warnings) went to the same log: find it.
        j = json.loads(text[text.index("{"): text.rindex("}") + 1])
        return {
            "ran": j["executed"],
            "reused": len(j["cached"]),
            "workspace_files": j.get("workspace_files"),
            "workspace_files_read": j.get("workspace_files_read"),
            "engine_seconds": j.get("seconds"),
        }


class Dvc(Peer):
    PARAMS = "params.yaml"
    STATE_DIRS = (".dvc/cache", ".dvc/tmp", ".dvc/site")
    STATE_FILES = ("dvc.lock",)

    def setup(self):
        for f in ("dvc.yaml", "params.yaml"):
            shutil.copy(os.path.join(HERE, "peers", f), self.dir)
        dvc = os.path.join(self.args.peers, "dvc")
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=self.dir, check=True)
        for k, v in (("core.analytics", "false"), ("core.check_update", "false"),
                     # DVC's state db (its stat cache: inode/mtime/size -> md5) lives in a
                     # per-user site cache dir by default; keep it inside so reset clears it.
                     ("core.site_cache_dir", os.path.join(self.dir, ".dvc", "site"))):
            subprocess.run([dvc, "config", k, v], cwd=self.dir, check=True)

    def argv(self):
        return [os.path.join(self.args.peers, "dvc"), "repro"]

    def env(self):
        return dict(os.environ, DVC_NO_ANALYTICS="1")

    def parse(self, text):
        ran = re.findall(r"^Running stage '([^']+)'", text, re.M)
        restored = re.findall(r"^Stage '([^']+)' is cached - skipping run", text, re.M)
        skipped = re.findall(r"^Stage '([^']+)' didn't change", text, re.M)
        return {"ran": ran + restored, "restored_from_run_cache": restored, "reused": len(skipped)}


class Snakemake(Peer):
    PARAMS = "config.yaml"
    STATE_DIRS = (".snakemake",)

    def setup(self):
        for f in ("Snakefile", "config.yaml"):
            shutil.copy(os.path.join(HERE, "peers", f), self.dir)

    def argv(self):
        return [os.path.join(self.args.peers, "snakemake"), "-c2", "-s", "Snakefile"]

    def env(self):
        return None

    def parse(self, text):
        ran = [r for r in re.findall(r"^(?:local)?rule (\w+):", text, re.M) if r != "all"]
        return {"ran": ran, "reused": None}


CLASSES = {"flow": Flow, "dvc": Dvc, "snakemake": Snakemake}


def dataset_files(ds):
    out = []
    for dp, dns, fns in os.walk(ds):
        dns.sort()
        out += [os.path.join(dp, f) for f in sorted(fns)]
    return out


def change_file(path, seed, keep_mtime=False):
    st = os.stat(path)
    data = random.Random(seed).randbytes(st.st_size)
    with open(path, "r+b") as f:  # in place: same inode, same size, new bytes
        f.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def floors(ds_parent, log_dir):
    stat_s, _, rc = timed(["sh", "-c", "find ds -type f -printf '%s\\n' >/dev/null"], ds_parent,
                          os.path.join(log_dir, "floor-stat.log"))
    read_s, _, rc2 = timed(["sh", "-c", "find ds -type f -print0 | xargs -0 cat >/dev/null"], ds_parent,
                           os.path.join(log_dir, "floor-read.log"))
    assert rc == 0 and rc2 == 0
    return stat_s, read_s


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--files", type=int, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flow", required=True)
    ap.add_argument("--peers", help="bin/ of the venv with dvc and snakemake")
    ap.add_argument("--only", default=",".join(TOOLS))
    ap.add_argument("--mtime-restored", action="store_true")
    ap.add_argument("--versions", default="{}", help="JSON: tool versions to record")
    args = ap.parse_args()
    tools_on = [t for t in TOOLS if t in args.only.split(",")]
    scenarios = SCENARIOS + (["mtime_restored"] if args.mtime_restored else [])
    work = os.path.abspath(args.work)
    ds = os.path.join(work, "ds")
    files = dataset_files(ds)
    assert len(files) == args.files, f"{ds}: {len(files)} files, expected {args.files}"
    rel_changed = os.path.relpath(files[len(files) // 2], work)  # the file scenario 4 edits
    rel_changed2 = os.path.relpath(files[len(files) // 3], work)  # and --mtime-restored's

    tools = {}
    logs = os.path.join(work, "logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    for t in tools_on:
        tool = CLASSES[t](t, work, args)
        shutil.rmtree(tool.dir, ignore_errors=True)
        os.makedirs(tool.dir)
        say(f"{t}: fresh copy of ds (cp -a) in {tool.dir}")
        subprocess.run(["cp", "-a", ds, tool.dir], check=True)
        tool.setup()
        tools[t] = tool
    last_write = time.time()

    results = {t: {s: [] for s in scenarios} for t in tools_on}
    fl = {"stat_seconds": [], "read_seconds": []}
    for rep in range(1, args.reps + 1):
        for t, tool in tools.items():
            tool.reset()
            wait = last_write + RACY_S - time.time()
            if wait > 0:
                time.sleep(wait)
            for s in scenarios:
                if s == "param":
                    tool.set_param("platt")
                elif s == "onefile":
                    change_file(os.path.join(tool.dir, rel_changed), seed=rep)
                    last_write = time.time()
                elif s == "mtime_restored":
                    change_file(os.path.join(tool.dir, rel_changed2), seed=1000 + rep, keep_mtime=True)
                    last_write = time.time()
                r = tool.run(s)
                r["noticed_ds_change"] = any(x.split("@")[0] in DS_STAGES for x in r["ran"])
                results[t][s].append(r)
                extra = ""
                if t == "flow":
                    extra = f", read {r['workspace_files_read']}/{r['workspace_files']} dataset files"
                say(f"rep {rep}/{args.reps} {t:9s} {s:14s} {r['seconds']:7.3f} s  {r['peak_rss_kib'] / 1024:6.1f} MB  "
                    f"ran {len(r['ran']):2d}{extra}")
        d = tools[tools_on[0]].dir
        st, rd = floors(d, logs)
        fl["stat_seconds"].append(st)
        fl["read_seconds"].append(rd)
        say(f"rep {rep}/{args.reps} floor: stat every file {st:.3f} s, read every byte {rd:.3f} s")

    med = {t: {s: {"seconds": median([r["seconds"] for r in results[t][s]]),
                   "peak_rss_mb": median([r["peak_rss_kib"] / 1024 for r in results[t][s]])}
               for s in scenarios} for t in tools_on}
    stat_floor, read_floor = median(fl["stat_seconds"]), median(fl["read_seconds"])

    # -- report ---------------------------------------------------------------------------
    L = []
    L.append(f"### flow vs DVC vs Snakemake: {args.files:,} files of 4 KiB, median of {args.reps} "
             f"repetition(s), {os.cpu_count()} cores, warm page cache")
    L.append("")
    L.append(f"Floor: stat every file {stat_floor:.3f} s; read every byte once {read_floor:.3f} s "
             f"(find/cat over one copy of ds).")
    L.append("")
    hdr = ["scenario"] + [f"{NAMES[t]} s" for t in tools_on]
    hdr += [f"{NAMES[t]}/flow" for t in tools_on if t != "flow" and "flow" in tools_on]
    hdr += ["flow target"] if "flow" in tools_on else []
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    targets = {}
    for s in scenarios:
        row = [TITLES[s]] + [fmt(med[t][s]["seconds"], 3) for t in tools_on]
        f = med.get("flow", {}).get(s, {}).get("seconds")
        for t in tools_on:
            if t != "flow" and f:
                row.append(f"{med[t][s]['seconds'] / f:.1f}×")
        if "flow" in tools_on:
            checks = []
            dvc = med.get("dvc", {}).get(s, {}).get("seconds")
            need = {"first": 15, "noop": 15, "onefile": 50}.get(s)
            if need and dvc:
                checks.append((f"≥{need}× faster than DVC", dvc / f >= need))
            if s == "noop":
                checks.append((f"≤1.5× stat floor ({f / stat_floor:.2f}×)", f <= 1.5 * stat_floor))
            targets[s] = [{"target": c, "met": ok} for c, ok in checks]
            row.append("; ".join(f"{c}: {'yes' if ok else 'NO'}" for c, ok in checks) or "—")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Peak RSS, MB (largest process of the command's tree, median):")
    L.append("")
    L.append("| scenario | " + " | ".join(NAMES[t] for t in tools_on) + " |")
    L.append("|---|" + "---|" * len(tools_on))
    for s in scenarios:
        L.append(f"| {TITLES[s]} | " + " | ".join(fmt(med[t][s]["peak_rss_mb"], 1) for t in tools_on) + " |")
    L.append("")
    L.append("What ran (last repetition; 17 stage instances in all) and whether a dataset change was noticed "
             "(ingest/preprocess reran):")
    L.append("")
    L.append("| scenario | " + " | ".join(NAMES[t] for t in tools_on) + " |")
    L.append("|---|" + "---|" * len(tools_on))
    for s in scenarios:
        cells = []
        for t in tools_on:
            r = results[t][s][-1]
            c = f"ran {len(r['ran'])}"
            if r["ran"] and len(r["ran"]) < 17:
                c += " (" + " ".join(r["ran"]) + ")"
            if t == "flow":
                c += f", reused {r['reused']}, read {r['workspace_files_read']:,} of {r['workspace_files']:,} files"
            if t == "dvc" and r.get("restored_from_run_cache"):
                c += f", {len(r['restored_from_run_cache'])} restored from run-cache"
            if s in ("onefile", "mtime_restored"):
                c += "; noticed: " + ("yes" if r["noticed_ds_change"] else "**no**")
            cells.append(c)
        L.append(f"| {TITLES[s]} | " + " | ".join(cells) + " |")
    report = "\n".join(L)
    print(report)

    out = {
        "files": args.files, "file_size": 4096, "reps": args.reps, "cores": os.cpu_count(),
        "versions": json.loads(args.versions), "changed_file": rel_changed,
        "floor": {"stat_seconds": stat_floor, "read_seconds": read_floor, "all": fl},
        "median": med, "targets": targets, "runs": results,
    }
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(report + "\n")
    say(f"wrote {os.path.join(work, 'results.json')} and results.md; logs in {logs}")


if __name__ == "__main__":
    main()
