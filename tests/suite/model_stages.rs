//! The model chain through `flow run`: Train@folds → Calibrate → MineHardNegatives →
//! Retrain@folds → EnsembleInfer, on a tiny demo set with a tiny CNN (runs in flow-worker).

use crate::common;
use common::{rows, set, Ws};
use std::collections::BTreeMap;

const CHAIN: &str = r#"Pipeline(
    name: "ml",
    defaults: (seed: 5),
    stages: {
        "ingest": Ingest(source: Demo(count: 24, size: 16, seed: 3)),
        "split": Split(dataset: "ingest", folds: 2, val_ratio: 0.25),
        "pre": Preprocess(dataset: "ingest", size: 16),
        "train": Train(data: "pre", split: "split", model: SimpleCnn(width: 4, depth: 2), epochs: 2, batch_size: 8),
        "calibrate": Calibrate(models: "train", bins: 5),
        "mine": MineHardNegatives(calibration: "calibrate", top: 0.25),
        "retrain": Retrain(models: "train", hard_negatives: "mine", data: "pre", split: "split", epochs: 1),
        "infer": EnsembleInfer(models: ["retrain", "train"], data: "pre", split: "split", calibration: "calibrate", tta: [Identity, HFlip], aggregate: CalibratedMean),
    },
)"#;

#[test]
fn the_model_chain_runs_out_of_fold_and_caches() {
    let ws = Ws::new();
    ws.write("p.ron", CHAIN);
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed.len(), 10, "{:?}", s.executed);
    for f in 0..2 {
        for file in ["model.safetensors", "history.csv", "meta.json", "scores.csv"] {
            assert!(
                ws.path().join(format!("out/ml/train/fold{f}/{file}")).exists(),
                "train fold{f} {file}"
            );
            assert!(
                ws.path().join(format!("out/ml/retrain/fold{f}/{file}")).exists(),
                "retrain fold{f} {file}"
            );
        }
    }
    let cal: serde_json::Value = serde_json::from_str(&ws.read("out/ml/calibrate/calibration.json")).unwrap();
    assert_eq!(cal["folds"].as_array().unwrap().len(), 2);
    assert!(cal["folds"][0]["temperature"].as_f64().unwrap() > 0.0);
    // Hard negatives are real training items of the fold that mined them.
    let folds = rows(&ws, "out/ml/split/folds.csv");
    let fold_of: BTreeMap<&str, (&str, &str)> = folds
        .iter()
        .map(|r| (r["item"].as_str(), (r["fold"].as_str(), r["label"].as_str())))
        .collect();
    let hn = rows(&ws, "out/ml/mine/hard_negatives.csv");
    assert!(!hn.is_empty());
    for r in &hn {
        let (item_fold, label) = fold_of[r["item"].as_str()];
        assert_eq!(label, "0", "hard negatives are reals");
        assert_ne!(item_fold, r["fold"], "never from the fold's own test set");
    }
    // Every item predicted once, out of fold, with one column per member.
    let p = rows(&ws, "out/ml/infer/predictions.csv");
    assert_eq!(p.len(), 24);
    for r in &p {
        assert_eq!(r["fold"], fold_of[r["item"].as_str()].0);
        let score: f64 = r["score"].parse().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(r.contains_key("retrain") && r.contains_key("train"), "{r:?}");
    }
    // Nothing reruns; a calibration-only change reruns calibrate and what follows it.
    assert!(ws.run("p.ron", 0).executed.is_empty());
    ws.write("p.ron", &CHAIN.replace("bins: 5", "bins: 6"));
    let s = ws.run("p.ron", 0);
    assert!(s.executed.contains(&"calibrate".to_string()));
    assert!(s.cached.contains(&"train@fold0".to_string()) && s.cached.contains(&"train@fold1".to_string()));
    // Calibration bins do not change temperatures → mine output identical → retrain cached.
    assert!(s.cached.contains(&"retrain@fold0".to_string()), "{s:?}");
    let _ = set(&[]);
}

