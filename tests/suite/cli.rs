//! `flow dag`, `flow doctor`, exit codes.

use crate::common;
use common::{has, Ws};

#[test]
fn dag_renders_text_dot_mermaid_and_json() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::flow_bin())
            .current_dir(root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The default study: the ML chain.
    let text = run(&["dag", "pipelines/full.ron"]);
    assert!(text.contains("full (10 stages, 18 instances)"), "{text}");
    assert!(
        text.contains(
            "retrain@fold3 [Retrain] <- data: preprocess, hard_negatives: mine, models: train@fold3, split: split"
        ),
        "{text}"
    );
    assert!(
        text.contains("calibrate [Calibrate] <- models: train@fold{0..4}"),
        "{text}"
    );
    let j: serde_json::Value = serde_json::from_str(&run(&["dag", "--json", "pipelines/full.ron"])).unwrap();
    assert_eq!(j["nodes"].as_array().unwrap().len(), 18);
    // ingest→{split,preprocess} 2, preprocess→spectrum 1, {preprocess,split}→train 10, train→calibrate 5, calibrate→mine 1,
    // {preprocess,mine,train,split}→retrain 20, {calibrate,preprocess,split,train×5,retrain×5}→infer 13,
    // {infer,calibrate,split,ingest,spectrum,train×5,retrain×5}→report 15.
    assert_eq!(j["edges"].as_array().unwrap().len(), 67);
    // The same study's shape on Exec steps alone.
    let text = run(&["dag", "examples/exec_study.ron"]);
    assert!(text.contains("exec_study (9 stages, 17 instances)"), "{text}");
    assert!(
        text.contains("retrain@fold3 [Exec] <- inputs: mine, train@fold3"),
        "{text}"
    );
    assert!(text.contains("calibrate [Exec] <- inputs: train@fold{0..4}"), "{text}");
    let dot = run(&["dag", "--format", "dot", "examples/exec_study.ron"]);
    assert!(
        dot.starts_with("digraph \"exec_study\"") && dot.contains("\"train@fold2\" -> \"retrain@fold2\""),
        "{dot}"
    );
    let mm = run(&["dag", "--format", "mermaid", "examples/exec_study.ron"]);
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("train_at_fold2 -->|inputs| retrain_at_fold2"),
        "{mm}"
    );
    let j: serde_json::Value = serde_json::from_str(&run(&["dag", "--json", "examples/exec_study.ron"])).unwrap();
    assert_eq!(j["nodes"].as_array().unwrap().len(), 17);
    // ingest→{split,preprocess} 2, {split,preprocess}→train 10, train→calibrate 5,
    // {calibrate,split,preprocess}→mine 3, {train,mine}→retrain 10, {retrain×5,preprocess}→infer 6,
    // {infer,calibrate}→report 2.
    assert_eq!(j["edges"].as_array().unwrap().len(), 38);
}

