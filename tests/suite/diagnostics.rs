//! Invalid-pipeline fixtures (`tests/fixtures/invalid/*.ron`), each with a snapshot of the
//! diagnostic `flow check` renders (`*.snap`). `UPDATE_SNAPSHOTS=1 cargo test` rewrites them.

use crate::common;

use std::path::Path;
use std::process::Command;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid")
}

fn check(dir: &Path, file: &str, json: bool) -> std::process::Output {
    let mut c = Command::new(common::flow_bin());
    c.current_dir(dir)
        .arg("check")
        .env("NO_COLOR", "1")
        .env_remove("FLOW_CACHE_DIR");
    if json {
        c.arg("--json");
    }
    c.arg(file).output().expect("run flow check")
}

#[test]
fn every_invalid_fixture_matches_its_snapshot() {
    let dir = fixtures();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".ron"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for name in &names {
        let out = check(&dir, name, false);
        assert_eq!(out.status.code(), Some(2), "{name}: flow check must exit 2");
        let got = String::from_utf8_lossy(&out.stderr).to_string();
        let snap = dir.join(name.replace(".ron", ".snap"));
        if update {
            std::fs::write(&snap, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&snap)
            .unwrap_or_else(|_| panic!("no snapshot {} (run with UPDATE_SNAPSHOTS=1)", snap.display()));
        if got != want {
            mismatches.push(format!("--- {name}: expected\n{want}\n--- got\n{got}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn every_diagnostic_has_a_position_and_a_code() {
    let dir = fixtures();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        if !name.ends_with(".ron") {
            continue;
        }
        let out = check(&dir, &name, true);
        assert_eq!(out.status.code(), Some(2));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["ok"], false);
        let diags = v["files"][0]["diagnostics"].as_array().expect("diagnostics");
        assert!(!diags.is_empty(), "{name}: no diagnostic");
        for d in diags {
            assert!(
                d["line"].as_u64().unwrap() >= 1 && d["col"].as_u64().unwrap() >= 1,
                "{name}: no position: {d}"
            );
            assert_eq!(d["file"], name.as_str());
            let expected_code = name.trim_end_matches(".ron").replace('_', "-");
            let code = d["code"].as_str().unwrap();
            // The fixture's name says what it tests: its first diagnostic must be of that code.
            let matches = expected_code.starts_with(code)
                || (code == "path-escape" && expected_code.ends_with("escape"))
                || (code == "duplicate-stage" && expected_code == "duplicate-stage")
                || (code == "unknown-field"
                    && expected_code.starts_with("unknown")
                    && expected_code.ends_with("field"))
                || (code == "extends" && expected_code == "bad-extends")
                || (code == "syntax" && expected_code == "syntax-error");
            assert!(matches, "{name}: code {code}");
        }
    }
}

#[test]
fn check_accepts_every_shipped_pipeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["pipelines", "examples", "examples/study"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            // The real-data recipe needs the user's data: checked below, with its files.
            if p.extension().is_some_and(|x| x == "ron") && !p.ends_with("pipelines/real.ron") {
                files.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    assert!(files.len() >= 2);
    let out = Command::new(common::flow_bin())
        .current_dir(root)
        .arg("check")
        .arg("--json")
        .args(&files)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], true, "{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_real_data_recipe_checks_where_its_data_and_weights_are_and_names_them_where_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let real = root.join("pipelines/real.ron");
    let ws = tempfile::tempdir().unwrap();
    let check = || {
        let out = Command::new(common::flow_bin())
            .current_dir(ws.path())
            .args(["check", "--json"])
            .arg(&real)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let v = check();
    assert_eq!(v["ok"], false);
    let text = v.to_string();
    assert!(
        text.contains("data/faces") && text.contains("weights/efficientnet_b0.safetensors"),
        "{text}"
    );
    for d in ["data/faces/real/id01", "data/faces/fake/swap/id01", "weights"] {
        std::fs::create_dir_all(ws.path().join(d)).unwrap();
    }
    std::fs::write(ws.path().join("weights/efficientnet_b0.safetensors"), b"").unwrap();
    let v = check();
    assert_eq!(v["ok"], true, "{}", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn check_reports_every_file_and_fails_if_any_is_bad() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(common::flow_bin())
        .current_dir(root)
        .args([
            "check",
            "--json",
            "pipelines/quick.ron",
            "tests/fixtures/invalid/cycle.ron",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"][0]["ok"], true);
    assert_eq!(v["files"][1]["ok"], false);
    assert!(v["files"][1]["diagnostics"][0]["message"]
        .as_str()
        .unwrap()
        .contains("a -> b -> c -> a"));
}
