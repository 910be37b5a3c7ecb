//! Incrementality, asserted from what `flow run --json` says ran and was reused — never from
//! timings.

use crate::common;
use common::{has, set, Ws};

const CHAIN: &str = r#"Pipeline(
    name: "chain",
    defaults: (seed: 42),
    stages: {
        "a": Exec(cmd: "cat data/x.txt > a.txt && echo v1 >> a.txt", inputs: [Path("data")], outputs: ["a.txt"]),
        "b": Exec(cmd: "tr a-z A-Z < a.txt > b.txt", inputs: [Stage("a")], outputs: ["b.txt"], description: "upper-case"),
        "c": Exec(cmd: "wc -c < b.txt > c.txt", inputs: [Stage("b")], outputs: ["c.txt"], threads: 1),
        "d": Exec(cmd: "cat c.txt > d.txt", inputs: [Stage("c")], outputs: ["d.txt"]),
        "t": Exec(cmd: "cat b.txt > t{fold}.txt && echo {fold} >> t{fold}.txt", folds: 3, inputs: [Stage("b")], outputs: ["t{fold}.txt"]),
        "agg": Exec(cmd: "cat t0.txt t1.txt t2.txt > agg.txt", inputs: [Stage("t")], outputs: ["agg.txt"]),
        "side": Exec(cmd: "echo side > s.txt", outputs: ["s.txt"]),
    },
)
"#;

const ALL: &[&str] = &["a", "b", "c", "d", "t@fold0", "t@fold1", "t@fold2", "agg", "side"];

fn setup() -> Ws {
    let ws = Ws::new();
    ws.write("data/x.txt", "hello\n");
    ws.write("p.ron", CHAIN);
    ws
}

#[test]
fn second_run_executes_nothing() {
    let ws = setup();
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(ALL));
    assert!(s.cached.is_empty());
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty(), "{:?}", s.executed);
    assert_eq!(s.cached, set(ALL));
    assert_eq!(
        ws.read("out/chain/agg/agg.txt"),
        "HELLO\nV1\n0\nHELLO\nV1\n1\nHELLO\nV1\n2\n"
    );
    assert_eq!(ws.read("out/chain/t/fold1/t1.txt"), "HELLO\nV1\n1\n");
}

#[test]
fn param_edit_reruns_the_stage_and_dependents_with_early_cutoff() {
    let ws = setup();
    ws.run("p.ron", 0);
    // a's output changes (v1 -> v2); b, t, agg follow; c reruns (its input changed) but
    // writes the same byte count, so d — downstream of c only — is reused (early cutoff).
    ws.write("p.ron", &CHAIN.replace("echo v1", "echo v2"));
    let st = ws.status("p.ron");
    let a = st.iter().find(|s| s["stage"] == "a").unwrap();
    assert_eq!(a["state"], "stale");
    let reasons = a["reasons"].to_string();
    assert!(
        reasons.contains("param cmd changed") && reasons.contains("echo v1") && reasons.contains("echo v2"),
        "{reasons}"
    );
    let side = st.iter().find(|s| s["stage"] == "side").unwrap();
    assert_eq!(side["state"], "fresh");

    let s = ws.run("p.ron", 0);
    assert_eq!(
        s.executed,
        set(&["a", "b", "c", "t@fold0", "t@fold1", "t@fold2", "agg"])
    );
    assert_eq!(s.cached, set(&["d", "side"]));
    assert_eq!(ws.read("out/chain/b/b.txt"), "HELLO\nV2\n");
}

#[test]
fn params_that_do_not_affect_output_rerun_nothing() {
    let ws = setup();
    ws.run("p.ron", 0);
    let edited = CHAIN
        .replace("seed: 42", "seed: 7")
        .replace("description: \"upper-case\"", "description: \"shout\"")
        .replace("threads: 1", "threads: 2");
    ws.write("p.ron", &edited);
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty(), "{:?}", s.executed);
    // Formatting of the file does not matter either.
    ws.write("p.ron", &edited.replace("    ", "\t").replace(", ", ",  "));
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty(), "{:?}", s.executed);
}

