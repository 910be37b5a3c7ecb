//! Integrity (issue 11): what a hostile-input pass found on `main`. Each test failed there:
//! data loss through the pipeline name, views replaced regardless of who made them, damaged
//! objects a run did not repair, user-facing writes into the cache, missing bounds, errors that
//! named the wrong thing, `--json` failures that printed no JSON. The model-side case (early
//! cutoff through a torch stage) is in `tests/suite/model_stages.rs`, the scheduler's in the engine's
//! unit tests, diagnostics in `tests/fixtures/invalid/`.

use crate::common;
use common::{dir_names, files_under, has, in_mount_namespace, set, stdout_json as json, unprivileged, Ws};

use std::io::Write;
use std::path::Path;

const TWO: &str = r#"Pipeline(
    name: "p",
    stages: {
        "a": Exec(cmd: "echo hello > a.txt", outputs: ["a.txt"]),
        "b": Exec(cmd: "cat a.txt a.txt > b.txt", inputs: [Stage("a")], outputs: ["b.txt"]),
    },
)"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Append to a file flow made read-only (as root the mode does not stop it; otherwise lift it).
fn append(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Overwrite a file in place (same inode), as an editor that writes read-only files does.
fn overwrite_in_place(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

// ---------- 1. the pipeline name is a path ----------

#[test]
fn a_pipeline_name_that_is_a_path_is_refused_and_deletes_nothing() {
    let victim = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(victim.path().join("data")).unwrap();
    std::fs::write(victim.path().join("data/keep.txt"), "victim").unwrap();
    let abs = victim.path().display().to_string();
    for name in [
        "..",
        "../x",
        "a/b",
        "",
        ".",
        ".hidden",
        "-rf",
        abs.as_str(),
        "x/..",
        "../../..",
    ] {
        let ws = Ws::new();
        ws.write("data/important.txt", "precious");
        ws.write(
            "p.ron",
            &format!(
                r#"Pipeline(name: {name:?}, stages: {{"data": Exec(cmd: "echo hi > o.txt", outputs: ["o.txt"])}})"#
            ),
        );
        let out = ws.flow(&["check", "--json", "p.ron"]);
        assert_eq!(out.status.code(), Some(2), "check accepted name {name:?}");
        let d = &json(&out)["files"][0]["diagnostics"][0];
        assert_eq!(d["code"], "invalid-value", "{name:?}: {d}");
        assert!(d["message"].as_str().unwrap().contains("invalid pipeline name"), "{d}");
        assert_eq!(
            (d["line"].as_u64(), d["col"].as_u64()),
            (Some(1), Some(16)),
            "{name:?}: {d}"
        );
        let out = ws.flow(&["run", "p.ron"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "run accepted name {name:?}: {}",
            stderr(&out)
        );
        assert_eq!(ws.read("data/important.txt"), "precious", "{name:?}");
        assert!(!ws.path().join("data/o.txt").exists(), "{name:?}");
        assert!(!ws.path().join("out").exists(), "{name:?}");
    }
    assert_eq!(
        std::fs::read_to_string(victim.path().join("data/keep.txt")).unwrap(),
        "victim"
    );
    assert_eq!(files_under(victim.path()).len(), 1);
}

#[test]
fn views_never_follow_symlinks_or_replace_what_flow_did_not_make() {
    let ws = Ws::new();
    ws.write("data/important.txt", "precious");
    ws.write("p.ron", TWO);
    // out/p is a link to the user's data: flow does not follow it.
    std::fs::create_dir_all(ws.path().join("out")).unwrap();
    std::os::unix::fs::symlink("../data", ws.path().join("out/p")).unwrap();
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a", "b"]));
    let warnings = s.raw["warnings"].to_string();
    assert!(warnings.contains("out/p is a symlink"), "{warnings}");
    assert_eq!(
        files_under(&ws.path().join("data")),
        vec![ws.path().join("data/important.txt")]
    );
    std::fs::remove_file(ws.path().join("out/p")).unwrap();
    let s = ws.run("p.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty(), "{}", s.raw);
    assert_eq!(ws.read("out/p/a/a.txt"), "hello\n");

    // A file the user put into a view: the view is not replaced, the file survives.
    ws.write("out/p/a/notes.txt", "mine");
    ws.write("p.ron", &TWO.replace("echo hello", "echo bye"));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a", "b"]));
    let warnings = s.raw["warnings"].to_string();
    assert!(
        warnings.contains("not updating out/p/a") && warnings.contains("notes.txt"),
        "{warnings}"
    );
    assert_eq!(ws.read("out/p/a/notes.txt"), "mine");
    assert_eq!(ws.read("out/p/a/a.txt"), "hello\n", "the old view is left as it was");
    assert_eq!(ws.read("out/p/b/b.txt"), "bye\nbye\n", "other views are updated");

    // A view file replaced by a new file (how editors save): not flow's any more either.
    std::fs::remove_file(ws.path().join("out/p/a/notes.txt")).unwrap();
    std::fs::remove_file(ws.path().join("out/p/a/a.txt")).unwrap();
    ws.write("out/p/a/a.txt", "my edit");
    let s = ws.run("p.ron", 0);
    assert!(
        s.raw["warnings"].to_string().contains("a.txt was replaced or edited"),
        "{}",
        s.raw
    );
    assert_eq!(ws.read("out/p/a/a.txt"), "my edit");
    // Once the user's file is gone, the view comes back.
    std::fs::remove_file(ws.path().join("out/p/a/a.txt")).unwrap();
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty());
    assert_eq!(ws.read("out/p/a/a.txt"), "bye\n");

    // A view that is a file, not a directory.
    std::fs::remove_dir_all(ws.path().join("out/p/b")).unwrap();
    ws.write("out/p/b", "a file of mine");
    let s = ws.run("p.ron", 0);
    assert!(s.raw["warnings"].to_string().contains("out/p/b is a file"), "{}", s.raw);
    assert_eq!(ws.read("out/p/b"), "a file of mine");
}

// ---------- 2. damaged objects, writes into the cache ----------

#[test]
fn a_run_repairs_a_damaged_object_it_makes_again() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    // Appended through the out/ hard link: the object itself changes.
    append(&ws.path().join("out/p/a/a.txt"), b"X\n");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]), "a re-runs (size differs); b is cut off");
    assert_eq!(s.cached, set(&["b"]));
    assert_eq!(ws.read("out/p/a/a.txt"), "hello\n", "the object was repaired");
    assert_eq!(
        files_under(&ws.path().join(".flow/quarantine")).len(),
        1,
        "damaged copy kept"
    );
    let v = ws.flow(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // And it stays repaired: nothing re-runs (calibrate used to re-run on every run).
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty(), "{:?}", s.executed);

    // Same-size damage is invisible to the stat check; when the stage is re-made for
    // another reason (here: a command that writes the same bytes), publishing replaces it.
    overwrite_in_place(&ws.path().join("out/p/a/a.txt"), b"HELLO\n");
    ws.write("p.ron", &TWO.replace("echo hello > a.txt", "printf 'hello\\n' > a.txt"));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]));
    assert_eq!(ws.read("out/p/a/a.txt"), "hello\n");
    let v = ws.flow(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_command_that_writes_into_its_input_fails_and_the_input_is_re_made() {
    let ws = Ws::new();
    let p = r#"Pipeline(
    name: "p",
    stages: {
        "a": Exec(cmd: "echo hello > a.txt", outputs: ["a.txt"]),
        "b": Exec(cmd: "chmod u+w a.txt; echo more >> a.txt; cat a.txt > b.txt", inputs: [Stage("a")], outputs: ["b.txt"]),
    },
)"#;
    ws.write("p.ron", p);
    let s = ws.run("p.ron", 1);
    assert_eq!(s.failed, set(&["b"]));
    let err = s.raw["failed"][0]["error"].as_str().unwrap();
    assert!(err.contains("wrote into its input file(s) a.txt in place"), "{err}");
    // The altered object is out of service: `a` re-runs and its view is right again.
    ws.write("p.ron", &p.replace("chmod u+w a.txt; echo more >> a.txt; ", ""));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a", "b"]));
    assert_eq!(ws.read("out/p/b/b.txt"), "hello\n");
    assert!(ws.flow(&["verify"]).status.success());
}