#[test]
fn doctor_reports_the_torch_worker() {
    let ws = Ws::new();
    let out = ws.flow(&["doctor", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cache_writable"], true);
    if v["worker"].is_null() {
        // Only when the worker binary was not built (it is, by scripts/test).
        assert_eq!(v["torch"]["available"], false);
    } else {
        assert_eq!(v["torch"]["available"], true, "{v}");
        assert!(
            v["torch"]["libtorch_version"].as_str().unwrap().starts_with("2.13.0"),
            "{v}"
        );
    }
    // Without a worker, doctor says why instead of failing.
    let out = ws
        .cmd(&["doctor", "--json"])
        .env("FLOW_WORKER", "/nonexistent/flow-worker")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["torch"]["available"], false);
    assert!(has(&v["torch"]["note"], "/nonexistent/flow-worker"), "{v}");
}

#[test]
fn usage_errors_exit_2() {
    let ws = Ws::new();
    assert_eq!(ws.flow(&["run"]).status.code(), Some(2));
    assert_eq!(ws.flow(&["frobnicate"]).status.code(), Some(2));
    let out = ws.flow(&["run", "nope.ron"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read nope.ron"));
}

/// The closing line names where the outputs are as the user can open them: with `-C DIR`
/// from elsewhere it is DIR's `out/<pipeline>`, not `out/<pipeline>` of the current directory.
#[test]
fn the_closing_line_names_the_workspace_outputs() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "c", stages: { "a": Exec(cmd: "echo 1 > a", outputs: ["a"]) })"#,
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let ws_arg = ws.path().to_str().unwrap();
    let out = std::process::Command::new(common::flow_bin())
        .current_dir(elsewhere.path())
        .args(["-C", ws_arg, "run", &format!("{ws_arg}/p.ron")])
        .env_remove("FLOW_CACHE_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = std::fs::canonicalize(ws.path()).unwrap().join("out/c");
    assert!(stderr.contains(&format!("outputs in {}", want.display())), "{stderr}");
    // From inside the workspace it stays short.
    let here = ws.flow(&["run", "p.ron"]);
    assert!(
        String::from_utf8_lossy(&here.stderr).contains("outputs in out/c\n"),
        "{here:?}"
    );
}

#[test]
fn list_kinds_names_every_stage_kind() {
    let out = std::process::Command::new(common::flow_bin())
        .args(["check", "--list-kinds", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = flow_stages::registry().names().collect();
    assert_eq!(names, want);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|k| !k["summary"].as_str().unwrap().is_empty()));
}

#[test]
fn list_kinds_takes_no_pipelines() {
    let ws = Ws::new();
    ws.write("bad.ron", "garbage(");
    let out = ws.flow(&["check", "--list-kinds", "--json", "bad.ron"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a CI line `check --list-kinds *.ron` must not pass"
    );
    assert_eq!(common::stdout_json(&out)["code"], "usage");
}

/// Adversarial pass: a cache inside out/ (or out/ inside the cache) put views into the store.
#[test]
fn a_cache_overlapping_out_is_refused() {
    let ws = Ws::new();
    ws.write(
        "p.ron",
        r#"Pipeline(name: "objects", stages: { "a": Exec(cmd: "echo 1 > a", outputs: ["a"]) })"#,
    );
    for dir in ["out", "out/cache", "."] {
        let out = ws.flow(&["--cache-dir", dir, "run", "--json", "p.ron"]);
        assert_eq!(out.status.code(), Some(2), "--cache-dir {dir}");
        assert!(
            has(&common::stdout_json(&out)["error"], "overlaps"),
            "--cache-dir {dir}"
        );
    }
    assert!(!ws.path().join("out").exists(), "nothing was made");
}

#[test]
fn latex_never_replaces_a_compared_pipeline() {
    let ws = Ws::new();
    let p = r#"Pipeline(name: "NAME", stages: { "a": Exec(cmd: "echo 1 > a", outputs: ["a"]) })"#;
    ws.write("a.ron", &p.replace("NAME", "a"));
    ws.write("b.ron", &p.replace("NAME", "b"));
    let out = ws.flow(&[
        "compare", "a.ron", "b.ron", "--stage", "a", "--latex", "./a.ron", "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(has(
        &common::stdout_json(&out)["error"],
        "one of the pipelines compared"
    ));
    assert_eq!(ws.read("a.ron"), p.replace("NAME", "a"));
}

#[test]
fn set_changes_a_param_as_an_edit_of_the_file_would_and_bad_ones_are_positioned_errors() {
    let ws = Ws::new();
    let p = r#"Pipeline(name: "s", stages: {
        "a": Exec(cmd: "echo 1 > a.txt", outputs: ["a.txt"]),
        "b": Exec(cmd: "cat a.txt > b.txt", inputs: [Stage("a")], outputs: ["b.txt"]),
    })"#;
    ws.write("p.ron", p);
    ws.run("p.ron", 0);
    let out = ws.flow(&["run", "--json", "p.ron", "--set", "a.cmd=\"echo 2 > a.txt\""]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = common::Summary::from(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
    assert_eq!(s.executed, common::set(&["a", "b"]));
    assert_eq!(ws.read("out/s/b/b.txt"), "2\n");
    // The edited file has exactly those keys: nothing runs.
    ws.write("q.ron", &p.replace("echo 1", "echo 2"));
    let s = ws.run("q.ron", 0);
    assert!(s.executed.is_empty(), "{s:?}");
    // The run facts say the results are the file with --set, not the file alone.
    let out = ws.flow(&["run", "--json", "p.ron", "--set", "a.cmd=\"echo 2 > a.txt\""]);
    assert!(out.status.success());
    let run: serde_json::Value = serde_json::from_str(&ws.read("out/s/run.json")).unwrap();
    assert_eq!(run["instances"][0]["set"][0], "a.cmd=\"echo 2 > a.txt\"", "{run}");

    for (args, want) in [
        (vec!["check", "p.ron", "--set", "a.cmdd=1"], "with --set a.cmdd=1"),
        (
            vec!["check", "p.ron", "--set", "x.cmd=1"],
            "`x` is not a stage of this pipeline",
        ),
        (vec!["check", "p.ron", "--set", "a.cmd"], "expected STAGE.PARAM=VALUE"),
        (vec!["status", "p.ron", "--set", "b.cmd.x=1"], "has no field `x`"),
    ] {
        let out = ws.flow(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