// Issue 11: history.csv and meta.json held wall-clock facts, so a re-made, bit-identical
// model had a new output hash and calibrate, mine, retrain, infer all re-ran.
#[test]
fn a_re_made_model_is_byte_identical_and_nothing_downstream_reruns() {
    let ws = Ws::new();
    ws.write("p.ron", CHAIN);
    ws.run("p.ron", 0);
    let key = ws
        .status("p.ron")
        .iter()
        .find(|s| s["stage"] == "train@fold0")
        .and_then(|s| s["key"].as_str().map(String::from))
        .unwrap();
    let rec_path = ws.path().join(format!(".flow/runs/{key}.json"));
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    // Outputs hold what the key determines; timings live in the run record.
    let history = ws.read("out/ml/train/fold0/history.csv");
    assert_eq!(history.lines().next(), Some("epoch,train_loss,val_loss,val_auc,lr"));
    let meta: serde_json::Value = serde_json::from_str(&ws.read("out/ml/train/fold0/meta.json")).unwrap();
    for volatile in ["seconds", "threads", "resumed_after_epoch"] {
        assert!(meta.get(volatile).is_none(), "meta.json has {volatile}");
    }
    assert!(rec["meta"]["seconds"].as_f64().unwrap() > 0.0, "{}", rec["meta"]);
    assert!(rec["meta"]["epochs"][1]["train_images_per_s"].as_f64().unwrap() > 0.0);
    // The model is made again (its record gone): same bytes, so nothing downstream runs.
    std::fs::remove_file(&rec_path).unwrap();
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["train@fold0"]));
    assert_eq!(s.cached.len(), 9, "{:?}", s.cached);
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    assert_eq!(again["output"], rec["output"]);
    // The same through Retrain (its meta.json once held the absolute path of its sandbox).
    let key = ws
        .status("p.ron")
        .iter()
        .find(|s| s["stage"] == "retrain@fold1")
        .and_then(|s| s["key"].as_str().map(String::from))
        .unwrap();
    let rec_path = ws.path().join(format!(".flow/runs/{key}.json"));
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    std::fs::remove_file(&rec_path).unwrap();
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["retrain@fold1"]), "infer must stay cached");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    assert_eq!(again["output"], rec["output"]);
}

#[test]
fn a_training_error_names_the_instance_and_the_cause() {
    let ws = Ws::new();
    ws.write("w.safetensors", "not a safetensors file");
    ws.write(
        "p.ron",
        &CHAIN.replace(
            "epochs: 2, batch_size: 8",
            "epochs: 1, batch_size: 8, pretrained: \"w.safetensors\"",
        ),
    );
    let out = ws.flow(&["run", "--json", "--target", "train", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["failed"][0];
    assert!(f["stage"].as_str().unwrap().starts_with("train@fold"), "{v}");
    assert!(f["error"].as_str().unwrap().contains("w.safetensors"), "{v}");
}

#[test]
fn a_killed_training_shows_as_resumable_from_its_epoch() {
    let ws = Ws::new();
    let slow = CHAIN
        .replace(
            "Demo(count: 24, size: 16, seed: 3)",
            "Demo(count: 64, size: 16, seed: 3)",
        )
        .replace("epochs: 2, batch_size: 8", "epochs: 400, batch_size: 8");
    ws.write("p.ron", &slow);
    let mut child = ws.spawn(&["run", "--json", "p.ron", "--target", "train"]);
    // Wait for a first checkpoint's progress note, then SIGKILL flow (its worker follows).
    let resume = ws.path().join(".flow/resume");
    let t = std::time::Instant::now();
    let noted = || {
        std::fs::read_dir(&resume)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("progress.json").is_file())
    };
    while !noted() {
        assert!(t.elapsed().as_secs() < 120, "no training checkpoint appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let st = ws.status("p.ron");
    let resumable: Vec<&serde_json::Value> = st
        .iter()
        .filter(|s| {
            s["reasons"].as_array().unwrap().iter().any(|r| {
                r.as_str()
                    .unwrap()
                    .starts_with("resumable: a killed run finished epoch")
            })
        })
        .collect();
    assert!(!resumable.is_empty(), "{st:?}");
    assert!(resumable
        .iter()
        .all(|s| s["stage"].as_str().unwrap().starts_with("train@")));
    let text = String::from_utf8_lossy(&ws.flow(&["status", "p.ron"]).stdout).to_string();
    assert!(text.contains("the next run continues from epoch"), "{text}");
}
