//! Golden keys: pin the key encoding end to end (params → canonical JSON → blake3, workspace
//! path digests, upstream output tree hashes). If one of these changes, every user's cache is
//! invalidated: that must be a deliberate change that bumps `KEY_FORMAT` (engine/src/key.rs)
//! and updates these values together.

use crate::common;
use common::Ws;

const P: &str = r#"Pipeline(
    name: "golden",
    stages: {
        "a": Exec(cmd: "cat data/x.txt > a.txt", inputs: [Path("data")], outputs: ["a.txt"]),
        "b": Exec(cmd: ["sh", "-c", "cat a.txt a.txt > b{fold}.txt"], folds: 2, inputs: [Stage("a")], outputs: ["b{fold}.txt"], env: {"LC_ALL": "C"}),
    },
)"#;

fn keys(ws: &Ws) -> Vec<(String, String)> {
    ws.status("p.ron")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

#[test]
fn keys_are_pinned() {
    let ws = Ws::new();
    ws.write("data/x.txt", "golden\n");
    ws.write("data/sub/y.txt", "y\n");
    ws.write("p.ron", P);
    let before = keys(&ws);
    // `a` is keyed before anything ran (its only input is a workspace path); `b` needs a's output.
    assert_eq!(
        before[0],
        ("a".to_string(), GOLDEN_A.to_string()),
        "key of `a` changed: {before:?}"
    );
    assert_eq!(before[1].1, "-");
    ws.run("p.ron", 0);
    let after = keys(&ws);
    assert_eq!(after[0].1, GOLDEN_A);
    assert_eq!(after[1], ("b@fold0".to_string(), GOLDEN_B0.to_string()), "{after:?}");
    assert_eq!(after[2], ("b@fold1".to_string(), GOLDEN_B1.to_string()), "{after:?}");
}

#[test]
fn keys_do_not_depend_on_where_or_how_it_runs() {
    // Two workspaces in different directories, different --jobs, different cache dirs:
    // same keys.
    let w1 = Ws::new();
    let w2 = Ws::new();
    for w in [&w1, &w2] {
        w.write("data/x.txt", "golden\n");
        w.write("data/sub/y.txt", "y\n");
    }
    w1.write("p.ron", P);
    // Renamed pipeline, reordered stages: keys are the same.
    w2.write("p.ron", &P.replace("name: \"golden\"", "name: \"other\""));
    let a = w1.flow(&["run", "--json", "-j", "1", "p.ron"]);
    let b = w2
        .cmd(&["run", "--json", "-j", "2", "p.ron"])
        .env("FLOW_CACHE_DIR", w2.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(a.status.success() && b.status.success());
    let k1 = keys(&w1);
    let k2: Vec<(String, String)> = {
        let out = w2
            .cmd(&["status", "--json", "p.ron"])
            .env("FLOW_CACHE_DIR", w2.path().join("elsewhere"))
            .output()
            .unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter()
            .map(|s| {
                (
                    s["stage"].as_str().unwrap().to_string(),
                    s["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(k1, k2);
}

const GOLDEN_A: &str = "ac0fd7638089803fa9d50f5cf756b7ea12c068dea9a69aed6d52ec50984a93f8";
const GOLDEN_B0: &str = "809343e25557c317f56d0a1c716d6a89912dd54543c07aac8e42317f19dfbf42";
const GOLDEN_B1: &str = "adb827fdb2614c83c85068879a34b28f4eb1b7a1d1a4c25102b1b538aa0bf401";

/// What every stage kind puts into its key: kind, version and key params (defaults resolved)
/// of every stage of the shipped pipelines, against `tests/fixtures/golden/key_params.json`.
/// A difference invalidates users' caches for that kind: bump its version (or `KEY_FORMAT`)
/// deliberately and rewrite the snapshot with `UPDATE_SNAPSHOTS=1`. Every registered kind
/// must appear: a new kind adds its golden params here.
#[test]
fn key_params_of_every_stage_kind_are_pinned() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = flow_stages::registry();
    let mut got = serde_json::Map::new();
    let files = [
        "pipelines/full.ron",
        "examples/facecrop.ron",
        "examples/weak.ron",
        "examples/study/phase2.ron",
        "examples/explain.ron",
    ];
    for file in files {
        let dag = flow_engine::load_dag(&root.join(file), &registry).unwrap_or_else(|d| panic!("{file}: {d:?}"));
        // A study's variants have their base's key params: only its comparison is new.
        let study = dag.pipeline.comparison.clone();
        for s in dag
            .pipeline
            .stages
            .iter()
            .filter(|s| study.is_none() || study.as_ref() == Some(&s.name))
        {
            got.insert(
                format!("{file}: {}", s.name),
                serde_json::json!({"kind": s.kind.name, "version": s.kind.version, "params": s.config.key_params()}),
            );
        }
    }
    let kinds: std::collections::BTreeSet<&str> = got.values().map(|v| v["kind"].as_str().unwrap()).collect();
    let missing: Vec<&str> = registry.names().filter(|k| !kinds.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "kinds with no golden key params (add a stage of each to a shipped pipeline listed here): {missing:?}"
    );
    let got = serde_json::to_string_pretty(&serde_json::Value::Object(got)).unwrap() + "\n";
    let snap = root.join("tests/fixtures/golden/key_params.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        std::fs::write(&snap, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&snap).unwrap_or_else(|_| panic!("no {} (UPDATE_SNAPSHOTS=1)", snap.display()));
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  pinned: {a}\n  now:    {b}", i + 1))
            .collect();
        panic!(
            "key params changed (every user's cache of those kinds is invalidated):\n{}",
            diff.join("\n")
        );
    }
}