#[test]
fn user_facing_writes_refuse_the_cache_and_out() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    for target in ["out/p/a/a.txt", ".flow/objects/x.tex", "out/new.tex"] {
        let out = ws.flow(&["--json", "compare", "p.ron", "p.ron", "--latex", target]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        let v = json(&out);
        assert_eq!(v["code"], "usage", "{v}");
        assert!(v["error"].as_str().unwrap().contains("refusing to write"), "{v}");
    }
    assert_eq!(ws.read("out/p/a/a.txt"), "hello\n");
    assert!(ws.flow(&["verify"]).status.success());
}

// ---------- 5, 6. bounds and the workspace ----------

#[test]
fn absurd_jobs_and_a_missing_workspace_are_clear_errors() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    for j in ["100000", "0"] {
        let out = ws.flow(&["run", "-j", j, "p.ron"]);
        assert_eq!(out.status.code(), Some(2), "-j {j}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("--jobs {j} is out of range: 1..=1024")),
            "{}",
            stderr(&out)
        );
        assert!(!ws.path().join(".flow").exists(), "nothing was started");
    }
    let out = ws.flow(&["run", "--cpus", "0", "p.ron"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // -j above the number of instances is fine (no more threads than instances).
    assert_eq!(ws.flow(&["run", "-j", "1024", "p.ron"]).status.code(), Some(0));

    let missing = ws.path().join("no/such/dir");
    let out = ws.flow(&["-C", missing.to_str().unwrap(), "run", "p.ron"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no/such/dir"), "{}", stderr(&out));
    assert!(!ws.path().join("no").exists(), "the workspace was created");
    let out = ws.flow(&["-C", "p.ron", "status", "p.ron"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

// ---------- 7. outputs normalised ----------

#[test]
fn an_output_written_with_dot_slash_is_published_under_its_name() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {"a": Exec(cmd: "mkdir -p d && echo x > d/o", outputs: ["./d/../d/o"])})"#,
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]));
    assert_eq!(ws.read("out/p/a/d/o"), "x\n");
}

#[test]
fn an_output_inside_a_workspace_input_is_refused_and_never_moved() {
    let ws = Ws::new();
    ws.write("data/keep.txt", "precious");
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {"a": Exec(cmd: "true", inputs: [Path("data")], outputs: ["data/keep.txt"])})"#,
    );
    let out = ws.flow(&["check", "p.ron"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("overlaps workspace input `data`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.flow(&["run", "p.ron"]).status.code(), Some(2));
    assert_eq!(ws.read("data/keep.txt"), "precious");
}

// ---------- 8, 9. errors that name the entry and a real log ----------

#[test]
fn a_bad_entry_in_a_dataset_is_named_with_what_is_wrong() {
    let cases: [(&str, fn(&Path), &str); 4] = [
        (
            "data",
            |d| std::fs::write(d.join("data/a\nb.png"), "x").unwrap(),
            "data/a\\nb.png: path contains NUL or newline",
        ),
        (
            "data",
            |d| std::os::unix::fs::symlink("nowhere", d.join("data/dangling")).unwrap(),
            "data/dangling: dangling symlink",
        ),
        (
            "data",
            |d| {
                std::fs::create_dir_all(d.join("data/sub")).unwrap();
                std::os::unix::fs::symlink("..", d.join("data/sub/loop")).unwrap()
            },
            "data/sub/loop: symlink loop",
        ),
        (
            "link",
            |d| std::os::unix::fs::symlink("nowhere", d.join("link")).unwrap(),
            "workspace path link cannot be read: it is a symlink to `nowhere` that cannot be followed",
        ),
    ];
    for (path, make, want) in cases {
        let ws = Ws::new();
        ws.write("data/ok.txt", "ok");
        make(ws.path());
        ws.write(
            "p.ron",
            &format!(r#"Pipeline(name: "p", stages: {{"a": Exec(cmd: "ls > l.txt", inputs: [Path("{path}")], outputs: ["l.txt"])}})"#),
        );
        let st = ws.status("p.ron");
        let reasons: Vec<&str> = st[0]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let reasons = reasons.join("; ");
        assert!(reasons.contains(want), "want {want:?} in {reasons}");
        assert!(!reasons.contains("does not exist"), "{reasons}");
        let s = ws.run("p.ron", 1);
        let f = &s.raw["failed"][0];
        assert!(f["error"].as_str().unwrap().contains(want), "{f}");
        // 9: failed before it had a log: none is named (it used to be .flow/logs/plan.log).
        assert!(f["log"].is_null(), "{f}");
    }
    // A stage that ran and failed names its real log.
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {"a": Exec(cmd: "echo oops; exit 3", outputs: ["x"])})"#,
    );
    let s = ws.run("p.ron", 1);
    let log = s.raw["failed"][0]["log"].as_str().unwrap();
    assert!(std::fs::read_to_string(log).unwrap().contains("oops"), "{log}");
}

// ---------- 10. check knows what run would refuse ----------

#[test]
fn check_finds_missing_paths_unless_told_not_to() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {"i": Ingest(source: Folder(root: "dataset", layout: ImageFolder))})"#,
    );
    let out = ws.flow(&["check", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["files"][0]["diagnostics"][0]["code"], "missing-path");
    assert_eq!(ws.flow(&["check", "--no-path-check", "p.ron"]).status.code(), Some(0));
    std::fs::create_dir_all(ws.path().join("dataset")).unwrap();
    assert_eq!(ws.flow(&["check", "p.ron"]).status.code(), Some(0));
    // Relative to -C.
    let other = Ws::new();
    let out = other.flow(&[
        "-C",
        ws.path().to_str().unwrap(),
        "check",
        &ws.path().join("p.ron").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// ---------- 11. read-only caches, full disks ----------

#[test]
fn status_and_verify_work_on_a_cache_they_cannot_write() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    if unsafe { libc::geteuid() } == 0 {
        // Another user's cache (root's): readable, not writable.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = unprivileged(&ws, &["status", "--json", "p.ron"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let st = json(&out);
        assert!(st.as_array().unwrap().iter().all(|s| s["state"] == "fresh"), "{st}");
        let out = unprivileged(&ws, &["verify"]);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        // Damage is reported even where it cannot be moved to quarantine.
        append(&ws.path().join("out/p/b/b.txt"), b"!");
        let out = unprivileged(&ws, &["verify", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let v = json(&out);
        assert!(
            has(&v["bad_objects"][0]["quarantine_error"], "Permission denied"),
            "{v}"
        );
        assert!(has(&v["broken_records"][0]["problem"], "not quarantined"), "{v}");
        // The text says it was not moved, and that a run still trusts it.
        let text = String::from_utf8_lossy(&unprivileged(&ws, &["verify"]).stdout).to_string();
        assert!(
            text.contains("1 damaged object(s), 1 of them NOT moved to quarantine"),
            "{text}"
        );
        assert!(text.contains("still trusted by `flow run`"), "{text}");
        assert!(!text.contains("will re-run on the next"), "{text}");
    }
    // A read-only mount.
    let script = r#"set -u
mkdir -p cache && mount -t tmpfs -o size=8m flowtest cache || exit 99
"$FLOW" --cache-dir cache run p.ron 2> err0.txt; echo "run=$?"
mount -o remount,ro cache
"$FLOW" --cache-dir cache status --json p.ron > status.json 2> err1.txt; echo "status=$?"
"$FLOW" --cache-dir cache verify > verify.txt 2> err2.txt; echo "verify=$?"
"$FLOW" --cache-dir cache run --json p.ron > run.json 2> err3.txt; echo "rerun=$?"
"#;
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    let Some(out) = in_mount_namespace(script, ws.path()) else {
        eprintln!("note: no user namespaces here (unshare failed): read-only mount not tested");
        return;
    };
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.contains("run=0"), "{log}\n{}", ws.read("err0.txt"));
    assert!(log.contains("status=0"), "{log}\n{}", ws.read("err1.txt"));
    let st: serde_json::Value = serde_json::from_str(&ws.read("status.json")).unwrap();
    assert!(st.as_array().unwrap().iter().all(|s| s["state"] == "fresh"), "{st}");
    assert!(
        log.contains("verify=0"),
        "{log}\n{}{}",
        ws.read("verify.txt"),
        ws.read("err2.txt")
    );
    assert!(ws.read("verify.txt").contains("all good"));
    // A run needs to write (its lock at least): a clear error, not a panic.
    assert!(log.contains("rerun=2"), "{log}\n{}", ws.read("err3.txt"));
    assert!(
        ws.read("run.json").contains("\"code\":\"cache\""),
        "{}",
        ws.read("run.json")
    );
}

#[test]
fn a_full_disk_is_one_error_not_one_per_image() {
    let p = r#"Pipeline(
    name: "full",
    stages: {
        "ingest": Ingest(source: Demo(count: 200, size: 64, seed: 1)),
        "pre": Preprocess(dataset: "ingest", size: 64),
    },
)"#;
    let script = r#"set -u
mkdir -p cache && mount -t tmpfs -o size=6m flowtest cache || exit 99
"$FLOW" --cache-dir cache run --target ingest p.ron 2> err0.txt; echo "ingest=$?"
avail=$(df -k --output=avail cache | tail -n 1)
head -c $(( (avail - 300) * 1024 )) /dev/zero > cache/filler 2>/dev/null
"$FLOW" --cache-dir cache run --json p.ron > run.json 2> err1.txt; echo "pre=$?"
"#;
    let ws = Ws::new();
    ws.write("p.ron", p);
    let Some(out) = in_mount_namespace(script, ws.path()) else {
        eprintln!("note: no user namespaces here (unshare failed): full-disk preprocess not tested");
        return;
    };
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.contains("ingest=0"), "{log}\n{}", ws.read("err0.txt"));
    assert!(log.contains("pre=1"), "{log}\n{}", ws.read("err1.txt"));
    let v: serde_json::Value = serde_json::from_str(&ws.read("run.json")).unwrap();
    let err = v["failed"][0]["error"].as_str().unwrap();
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line, not one per image: {err}");
}

// ---------- 12. names shared by two files, views of renamed stages ----------

#[test]
fn two_files_with_one_name_are_warned_about() {
    let ws = Ws::new();
    ws.write("a.ron", &TWO.replace("\"p\"", "\"twin\""));
    ws.write("b.ron", &TWO.replace("\"p\"", "\"twin\"").replace("hello", "other"));
    let s = ws.run("a.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty());
    let s = ws.run("b.ron", 0);
    let w = s.raw["warnings"].to_string();
    assert!(
        w.contains("pipeline name `twin` was last run from") && w.contains("a.ron"),
        "{w}"
    );
    // The same file again: no warning.
    let s = ws.run("b.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty(), "{}", s.raw);
}

#[test]
fn views_of_renamed_stages_and_dropped_folds_are_removed() {
    let ws = Ws::new();
    let p = r#"Pipeline(name: "p", stages: {
        "a": Exec(cmd: "echo {fold} > f.txt", folds: 4, outputs: ["f.txt"]),
        "b": Exec(cmd: "cat f.txt > g.txt", inputs: [Stage("a")], folds: 4, outputs: ["g.txt"]),
    })"#;
    ws.write("p.ron", p);
    ws.run("p.ron", 0);
    assert!(ws.path().join("out/p/b/fold3/g.txt").exists());
    // b renamed to c, and two folds fewer.
    ws.write("p.ron", &p.replace("\"b\":", "\"c\":").replace("folds: 4", "folds: 2"));
    let s = ws.run("p.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty(), "{}", s.raw);
    assert_eq!(dir_names(&ws.path().join("out/p")), ["a", "c", "run.js", "run.json"]);
    assert_eq!(dir_names(&ws.path().join("out/p/a")), ["fold0", "fold1"]);
    // A stale view that holds a user's file stays.
    ws.write("p.ron", &p.replace("\"b\":", "\"d\":").replace("folds: 4", "folds: 2"));
    ws.write("out/p/c/fold0/mine.txt", "mine");
    let s = ws.run("p.ron", 0);
    assert!(
        s.raw["warnings"].to_string().contains("out/p/c is not a stage"),
        "{}",
        s.raw
    );
    assert_eq!(ws.read("out/p/c/fold0/mine.txt"), "mine");
}

#[test]
fn a_stage_that_changes_between_one_instance_and_folds_keeps_a_clean_view() {
    let ws = Ws::new();
    let single = r#"Pipeline(name: "p", stages: {"a": Exec(cmd: "echo one > f.txt", outputs: ["f.txt"])})"#;
    let folds = r#"Pipeline(name: "p", stages: {"a": Exec(cmd: "echo {fold} > f.txt", folds: 2, outputs: ["f.txt"])})"#;
    ws.write("p.ron", single);
    ws.run("p.ron", 0);
    assert_eq!(dir_names(&ws.path().join("out/p/a")), ["f.txt"]);
    ws.write("p.ron", folds);
    let s = ws.run("p.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty(), "{}", s.raw);
    assert_eq!(dir_names(&ws.path().join("out/p/a")), ["fold0", "fold1"]);
    assert_eq!(ws.read("out/p/a/fold1/f.txt"), "1\n");
    ws.write("p.ron", single);
    let s = ws.run("p.ron", 0);
    assert!(s.raw["warnings"].as_array().unwrap().is_empty(), "{}", s.raw);
    assert_eq!(dir_names(&ws.path().join("out/p/a")), ["f.txt"]);
}

// ---------- found by the adversarial review of the fixes ----------

#[test]
fn user_directories_that_look_like_leftovers_are_not_removed() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    // Names of a killed run's half-made views, dead pids, but the user's files.
    ws.write("out/p/.results.old.999999.7/table.csv", "precious");
    ws.write("out/p/a/.fold0.view.999999.1/x", "mine");
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty());
    assert_eq!(ws.read("out/p/.results.old.999999.7/table.csv"), "precious");
    assert!(s.raw["warnings"].to_string().contains("half-made view"), "{}", s.raw);
    // A real leftover (links to objects only) does go.
    let obj = files_under(&ws.path().join(".flow/objects"))[0].clone();
    std::fs::create_dir_all(ws.path().join("out/p/.b.view.999999.3")).unwrap();
    std::fs::hard_link(&obj, ws.path().join("out/p/.b.view.999999.3/b.txt")).unwrap();
    ws.run("p.ron", 0);
    assert!(!ws.path().join("out/p/.b.view.999999.3").exists());
}

#[test]
fn a_same_size_edit_through_out_is_caught_before_a_consumer_reads_it() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    // Same size, other bytes, in place: only the object's mtime tells without hashing.
    overwrite_in_place(&ws.path().join("out/p/a/a.txt"), b"HELLO\n");
    ws.write("p.ron", &TWO.replace("> b.txt", "> b.txt; true"));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a", "b"]), "a is re-made before b reads it");
    assert_eq!(ws.read("out/p/b/b.txt"), "hello\nhello\n");
    assert!(ws.flow(&["verify"]).status.success());
    // A touched object (mtime only) is re-hashed once, found intact, and not re-run.
    let f = std::fs::File::options()
        .write(true)
        .open(ws.path().join("out/p/a/a.txt"))
        .or_else(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(ws.path().join("out/p/a/a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(ws.path().join("out/p/a/a.txt"))
        });
    f.unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    assert!(ws.run("p.ron", 0).executed.is_empty());
}

#[test]
fn a_killed_flow_takes_the_commands_children_with_it() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {
        "a": Exec(cmd: "touch started; sh -c 'sleep 2; echo late >> $FLOW_WORKSPACE/late.txt'; echo done > o", outputs: ["o"]),
    })"#,
    );
    let mut child = ws
        .cmd(&["run", "p.ron"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ws.wait_in_sandbox("started");
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !ws.path().join("late.txt").exists(),
        "a grandchild of the killed run kept running"
    );
}

