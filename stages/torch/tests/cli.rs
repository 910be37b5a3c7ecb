//! The `flow-worker run <spec.json>` process contract: JSON progress lines on stdout, exit 0
//! on success; `error: <message>` as the last stderr line and exit 1 on failure.

use std::process::Command;

use flow_stages::data::preprocess::Normalize;
use flow_stages::worker::WorkerEvent;
use flow_stages_torch::testdata::{self, input, spec, train_params};

fn run(spec: &flow_stages::worker::WorkerSpec) -> std::process::Output {
    let path = spec.work_dir.join("worker-spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flow-worker"))
        .arg("run")
        .arg(&path)
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap()
}

#[test]
fn train_prints_progress_and_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 24, 32, 2, Normalize::ImageNet, None);
    let inputs = vec![
        input("data", "preprocess", None, &s.data),
        input("split", "split", None, &s.split),
    ];
    let sp = spec("Train", train_params(2), Some(1), tmp.path(), "train", inputs);
    let out = run(&sp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<WorkerEvent> = stdout.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    let fracs: Vec<f64> = events
        .iter()
        .filter_map(|e| {
            if let WorkerEvent::Progress { frac, .. } = e {
                Some(*frac)
            } else {
                None
            }
        })
        .collect();
    assert!(fracs.contains(&0.5) && fracs.contains(&1.0), "{stdout}");
    assert!(events
        .iter()
        .any(|e| matches!(e, WorkerEvent::Meta(m) if m["best_epoch"].as_u64().is_some())));
    // Timings travel as run-record meta (never in output files): per epoch and in all.
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::Meta(m)
        if m["seconds"].as_f64().is_some()
            && m["threads"].as_u64().is_some()
            && m["epochs"].as_array().is_some_and(|a| a.len() == 2 && a[1]["train_images_per_s"].as_f64().unwrap() > 0.0))));
    let history = std::fs::read_to_string(sp.out_dir.join("history.csv")).unwrap();
    assert_eq!(history.lines().next(), Some("epoch,train_loss,val_loss,val_auc,lr"));
    assert!(stderr.contains("epoch 2/2"), "{stderr}");
    for f in ["model.safetensors", "history.csv", "scores.csv", "meta.json"] {
        assert!(sp.out_dir.join(f).is_file(), "{f}");
    }
}

#[test]
fn failures_end_with_an_error_line_and_status_1() {
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 24, 32, 2, Normalize::ImageNet, Some(0));
    let inputs = vec![
        input("data", "preprocess", None, &s.data),
        input("split", "split", None, &s.split),
    ];
    let sp = spec("Train", train_params(1), Some(0), tmp.path(), "train", inputs.clone());
    let out = run(&sp);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: fold 0 has no fake items in its training set"),
        "{stderr}"
    );

    let sp = spec("Tarin", train_params(1), Some(0), tmp.path(), "typo", inputs);
    let out = run(&sp);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("error: flow-worker cannot run `Tarin`"),
        "{stderr}"
    );
}
