//! A standing defence (issue 11): for any pipeline `flow check` accepts, `flow run` never
//! writes or deletes anything outside `out/`, the cache and the stage sandboxes, and never
//! touches what a user put into `out/`; a pipeline `check` refuses, `run` refuses too and
//! changes nothing at all.
//!
//! Each case is a generated workspace (a dataset, a script, a dangling link, a link to a
//! directory *outside* the workspace, sometimes hostile entries already in `out/`) and a
//! generated pipeline of `Exec` stages whose names, outputs and inputs come from lists of
//! hostile values (`..`, absolute paths, `./o` beside `o`, outputs inside inputs, the same
//! input twice, links). The commands are benign (they write their declared outputs in their
//! working directory), so anything written elsewhere was written by flow. Everything outside
//! `out/` and `.flow/` — and the outside directory — is listed (type, size, mode, inode,
//! mtime, content or link target) before and after check, a run, a no-op run and a run after
//! an edit; the listings must be equal.
//!
//! `FLOW_HOSTILE_CASES` (default 60) and `FLOW_HOSTILE_SEED` for longer or other runs; a
//! failure prints the seed and the pipeline.

use crate::common;
use common::{env_u64, Rng, Ws};

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

// Each list: plausible values first, hostile ones after. A case spends a budget of 0–2
// hostile picks, so that many pipelines are valid and really run.
const NAMES: (&[&str], &[&str]) = (
    &["p", "full", "a-b", "x_1", "v1.2", "out", "data"],
    &[
        "..",
        ".",
        "",
        "a/b",
        "../x",
        "x/..",
        ".hidden",
        "-x",
        "/tmp/flow-hostile",
        "日本",
        "a b",
        "p\nq",
    ],
);
/// Stage names by position (distinct), and hostile ones (also used as dangling references).
const STAGES: [&[&str]; 2] = [&["a", "b", "c", "d"], &["out", "data", "x-y", "s_3"]];
const BAD_STAGES: &[&str] = &["", "a/b", "..", "s@1", ".flow", "nope"];
const OUTPUTS: (&[&str], &[&str]) = (
    &["o", "d/o", "o{fold}", "x/y/z", "sub/", "out/y"],
    &[
        "./o",
        "a/../o",
        "o/",
        "data",
        "data/keep.txt",
        "link_out/v.txt",
        "../o",
        "/tmp/flow-hostile-o",
        ".flow/x",
        ".",
        "o/../../x",
    ],
);
const PATHS: (&[&str], &[&str]) = (
    &["data", "data/keep.txt", "data/sub", "script.sh", "link_out"],
    &[
        "data/../data",
        "./data/",
        "missing",
        "../victim",
        "/etc",
        "link_dangling",
        ".",
        "out",
        ".flow",
        "out/p",
    ],
);

struct Gen {
    rng: Rng,
    hostile_left: usize,
}