#[test]
fn rerun_with_identical_output_stops_the_cascade() {
    let ws = setup();
    ws.run("p.ron", 0);
    // A different command with byte-identical output.
    ws.write(
        "p.ron",
        &CHAIN.replace("cat data/x.txt > a.txt", "cat < data/x.txt > a.txt"),
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]));
    assert_eq!(s.cached.len(), ALL.len() - 1);
}

#[test]
fn dataset_content_change_is_seen_and_unchanged_files_are_not() {
    let ws = setup();
    ws.run("p.ron", 0);
    // Same size, new content.
    std::thread::sleep(std::time::Duration::from_millis(20));
    ws.write("data/x.txt", "HELLO\n");
    let st = ws.status("p.ron");
    let a = st.iter().find(|s| s["stage"] == "a").unwrap();
    assert!(a["reasons"].to_string().contains("workspace path data changed"), "{a}");
    let s = ws.run("p.ron", 0);
    // b upper-cases: same bytes as before, so nothing below b reruns.
    assert_eq!(s.executed, set(&["a", "b"]));
    // A new file in the directory is a change too.
    ws.write("data/y.txt", "more\n");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["a"]));
}

#[test]
fn failure_keeps_finished_work_and_names_the_stage() {
    let ws = setup();
    ws.write(
        "p.ron",
        &CHAIN.replace("tr a-z A-Z < a.txt > b.txt", "echo broken >&2; exit 3"),
    );
    let out = ws.flow(&["run", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = common::Summary::from(&v);
    assert_eq!(s.failed, set(&["b"]));
    assert!(s.executed.contains(&"a".to_string()));
    for down in ["c", "d", "t@fold0", "agg"] {
        assert!(
            !s.executed.contains(&down.to_string()),
            "{down} ran after its input failed"
        );
    }
    let f = &v["failed"][0];
    assert!(f["error"].as_str().unwrap().contains("exit status: 3"), "{f}");
    assert!(f["error"].as_str().unwrap().contains("broken"), "{f}");
    let log = std::path::PathBuf::from(f["log"].as_str().unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("broken"));
    // Human output names the stage and its log.
    let out = ws.flow(&["run", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed: b") && err.contains("log:"), "{err}");
    // Fixed: a is reused.
    ws.write("p.ron", CHAIN);
    let s = ws.run("p.ron", 0);
    assert!(
        s.cached.contains(&"a".to_string()) && s.cached.contains(&"side".to_string()),
        "{:?}",
        s.cached
    );
    assert!(s.executed.contains(&"b".to_string()));
}

#[test]
fn missing_declared_output_fails_the_stage() {
    let ws = setup();
    ws.write(
        "p.ron",
        &CHAIN.replace("outputs: [\"s.txt\"]", "outputs: [\"nope.txt\"]"),
    );
    let out = ws.flow(&["run", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has(&v["failed"][0]["error"], "`nope.txt` was not created"), "{v}");
}

#[test]
fn extending_pipelines_share_the_cache() {
    let ws = setup();
    ws.run("p.ron", 0);
    ws.write(
        "child.ron",
        r#"Pipeline(
    name: "child",
    extends: "p.ron",
    stages: {
        "d": Exec(cmd: "cat c.txt c.txt > d.txt", inputs: [Stage("c")], outputs: ["d.txt"]),
        "extra": Exec(cmd: "cat d.txt > e.txt", inputs: [Stage("d")], outputs: ["e.txt"]),
    },
)"#,
    );
    let s = ws.run("child.ron", 0);
    assert_eq!(s.executed, set(&["d", "extra"]));
    assert_eq!(s.cached.len(), ALL.len() - 1);
    assert!(ws.path().join("out/child/extra/e.txt").exists());
}

#[test]
fn targets_run_only_what_they_need() {
    let ws = setup();
    let out = ws.flow(&["run", "--json", "--target", "b", "p.ron"]);
    assert!(out.status.success());
    let s = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
    assert_eq!(s.executed, set(&["a", "b"]));
    let out = ws.flow(&["run", "--target", "nope", "p.ron"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_says_never_run_then_fresh() {
    let ws = setup();
    let st = ws.status("p.ron");
    assert_eq!(st.len(), ALL.len());
    assert!(st.iter().all(|s| s["state"] == "never-run"), "{st:?}");
    ws.run("p.ron", 0);
    let st = ws.status("p.ron");
    assert!(
        st.iter()
            .all(|s| s["state"] == "fresh" && s["reasons"].as_array().unwrap().is_empty()),
        "{st:?}"
    );
}

#[test]
fn a_tampered_cached_output_is_not_trusted() {
    let ws = setup();
    ws.run("p.ron", 0);
    // Remove the object behind c's output: c must rerun, not be reported fresh.
    // out/ holds hard links to the objects: find c.txt's object by its inode.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(ws.path().join("out/chain/c/c.txt")).unwrap().ino();
    let obj = common::files_under(&ws.path().join(".flow/objects"))
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().ino() == ino)
        .expect("c.txt's object");
    std::fs::remove_file(&obj).unwrap();
    let st = ws.status("p.ron");
    let c = st.iter().find(|s| s["stage"] == "c").unwrap();
    assert_eq!(c["state"], "stale", "{c}");
    assert!(c["reasons"].to_string().contains("cached outputs unusable"), "{c}");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["c"]));
    assert_eq!(ws.read("out/chain/c/c.txt").trim(), "9");
}

#[test]
fn unchanged_workspace_files_are_not_read_again() {
    let ws = setup();
    for i in 0..20 {
        ws.write(&format!("data/many/f{i}.txt"), &format!("file {i}\n"));
    }
    // Old mtimes: files modified in the last 2 s are re-read on purpose (racy stat).
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in common::files_under(&ws.path().join("data")) {
        std::fs::File::options()
            .write(true)
            .open(&e)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let s = ws.run("p.ron", 0);
    assert_eq!(s.raw["workspace_files"], 21);
    assert_eq!(s.raw["workspace_files_read"], 21);
    let s = ws.run("p.ron", 0);
    assert_eq!(s.raw["workspace_files"], 21);
    assert_eq!(s.raw["workspace_files_read"], 0, "unchanged files must not be read");
    // Status does not read them either.
    let out = ws.flow(&["status", "p.ron"]);
    assert!(out.status.success());
    // One changed file is the only one read.
    ws.write("data/many/f3.txt", "changed\n");
    let s = ws.run("p.ron", 0);
    assert_eq!(s.raw["workspace_files_read"], 1);
    assert_eq!(s.executed, set(&["a"]));
}

#[test]
fn dry_run_says_what_would_run_and_runs_nothing() {
    let ws = setup();
    ws.run("p.ron", 0);
    ws.write("p.ron", &CHAIN.replace("echo v1", "echo v2"));
    let records = || std::fs::read_dir(ws.path().join(".flow/runs")).unwrap().count();
    let before = records();
    let out = ws.flow(&["run", "--dry-run", "--json", "--target", "c", "p.ron"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = common::stdout_json(&out);
    assert_eq!(v["dry_run"], true);
    let would: Vec<&str> = v["would_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    // Only c and what it needs: a (its param changed), b and c (their upstream runs first).
    assert_eq!(would, ["a", "b", "c"]);
    assert!(has(&v["would_run"][0]["reasons"][0], "param cmd changed"), "{v}");
    assert_eq!(v["cached"], serde_json::json!([]));
    // Nothing ran: no record, a still stale, the old output still exposed.
    assert_eq!(records(), before);
    assert_eq!(ws.status("p.ron")[0]["state"], "stale");
    assert!(ws.read("out/chain/a/a.txt").contains("v1"));
    // The text form: one line per instance, then the count, on stdout.
    let text = String::from_utf8(ws.flow(&["run", "-n", "p.ron"]).stdout).unwrap();
    assert!(text.contains("would run  a  (param cmd changed"), "{text}");
    assert!(text.contains("cached     side"), "{text}");
    assert!(
        text.ends_with("chain: 8 would run, 1 cached (dry run: nothing ran)\n"),
        "{text}"
    );
}