#[test]
fn workspace_paths_are_normalised_and_nested_ones_all_visible() {
    let ws = Ws::new();
    ws.write("data/important.txt", "i\n");
    ws.write("data/sub/s.txt", "s\n");
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {
        "a": Exec(cmd: "cat data/important.txt data/sub/s.txt > l.txt", inputs: [Path("data/sub/"), Path("data/.")], outputs: ["l.txt"]),
    })"#,
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]));
    assert_eq!(ws.read("out/p/a/l.txt"), "i\ns\n");
}

#[test]
fn the_cache_is_never_a_user_directory_nor_inside_an_input() {
    let ws = Ws::new();
    ws.write("data/quarantine/q.txt", "q");
    ws.write("p.ron", TWO);
    // A directory of the user's is not a cache: refused before anything is written.
    let out = ws.flow(&["--cache-dir", "data", "run", "p.ron"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a flow cache"), "{}", stderr(&out));
    let out = ws.flow(&["--cache-dir", "data", "gc", "p.ron"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(ws.read("data/quarantine/q.txt"), "q");
    assert_eq!(files_under(&ws.path().join("data")).len(), 1);
    // A cache inside a path the pipeline reads: refused at run time.
    ws.write(
        "r.ron",
        r#"Pipeline(name: "r", stages: {"a": Exec(cmd: "ls data > l.txt", inputs: [Path("data")], outputs: ["l.txt"])})"#,
    );
    let out = ws.flow(&["--cache-dir", "data/cache", "run", "r.ron"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("workspace input `data` holds the cache"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fifo_as_a_pipeline_or_base_is_an_error_not_a_hang() {
    let ws = Ws::new();
    let fifo = std::ffi::CString::new(ws.path().join("base.ron").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    ws.write("p.ron", r#"Pipeline(name: "p", extends: "base.ron", stages: {})"#);
    for file in ["p.ron", "base.ron"] {
        let t0 = std::time::Instant::now();
        let out = ws.flow(&["check", file]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
        assert!(t0.elapsed().as_secs() < 10);
    }
}

// ---------- found by the second adversarial round ----------

#[test]
fn a_folder_with_objects_and_runs_is_not_taken_for_a_cache() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    for f in [
        "mydir/objects/x",
        "mydir/runs/exp1.json",
        "mydir/tmp/holiday.2019.07/photo.jpg",
        "mydir/quarantine/q.bin",
    ] {
        ws.write(f, "the user's");
    }
    for args in [
        &["--cache-dir", "mydir", "run", "p.ron"][..],
        &["--cache-dir", "mydir", "gc", "p.ron"],
    ] {
        let out = ws.flow(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a flow cache"), "{}", stderr(&out));
    }
    assert_eq!(files_under(&ws.path().join("mydir")).len(), 4);
}

#[test]
fn gc_removes_only_what_flow_named_even_through_links() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("keep.txt"), "keep").unwrap();
    std::fs::write(outside.path().join("sub/k2"), "k").unwrap();
    for dir in ["resume", "quarantine"] {
        let p = ws.path().join(".flow").join(dir);
        let _ = std::fs::remove_dir_all(&p);
        std::os::unix::fs::symlink(outside.path(), &p).unwrap();
        let out = ws.flow(&["gc", "p.ron"]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::remove_file(&p).unwrap();
    }
    // Strangers in runs/ and tmp/ stay too.
    ws.write(".flow/runs/notes.json", "{\"mine\": 1}");
    ws.write(".flow/tmp/holiday.2019.07/photo.jpg", "photo");
    assert!(ws.flow(&["gc", "p.ron"]).status.success());
    assert_eq!(ws.run("p.ron", 0).executed, Vec::<String>::new());
    assert_eq!(ws.read(".flow/runs/notes.json"), "{\"mine\": 1}");
    assert_eq!(ws.read(".flow/tmp/holiday.2019.07/photo.jpg"), "photo");
    assert_eq!(files_under(outside.path()).len(), 2);
}

#[test]
fn what_a_command_leaves_running_is_stopped_when_it_exits() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {
        "a": Exec(cmd: "exec 3>r.txt; echo first >&3; (sleep 0.5; echo SECOND >&3) & exit 0", outputs: ["r.txt"]),
        "b": Exec(cmd: "sleep 1.5; cat r.txt > s.txt", inputs: [Stage("a")], outputs: ["s.txt"]),
    })"#,
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a", "b"]));
    assert_eq!(
        ws.read("out/p/b/s.txt"),
        "first\n",
        "a background writer changed a published object"
    );
    assert!(ws.flow(&["verify"]).status.success());
}

#[test]
fn a_record_whose_files_do_not_match_its_hash_is_not_trusted() {
    let ws = Ws::new();
    let p = r#"Pipeline(name: "p", stages: {
        "a": Exec(cmd: "echo good > r.txt", outputs: ["r.txt"]),
        "b": Exec(cmd: "echo EVIL > r.txt", outputs: ["r.txt"]),
    })"#;
    ws.write("p.ron", p);
    ws.run("p.ron", 0);
    let key = |id: &str| {
        let st = ws.status("p.ron");
        st.iter().find(|s| s["stage"] == id).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let rec = |id: &str| ws.path().join(format!(".flow/runs/{}.json", key(id)));
    let mut a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rec("a")).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rec("b")).unwrap()).unwrap();
    a["tree"] = b["tree"].clone();
    a["mtimes"] = b["mtimes"].clone();
    std::fs::write(rec("a"), serde_json::to_vec(&a).unwrap()).unwrap();
    ws.write(
        "p.ron",
        &p.replace(
            "})",
            r#""d": Exec(cmd: "cat r.txt > d.txt", inputs: [Stage("a")], outputs: ["d.txt"]), })"#,
        ),
    );
    let s = ws.run("p.ron", 0);
    assert!(s.executed.contains(&"a".to_string()), "{:?}", s.executed);
    assert_eq!(ws.read("out/p/d/d.txt"), "good\n");
}

#[test]
fn a_link_into_the_cache_or_out_is_not_a_workspace_input() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    ws.run("p.ron", 0);
    std::os::unix::fs::symlink(".flow", ws.path().join("cachelink")).unwrap();
    std::os::unix::fs::symlink("out/p", ws.path().join("outlink")).unwrap();
    for path in ["cachelink/objects", "outlink", "cachelink"] {
        ws.write(
            "q.ron",
            &format!(r#"Pipeline(name: "q", stages: {{"a": Exec(cmd: "ls > l.txt", inputs: [Path("{path}")], outputs: ["l.txt"])}})"#),
        );
        let out = ws.flow(&["check", "q.ron"]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("workspace input `{path}`")),
            "{}",
            stderr(&out)
        );
        let out = ws.flow(&["run", "q.ron"]);
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
    }
}

#[test]
fn a_dataset_made_by_a_stage_may_only_list_its_own_files() {
    let ws = Ws::new();
    ws.write("imgs/x.png", "not even an image");
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {
        "ingest": Ingest(source: Demo(count: 8, size: 16, seed: 7)),
        "crop": Exec(cmd: "awk -F, -v W=\"$FLOW_WORKSPACE\" 'NR==1{print;next}{ $2 = W \"/imgs/x.png\"; print }' OFS=, manifest.csv > m2 && mv m2 manifest.csv", inputs: [Stage("ingest")], outputs: ["manifest.csv"], produces: "dataset"),
        "pre": Preprocess(dataset: "crop", size: 16),
    })"#,
    );
    let s = ws.run("p.ron", 1);
    assert_eq!(s.failed, set(&["pre"]));
    let err = s.raw["failed"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("leaves the dataset") || err.contains("is not one of its outputs"),
        "{err}"
    );
}

// ---------- 13. --json failures are JSON ----------

#[test]
fn every_failure_under_json_prints_a_json_object() {
    let ws = Ws::new();
    ws.write("p.ron", TWO);
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["run", "--json", "--target", "nope", "p.ron"], "usage", 2),
        (
            vec!["--json", "-C", "/nonexistent-flow-ws", "status", "p.ron"],
            "usage",
            2,
        ),
        (vec!["run", "--json", "--jobs", "many", "p.ron"], "usage", 2),
        (vec!["--json", "run", "no-such-file.ron"], "io", 2),
        (vec!["--json", "compare", "p.ron", "p.ron"], "usage", 2),
        (
            vec!["--json", "--cache-dir", "/proc/flow-cache", "run", "p.ron"],
            "cache",
            2,
        ),
    ];
    for (args, code, exit) in cases {
        let out = ws.flow(&args);
        assert_eq!(out.status.code(), Some(exit), "{args:?}: {}", stderr(&out));
        let v = json(&out);
        assert_eq!(v["ok"], false, "{args:?}: {v}");
        let got = v["code"].as_str().or_else(|| v["diagnostics"][0]["code"].as_str());
        assert_eq!(got, Some(code), "{args:?}: {v}");
    }
    // Stale experiments: a JSON error naming them.
    ws.write(
        "c.ron",
        r#"Pipeline(name: "c", stages: {"i": Ingest(source: Demo(count: 8, size: 16)), "s": Split(dataset: "i", folds: 2),
        "pre": Preprocess(dataset: "i", size: 16),
        "t": Train(data: "pre", split: "s", model: SimpleCnn(width: 2, depth: 1), epochs: 1),
        "e": EnsembleInfer(models: ["t"], data: "pre", split: "s")})"#,
    );
    let out = ws.flow(&["--json", "compare", "c.ron", "c.ron"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["code"], "stale", "{v}");
    assert!(v["error"].as_str().unwrap().contains("`e` is not fresh"), "{v}");
}