impl Gen {
    fn pick2<'a>(&mut self, lists: (&'a [&'a str], &'a [&'a str])) -> &'a str {
        if self.hostile_left > 0 && self.rng.chance(1, 3) {
            self.hostile_left -= 1;
            *self.rng.pick(lists.1)
        } else {
            *self.rng.pick(lists.0)
        }
    }
}

struct Case {
    pipeline: String,
    name: String,
    stages: Vec<String>,
    /// Entries put into `out/` before the run: (relative path, Some(file content) or None = a
    /// symlink to the outside directory).
    out_entries: Vec<(String, Option<String>)>,
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn generate(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let hostile_left = rng.below(3);
    let mut g = Gen { rng, hostile_left };
    let name = g.pick2(NAMES).to_string();
    let n = 1 + g.rng.below(4);
    let mut stages: Vec<String> = Vec::new();
    let mut decls = Vec::new();
    for i in 0..n {
        let sname = if g.hostile_left > 0 && g.rng.chance(1, 6) {
            g.hostile_left -= 1;
            g.rng.pick(BAD_STAGES).to_string()
        } else {
            STAGES[g.rng.below(2)][i].to_string()
        };
        let mut inputs = Vec::new();
        for _ in 0..g.rng.below(3) {
            let input = if !stages.is_empty() && g.rng.chance(1, 2) {
                format!("Stage({})", quote(g.rng.pick(&stages).as_str()))
            } else if g.hostile_left > 0 && g.rng.chance(1, 6) {
                g.hostile_left -= 1;
                format!("Stage({})", quote(*g.rng.pick(BAD_STAGES)))
            } else {
                format!("Path({})", quote(g.pick2(PATHS)))
            };
            // Twice the same only as a hostile pick.
            if !inputs.contains(&input) || g.hostile_left > 0 {
                inputs.push(input);
            }
        }
        let mut outputs: Vec<&str> = Vec::new();
        for _ in 0..1 + g.rng.below(2) {
            let o = g.pick2(OUTPUTS);
            // Twice the same only as a hostile pick.
            if !outputs.contains(&o) || g.hostile_left > 0 {
                outputs.push(o);
            }
        }
        // Benign: each declared output is written inside the working directory.
        let cmd: Vec<String> = outputs
            .iter()
            .map(|o| format!("mkdir -p \"$(dirname '{o}')\" && echo {{fold}} > '{o}'"))
            .collect();
        let folds = match g.rng.below(4) {
            0 => ", folds: 3".to_string(),
            1 => ", folds: 1".to_string(),
            _ => String::new(),
        };
        decls.push(format!(
            "        {}: Exec(cmd: {}, inputs: [{}], outputs: [{}]{folds}),",
            quote(&sname),
            quote(&cmd.join("; ")),
            inputs.join(", "),
            outputs.iter().map(|o| quote(o)).collect::<Vec<_>>().join(", "),
        ));
        stages.push(sname);
    }
    let pipeline = format!(
        "Pipeline(\n    name: {},\n    stages: {{\n{}\n    }},\n)\n",
        quote(&name),
        decls.join("\n")
    );
    let mut out_entries = Vec::new();
    if g.rng.chance(1, 3) {
        let stage = g.rng.pick(&stages).clone();
        match g.rng.below(3) {
            0 => out_entries.push((name.clone(), None)),
            1 => out_entries.push((format!("{name}/{stage}/user.txt"), Some("the user's".into()))),
            _ => out_entries.push((format!("{name}/{stage}"), Some("a file, not a view".into()))),
        }
    }
    Case {
        pipeline,
        name,
        stages,
        out_entries,
    }
}

/// What a path is, in enough detail that any write, replacement or removal shows.
fn listing(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                format!(
                    "dir mode {:o} mtime {}",
                    m.mode(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                format!(
                    "file {} bytes mode {:o} ino {} mtime {} {}",
                    m.len(),
                    m.mode(),
                    m.ino(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    fnv_hex(&data)
                )
            };
            out.insert(rel, what);
            if m.is_dir() && !m.file_type().is_symlink() {
                walk(root, &p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn fnv_hex(data: &[u8]) -> String {
    // A content fingerprint without another dependency: FNV-1a 64 is enough to see a change.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn setup(ws: &Ws, outside: &Path, case: &Case) {
    ws.write("data/keep.txt", "precious\n");
    ws.write("data/sub/k2.txt", "also precious\n");
    ws.write("script.sh", "echo hi\n");
    std::os::unix::fs::symlink("nowhere", ws.path().join("link_dangling")).unwrap();
    std::os::unix::fs::symlink(outside, ws.path().join("link_out")).unwrap();
    std::fs::write(outside.join("v.txt"), "outside\n").unwrap();
    for (rel, content) in &case.out_entries {
        let Some(target) = safe_rel(rel) else { continue };
        let p = ws.path().join("out").join(target);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        match content {
            Some(c) => std::fs::write(&p, c).unwrap(),
            None => std::os::unix::fs::symlink(outside, &p).unwrap(),
        }
    }
    ws.write("p.ron", &case.pipeline);
}

/// Hostile names make hostile setup paths too: only place entries under out/ by plain names.
fn safe_rel(rel: &str) -> Option<&str> {
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\n'));
    ok.then_some(rel)
}

fn run_case(seed: u64) -> Result<(), String> {
    let case = generate(seed);
    let ws = Ws::new();
    let outside = tempfile::tempdir().unwrap();
    setup(&ws, outside.path(), &case);
    let skip = ["out", ".flow", "p.ron"];
    let before = listing(ws.path(), &skip);
    let before_outside = listing(outside.path(), &[]);
    let before_out: BTreeMap<String, String> = listing(&ws.path().join("out"), &[]);
    // What `run` must refuse too: everything check finds but missing paths (a missing path
    // fails its instance at run time, exit 1).
    let check = ws.flow(&["check", "--no-path-check", "p.ron"]);
    let accepted = match check.status.code() {
        Some(0) => true,
        Some(2) => false,
        other => {
            return Err(format!(
                "check exited {other:?}: {}",
                String::from_utf8_lossy(&check.stderr)
            ))
        }
    };
    let compare = |when: &str| -> Result<(), String> {
        let after = listing(ws.path(), &skip);
        if after != before {
            return Err(format!(
                "{when}: the workspace changed outside out/ and .flow/:\n{}",
                diff(&before, &after)
            ));
        }
        let after = listing(outside.path(), &[]);
        if after != before_outside {
            return Err(format!(
                "{when}: a directory outside the workspace changed:\n{}",
                diff(&before_outside, &after)
            ));
        }
        let now_out = listing(&ws.path().join("out"), &[]);
        for (k, v) in &before_out {
            if now_out.get(k) != Some(v) && !v.starts_with("dir") {
                return Err(format!(
                    "{when}: the user's out/{k} changed: {v} -> {:?}",
                    now_out.get(k)
                ));
            }
        }
        Ok(())
    };
    let report = |e: String| format!("{e}\n--- seed {seed}, pipeline:\n{}", case.pipeline);
    let run = |args: &[&str]| -> Result<i32, String> {
        let out = ws.flow(args);
        let code = out.status.code().unwrap_or(-1);
        if code == 101 || String::from_utf8_lossy(&out.stderr).contains("panicked") {
            return Err(format!(
                "flow {args:?} panicked: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(code)
    };
    if !accepted {
        let code = run(&["run", "p.ron"]).map_err(report)?;
        if code != 2 {
            return Err(report(format!("check refused the pipeline, but run exited {code}")));
        }
        compare("refused run").map_err(report)?;
        if ws.path().join("out").exists() && before_out.is_empty() {
            return Err(report("a refused run created out/".into()));
        }
        return Ok(());
    }
    for (when, args) in [("run", ["run", "p.ron"]), ("no-op run", ["run", "p.ron"])] {
        let code = run(&args).map_err(report)?;
        if ![0, 1].contains(&code) {
            return Err(report(format!("{when} exited {code}")));
        }
        compare(when).map_err(report)?;
    }
    // An edit: every stage's command changes, so every view is replaced.
    ws.write("p.ron", &case.pipeline.replace("echo {fold}", "echo edited {fold}"));
    let code = run(&["run", "--keep-going", "p.ron"]).map_err(report)?;
    if ![0, 1].contains(&code) {
        return Err(report(format!("run after an edit exited {code}")));
    }
    compare("run after an edit").map_err(report)?;
    let _ = (&case.name, &case.stages);
    Ok(())
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s.push_str(&format!("  removed {k} ({v})\n")),
            Some(w) if w != v => s.push_str(&format!("  changed {k}: {v} -> {w}\n")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            s.push_str(&format!("  added {k} ({v})\n"));
        }
    }
    s
}

#[test]
fn run_never_touches_anything_outside_out_the_cache_and_sandboxes() {
    let cases = env_u64("FLOW_HOSTILE_CASES").unwrap_or(60);
    let master = env_u64("FLOW_HOSTILE_SEED").unwrap_or(0x5eed_0011);
    let mut accepted = 0;
    let mut failures = Vec::new();
    for c in 0..cases {
        let seed = master ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Count accepted ones so the test shows it exercised real runs, not only refusals.
        let case = generate(seed);
        let ws = Ws::new();
        ws.write("p.ron", &case.pipeline);
        let out = ws.flow(&["check", "--no-path-check", "p.ron"]);
        if out.status.success() {
            accepted += 1;
        } else if std::env::var_os("FLOW_HOSTILE_SHOW").is_some() {
            eprintln!("{}\n{}", case.pipeline, String::from_utf8_lossy(&out.stderr));
        }
        if let Err(e) = run_case(seed) {
            failures.push(e);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    eprintln!("{accepted} of {cases} generated pipelines passed check");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        accepted * 5 >= cases,
        "only {accepted} of {cases} generated pipelines were valid: the generator no longer exercises runs"
    );
}