// ---------- 14. interrupted, not skipped ----------

#[test]
fn an_interrupted_instance_is_reported_as_interrupted() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "p", stages: {
        "slow": Exec(cmd: "touch started; sleep 30; echo x > s.txt", outputs: ["s.txt"]),
        "after": Exec(cmd: "cat s.txt > t.txt", inputs: [Stage("slow")], outputs: ["t.txt"]),
    })"#,
    );
    let child = ws
        .cmd(&["run", "--json", "p.ron"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    ws.wait_in_sandbox("started");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let s = common::Summary::from(&json(&out));
    assert_eq!(s.raw["interrupted"], serde_json::json!(["slow"]), "{}", s.raw);
    assert_eq!(s.skipped, set(&["after"]));
    assert!(t0.elapsed().as_secs() < 20, "the command was not stopped");
}

#[test]
fn the_view_warning_names_the_file_the_user_changed_even_beside_a_subdirectory() {
    let ws = Ws::new();
    let p = r#"Pipeline(name: "nest", stages: {
        "a": Exec(cmd: "mkdir -p sub && echo X > sub/x.txt && echo Z > z.txt", outputs: ["sub/x.txt", "z.txt"]),
    })"#;
    ws.write("p.ron", p);
    ws.run("p.ron", 0);
    std::fs::remove_file(ws.path().join("out/nest/a/z.txt")).unwrap();
    ws.write("out/nest/a/z.txt", "my edit");
    ws.write("p.ron", &p.replace("echo Z", "echo Z2"));
    let s = ws.run("p.ron", 0);
    let w = s.raw["warnings"].to_string();
    assert!(w.contains("z.txt was replaced or edited"), "{w}");
    assert!(!w.contains("sub/x.txt"), "blames a file flow made: {w}");
    assert_eq!(ws.read("out/nest/a/z.txt"), "my edit");
}
