//! End-to-end tests of Train, Retrain and EnsembleInfer on tiny synthetic data (32 px,
//! ≤ 60 items, SimpleCnn, 1 thread). libtorch's seed and thread count are process-global, so
//! these tests run one at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use flow_stages::model::{GlobalPool, Model};
use flow_stages::ports::split::Role;
use flow_stages::ports::tensors::Normalize;

/// A plain SimpleCnn (no high-pass input, average pooling).
fn cnn(width: i64, depth: i64) -> Model {
    Model::SimpleCnn {
        width,
        depth,
        highpass: false,
        pool: GlobalPool::Avg,
    }
}
use serde_json::json;

use crate::run::run_spec;
use crate::testdata::{self, input, spec, train_params, Synth};
use crate::train::Hooks;

fn serial() -> MutexGuard<'static, ()> {
    crate::torch_serial()
}

/// Hooks that end a run (as a kill would) after epoch `epoch`'s checkpoint.
fn kill_after(epoch: u32) -> Hooks {
    Hooks {
        after_epoch: Some(Box::new(
            move |e| if e == epoch { Err("killed".into()) } else { Ok(()) },
        )),
        poison: None,
    }
}

/// Hooks that record which epochs ran.
fn record_epochs() -> (Hooks, std::sync::Arc<Mutex<Vec<u32>>>) {
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let hooks = Hooks {
        after_epoch: Some(Box::new(move |e| {
            seen2.lock().unwrap().push(e);
            Ok(())
        })),
        poison: None,
    };
    (hooks, seen)
}

fn train_inputs(s: &Synth) -> Vec<flow_stages::worker::WorkerInput> {
    vec![
        input("data", "preprocess", None, &s.data),
        input("split", "split", None, &s.split),
    ]
}

fn read_csv(p: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(p).unwrap();
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            h.iter()
                .zip(rec.unwrap().iter())
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        })
        .collect()
}

fn json_of(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn train_writes_all_artifacts_and_learns() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 48, 32, 3, Normalize::RealOnly, None);
    let sp = spec("Train", train_params(2), Some(1), tmp.path(), "train", train_inputs(&s));
    run_spec(&sp, &Hooks::default()).unwrap();
    let out = &sp.out_dir;

    // model.safetensors: every variable plus num_batches_tracked per batch norm
    let t = crate::nets::read_tensors(&out.join("model.safetensors")).unwrap();
    assert_eq!(t["fc.weight"].size(), vec![1, 32]);
    assert!(t.contains_key("features.2.bn.running_var"));
    assert!(t.contains_key("features.0.bn.num_batches_tracked"));

    // history: header + 2 epochs
    let h = read_csv(&out.join("history.csv"));
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["epoch"], "2");
    assert!(h
        .iter()
        .all(|r| !r["val_auc"].is_empty() && r["train_loss"].parse::<f64>().unwrap() > 0.0));

    // scores: every item, index order, roles as FoldRow::role(1)
    let sc = read_csv(&out.join("scores.csv"));
    assert_eq!(sc.len(), 48);
    for (r, f) in sc.iter().zip(&s.rows) {
        assert_eq!(r["item"], f.item);
        let role = f.role(1).name();
        assert_eq!(r["role"], role);
        assert_eq!(r["logit"].split('.').nth(1).unwrap().len(), 9);
    }
    // the checkerboard is learnable: the test fold (never trained on) is well separated
    let (z, y): (Vec<f64>, Vec<u8>) = sc
        .iter()
        .filter(|r| r["role"] == "test")
        .map(|r| (r["logit"].parse::<f64>().unwrap(), r["label"].parse::<u8>().unwrap()))
        .unzip();
    let auc = crate::util::auc(&z, &y).unwrap();
    assert!(auc > 0.8, "test AUC {auc}");

    // meta: counts, best epoch, RealOnly statistics of fold 1's real training items
    let m = json_of(&out.join("meta.json"));
    let n_train_real = s
        .rows
        .iter()
        .filter(|f| f.role(1) == Role::Train && f.label == 0)
        .count();
    assert_eq!(m["counts"]["train"]["real"], json!(n_train_real));
    assert!(m["best_epoch"].as_u64().unwrap() >= 1);
    assert_eq!(m["selection"], "val_auc");
    assert_eq!(m["normalize"]["mode"], "RealOnly");
    let ds = crate::data::Dataset::open(&s.data).unwrap();
    let (mut sum, mut sq, mut cnt) = (0f64, 0f64, 0f64);
    for (i, f) in s.rows.iter().enumerate() {
        if f.role(1) == Role::Train && f.label == 0 {
            for p in ds.pixels(i).chunks_exact(3) {
                let v = p[0] as f64 / 255.0;
                sum += v;
                sq += v * v;
                cnt += 1.0;
            }
        }
    }
    let mean = sum / cnt;
    let std = (sq / cnt - mean * mean).sqrt();
    assert!((m["normalize"]["mean"][0].as_f64().unwrap() - mean).abs() < 1e-4);
    assert!((m["normalize"]["std"][0].as_f64().unwrap() - std).abs() < 1e-4);
    assert_eq!(m["device"], "cpu");
    // Facts of the run, not of the key, stay out of hashed outputs (early cutoff).
    for volatile in ["threads", "seconds", "resumed_after_epoch"] {
        assert!(m.get(volatile).is_none(), "meta.json has `{volatile}`: {m}");
    }
}

#[test]
fn training_is_deterministic_and_resumes_exactly() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let mut params = train_params(3);
    // exercise augmentation and the schedule in the determinism check
    params["augment"] =
        json!({"hflip": 0.5, "rotation": 0.5, "color_jitter": 0.5, "noise": 0.3, "jpeg": 0.3, "erase": 0.3});
    params["schedule"] = json!({"Cosine": {"warmup_epochs": 1.0}});
    params["grad_clip"] = json!(1.0);
    let run = |name: &str, hooks: &Hooks| {
        let sp = spec("Train", params.clone(), Some(0), tmp.path(), name, train_inputs(&s));
        (run_spec(&sp, hooks), sp)
    };
    let (r1, a) = run("a", &Hooks::default());
    r1.unwrap();
    let (r2, b) = run("b", &Hooks::default());
    r2.unwrap();
    let bytes = |sp: &flow_stages::worker::WorkerSpec, f: &str| std::fs::read(sp.out_dir.join(f)).unwrap();
    assert!(
        bytes(&a, "model.safetensors") == bytes(&b, "model.safetensors"),
        "two runs gave different weights"
    );
    assert_eq!(bytes(&a, "scores.csv"), bytes(&b, "scores.csv"));

    // Interrupted after epoch 1, then run again with the same resume dir.
    let kill = kill_after(1);
    let (r3, c) = run("c", &kill);
    assert_eq!(r3.unwrap_err(), "killed");
    assert!(c.resume_dir.join("checkpoint.json").is_file());
    assert!(!c.out_dir.join("model.safetensors").exists());
    let (watch, seen) = record_epochs();
    let (r4, c) = run("c", &watch);
    r4.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![2, 3],
        "the second run should start at epoch 2"
    );
    assert_eq!(read_csv(&c.out_dir.join("history.csv")).len(), 3);
    // A resumed run's outputs are those of an uninterrupted one, byte for byte.
    for f in ["meta.json", "history.csv", "scores.csv"] {
        assert_eq!(bytes(&a, f), bytes(&c, f), "{f} differs after a resume");
    }
    assert!(
        bytes(&a, "model.safetensors") == bytes(&c, "model.safetensors"),
        "resumed run ended with other weights"
    );
    let ha = read_csv(&a.out_dir.join("history.csv"));
    let hc = read_csv(&c.out_dir.join("history.csv"));
    for (x, y) in ha.iter().zip(&hc) {
        assert_eq!((&x["train_loss"], &x["val_auc"]), (&y["train_loss"], &y["val_auc"]));
    }
}

// Issue 11: a checkpoint damaged between a kill and the resume (same size, other bytes)
// was trusted, and the run published weights no uninterrupted run would make.
#[test]
fn a_damaged_checkpoint_is_not_resumed_from() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let params = train_params(3);
    let run = |name: &str, hooks: &Hooks| {
        let sp = spec("Train", params.clone(), Some(0), tmp.path(), name, train_inputs(&s));
        (run_spec(&sp, hooks), sp)
    };
    let (r, a) = run("a", &Hooks::default());
    r.unwrap();
    let kill = kill_after(2);
    let (r, c) = run("c", &kill);
    assert_eq!(r.unwrap_err(), "killed");
    let w = c.resume_dir.join("ckpt-0002/weights.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let n = b.len();
    for x in &mut b[n - 40..] {
        *x ^= 0x5a;
    }
    std::fs::write(&w, &b).unwrap();
    let (watch, seen) = record_epochs();
    let (r, c) = run("c", &watch);
    r.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3], "training must start over");
    let bytes = |sp: &flow_stages::worker::WorkerSpec| std::fs::read(sp.out_dir.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&c), "the result differs from an uninterrupted run");
}

#[test]
fn pretrained_weights_wrong_shapes_are_listed_and_the_head_is_skipped() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 24, 32, 2, Normalize::None, None);
    // A width-4 SimpleCnn's weights into a width-8 model: every conv/bn has the wrong shape.
    let small = crate::nets::build(&cnn(4, 3), tch::Device::Cpu, 32).unwrap();
    let wrong = tmp.path().join("small.safetensors");
    crate::nets::save(&small.vs, &wrong, Some(0)).unwrap();
    let mut params = train_params(1);
    params["pretrained"] = json!("small.safetensors");
    let mut sp = spec("Train", params.clone(), Some(0), tmp.path(), "wrong", train_inputs(&s));
    sp.paths.push(flow_stages::worker::WorkerPath {
        port: "pretrained".into(),
        rel: "small.safetensors".into(),
        abs: wrong,
    });
    let e = run_spec(&sp, &Hooks::default()).unwrap_err();
    assert!(e.starts_with("weights file small.safetensors: "), "{e}");
    assert!(e.contains("features.0.conv.weight [4, 3, 3, 3] vs [8, 3, 3, 3]"), "{e}");
    assert!(e.contains("wrong shape"), "{e}");
    assert!(!e.contains("fc.weight"), "the head is skipped, not an error: {e}");

    // The right backbone with another head (2 outputs): loads, head skipped and reported.
    let right = crate::nets::build(&cnn(8, 3), tch::Device::Cpu, 32).unwrap();
    let mut t: Vec<(String, tch::Tensor)> = crate::nets::named(&right.vs);
    for (n, v) in t.iter_mut() {
        if n == "fc.weight" {
            *v = tch::Tensor::zeros([2, 32], (tch::Kind::Float, tch::Device::Cpu));
        }
        if n == "features.0.conv.weight" {
            *v = tch::Tensor::full([8, 3, 3, 3], 0.125, (tch::Kind::Float, tch::Device::Cpu));
        }
    }
    t.push((
        "extra.thing".into(),
        tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    let good = tmp.path().join("good.safetensors");
    crate::nets::save_tensors(&t, &good).unwrap();
    let net = crate::nets::build(&cnn(8, 3), tch::Device::Cpu, 32).unwrap();
    let rep = crate::nets::load_pretrained(&net, &good, &cnn(8, 3), true).unwrap();
    assert_eq!(rep.skipped.len(), 1, "{:?}", rep.skipped);
    assert!(rep.skipped[0].starts_with("fc.weight [2, 32]"));
    assert_eq!(rep.unused, vec!["extra.thing".to_string()]);
    let w = net.vs.variables()["features.0.conv.weight"].double_value(&[0, 0, 0, 0]);
    assert_eq!(w, 0.125, "pretrained values were not copied");

    // A missing tensor is an error too.
    t.retain(|(n, _)| n != "features.1.bn.running_mean");
    crate::nets::save_tensors(&t, &good).unwrap();
    let e = crate::nets::load_pretrained(&net, &good, &cnn(8, 3), true).unwrap_err();
    assert!(e.contains("missing: features.1.bn.running_mean"), "{e}");
    assert!(
        e.contains("pretrained_strict: false"),
        "the error names the way out: {e}"
    );
    // PyTorch's strict=False: loads what is there and lists what is not.
    let rep = crate::nets::load_pretrained(&net, &good, &cnn(8, 3), false).unwrap();
    assert_eq!(rep.missing, vec!["features.1.bn.running_mean".to_string()]);
    assert_eq!(
        rep.skipped.len(),
        1,
        "the head is still reported as skipped: {:?}",
        rep.skipped
    );
    // Wrong shapes stay an error even then.
    let e = crate::nets::load_pretrained(&net, &wrong_file(&tmp), &cnn(8, 3), false).unwrap_err();
    assert!(e.contains("wrong shape"), "{e}");
    // Another model's file (no name in common) is an error, not a silent fresh start.
    let other = tmp.path().join("other.safetensors");
    let t = vec![(
        "blocks.0.conv.weight".to_string(),
        tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
    )];
    crate::nets::save_tensors(&t, &other).unwrap();
    for strict in [true, false] {
        let e = crate::nets::load_pretrained(&net, &other, &cnn(8, 3), strict).unwrap_err();
        assert!(e.contains("none of its 1 tensors"), "{e}");
    }
    // Not a safetensors file at all.
    std::fs::write(&other, b"PK\x03\x04 a zip, say").unwrap();
    let e = crate::nets::load_pretrained(&net, &other, &cnn(8, 3), true).unwrap_err();
    assert!(e.contains("as a .safetensors weights file"), "{e}");
}

fn wrong_file(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("small.safetensors")
}

#[test]
fn nan_loss_names_epoch_and_batch() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let sp = spec("Train", train_params(2), Some(0), tmp.path(), "nan", train_inputs(&s));
    let hooks = Hooks {
        after_epoch: None,
        poison: Some((2, 2)),
    };
    let e = run_spec(&sp, &hooks).unwrap_err();
    assert!(
        e.starts_with("loss became NaN at epoch 2 batch 2 of fold 0 (lr "),
        "{e}"
    );
}

#[test]
fn a_fold_without_fakes_in_training_is_an_error() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    // every fake is in fold 0, so fold 0's training set is all real
    let s = testdata::make(tmp.path(), 24, 32, 2, Normalize::ImageNet, Some(0));
    let sp = spec("Train", train_params(1), Some(0), tmp.path(), "t", train_inputs(&s));
    let e = run_spec(&sp, &Hooks::default()).unwrap_err();
    assert!(e.starts_with("fold 0 has no fake items in its training set"), "{e}");
    // and a fold that does not exist
    let sp = spec("Train", train_params(1), Some(5), tmp.path(), "t5", train_inputs(&s));
    let e = run_spec(&sp, &Hooks::default()).unwrap_err();
    assert!(e.contains("fold 5 does not exist"), "{e}");
}

#[test]
fn retrain_up_weights_hard_negatives() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let tr = spec("Train", train_params(1), Some(0), tmp.path(), "train", train_inputs(&s));
    run_spec(&tr, &Hooks::default()).unwrap();
    // hard negatives: three real training items of fold 0, one row of fold 1 (not ours)
    let reals: Vec<&str> = s
        .rows
        .iter()
        .filter(|f| f.role(0) == Role::Train && f.label == 0)
        .map(|f| f.item.as_str())
        .take(3)
        .collect();
    let other = s
        .rows
        .iter()
        .find(|f| f.role(1) == Role::Train && f.label == 0)
        .unwrap();
    let hn = tmp.path().join("mine");
    std::fs::create_dir_all(&hn).unwrap();
    let mut csv = String::from("item,fold,score\n");
    for r in &reals {
        csv.push_str(&format!("{r},0,0.9\n"));
    }
    csv.push_str(&format!("{},1,0.8\n", other.item));
    std::fs::write(hn.join("hard_negatives.csv"), csv).unwrap();
    let run = |name: &str, weight: f64| {
        let mut inputs = train_inputs(&s);
        inputs.push(input("models", "train@fold0", Some(0), &tr.out_dir));
        inputs.push(input("hard_negatives", "mine", None, &hn));
        let params = json!({"models": "train", "hard_negatives": "mine", "data": "preprocess", "split": "split",
            "weight": weight, "epochs": 1, "lr": 1e-3, "seed": 3, "device": "Cpu"});
        let sp = spec("Retrain", params, Some(0), tmp.path(), name, inputs);
        run_spec(&sp, &Hooks::default()).unwrap();
        sp
    };
    let heavy = run("heavy", 50.0);
    let plain = run("plain", 1.0);
    for f in ["model.safetensors", "history.csv", "scores.csv", "meta.json"] {
        assert!(heavy.out_dir.join(f).is_file(), "{f}");
    }
    let m = json_of(&heavy.out_dir.join("meta.json"));
    assert_eq!(m["kind"], "Retrain");
    assert_eq!(m["hard_negatives"]["up_weighted"], json!(3));
    assert_eq!(
        m["train_params"]["batch_size"],
        json!(8),
        "batch size comes from the Train meta"
    );
    assert_eq!(m["train_params"]["schedule"], json!("Constant"));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        bytes(&heavy.out_dir) != bytes(&tr.out_dir),
        "fine-tuning changed nothing"
    );
    assert!(
        bytes(&heavy.out_dir) != bytes(&plain.out_dir),
        "the weight of hard negatives had no effect"
    );
    // up-weighted reals are pushed toward "real" more than without up-weighting
    let logit = |d: &Path, item: &str| -> f64 {
        read_csv(&d.join("scores.csv"))
            .iter()
            .find(|r| r["item"] == item)
            .unwrap()["logit"]
            .parse()
            .unwrap()
    };
    let mean = |d: &Path| reals.iter().map(|r| logit(d, r)).sum::<f64>() / reals.len() as f64;
    assert!(
        mean(&heavy.out_dir) < mean(&plain.out_dir),
        "{} vs {}",
        mean(&heavy.out_dir),
        mean(&plain.out_dir)
    );
}

/// A SimpleCnn whose logit is `bias` for any input, as a Train output dir.
fn constant_model(dir: &Path, fold: u32, bias: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let model = cnn(4, 2);
    let net = crate::nets::build(&model, tch::Device::Cpu, 32).unwrap();
    tch::no_grad(|| {
        let v = net.vs.variables();
        let _ = v["fc.weight"].shallow_clone().fill_(0.0);
        let _ = v["fc.bias"].shallow_clone().fill_(bias);
    });
    crate::nets::save(&net.vs, &dir.join("model.safetensors"), Some(0)).unwrap();
    let mut tp: flow_stages::model::Train = serde_json::from_value(train_params(1)).unwrap();
    tp.model = model.clone();
    flow_stages::ports::models::ModelMeta {
        kind: "Train".into(),
        fold,
        model_name: crate::nets::model_name(&model),
        model,
        params: serde_json::Value::Null,
        train_params: tp,
        image_size: 32,
        normalize: crate::data::Norm::unit(),
        counts: Default::default(),
        epochs: 1,
        epochs_run: 1,
        stopped_early: false,
        best_epoch: 1,
        best_val_auc: None,
        best_val_loss: None,
        selection: "train_loss".into(),
        selection_note: None,
        balance: "none".into(),
        optimizer_steps: 0,
        device: "cpu".into(),
        mixed_precision: false,
        libtorch: crate::libtorch_version().into(),
        pretrained: None,
        seed: 0,
        extra: Default::default(),
    }
    .write(dir)
    .unwrap();
}

#[test]
fn ensemble_scores_each_item_with_its_own_folds_models() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 30, 32, 3, Normalize::ImageNet, None);
    let sig = crate::util::sigmoid;
    // member a: fold k's model says logit k - 1; member b: 2 - k.
    let mut inputs = train_inputs(&s);
    for k in 0..3u32 {
        let da = tmp.path().join(format!("a{k}"));
        let db = tmp.path().join(format!("b{k}"));
        constant_model(&da, k, k as f64 - 1.0);
        constant_model(&db, k, 2.0 - k as f64);
        inputs.push(input("models", &format!("a@fold{k}"), Some(k), &da));
        inputs.push(input("models", &format!("b@fold{k}"), Some(k), &db));
    }
    // calibration: member b has its own temperatures (2), others use the fold's first (4)
    let cal = tmp.path().join("cal");
    std::fs::create_dir_all(&cal).unwrap();
    let folds: Vec<serde_json::Value> = (0..3)
        .flat_map(|k| {
            [
                json!({"fold": k, "from": format!("train@fold{k}"), "temperature": 4.0}),
                json!({"fold": k, "from": format!("b@fold{k}"), "temperature": 2.0}),
            ]
        })
        .collect();
    std::fs::write(cal.join("calibration.json"), json!({"folds": folds}).to_string()).unwrap();
    let mut with_cal = inputs.clone();
    with_cal.push(input("calibration", "calibrate", None, &cal));

    let params = json!({"models": ["b", "a"], "data": "preprocess", "split": "split",
        "calibration": "calibrate", "tta": ["Identity", "HFlip"], "aggregate": "CalibratedMean", "device": "Cpu"});
    let sp = spec("EnsembleInfer", params, None, tmp.path(), "infer", with_cal.clone());
    run_spec(&sp, &Hooks::default()).unwrap();
    let rows = read_csv(&sp.out_dir.join("predictions.csv"));
    assert_eq!(rows.len(), 30);
    let mut r = csv::Reader::from_path(sp.out_dir.join("predictions.csv")).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["item", "group", "label", "source", "fold", "score", "b", "a"]
    );
    let items: Vec<&String> = rows.iter().map(|r| &r["item"]).collect();
    let mut sorted = items.clone();
    sorted.sort();
    assert_eq!(items, sorted);
    for row in &rows {
        let f = s.rows.iter().find(|f| f.item == row["item"]).unwrap();
        assert_eq!(row["fold"], f.fold.to_string());
        assert_eq!(row["group"], f.group);
        let k = f.fold as f64;
        let pa = sig((k - 1.0) / 4.0);
        let pb = sig((2.0 - k) / 2.0);
        let got = |c: &str| row[c].parse::<f64>().unwrap();
        assert!(
            (got("a") - pa).abs() < 1e-6,
            "item {} fold {k}: a {} vs {pa}",
            row["item"],
            got("a")
        );
        assert!(
            (got("b") - pb).abs() < 1e-6,
            "item {} fold {k}: b {} vs {pb}",
            row["item"],
            got("b")
        );
        assert!((got("score") - (pa + pb) / 2.0).abs() < 1e-6);
    }

    // CalibratedMean without calibration is an error; Max without it uses T = 1.
    let params = json!({"models": ["a", "b"], "data": "preprocess", "split": "split", "aggregate": "CalibratedMean", "device": "Cpu"});
    let sp = spec("EnsembleInfer", params, None, tmp.path(), "infer2", inputs.clone());
    assert!(run_spec(&sp, &Hooks::default())
        .unwrap_err()
        .contains("CalibratedMean needs a `calibration` input"));

    // Cascade: a fast model sure of "real" on fold 0 (logit -5) and of "fake" elsewhere.
    let mut casc = inputs.clone();
    for k in 0..3u32 {
        let d = tmp.path().join(format!("fast{k}"));
        constant_model(&d, k, if k == 0 { -5.0 } else { 5.0 });
        casc.push(input("fast", &format!("fast@fold{k}"), Some(k), &d));
    }
    let params = json!({"models": ["a", "b"], "data": "preprocess", "split": "split", "aggregate": "Max",
        "cascade": {"fast": "fast", "threshold": 0.5}, "device": "Cpu"});
    let sp = spec("EnsembleInfer", params, None, tmp.path(), "infer3", casc);
    run_spec(&sp, &Hooks::default()).unwrap();
    let rows = read_csv(&sp.out_dir.join("predictions.csv"));
    let n0 = s.rows.iter().filter(|f| f.fold == 0).count();
    for row in &rows {
        let score = row["score"].parse::<f64>().unwrap();
        let k = row["fold"].parse::<f64>().unwrap();
        if row["fold"] == "0" {
            assert!((score - sig(-5.0)).abs() < 1e-6);
            assert_eq!(row["a"], "");
        } else {
            assert!((score - sig(k - 1.0).max(sig(2.0 - k))).abs() < 1e-6);
        }
    }
    let info = json_of(&sp.out_dir.join("infer.json"));
    assert_eq!(info["counts"]["fast_only"], json!(n0));
    assert_eq!(info["counts"]["ensemble"], json!(30 - n0));

    // A member lacking a fold's model cannot score that fold out-of-fold.
    let partial: Vec<_> = inputs.iter().filter(|i| i.from != "a@fold2").cloned().collect();
    let params = json!({"models": ["a", "b"], "data": "preprocess", "split": "split", "device": "Cpu"});
    let sp = spec("EnsembleInfer", params, None, tmp.path(), "infer4", partial);
    let e = run_spec(&sp, &Hooks::default()).unwrap_err();
    assert!(e.contains("member `a` has no model for fold(s) 2"), "{e}");
}

#[test]
fn ensemble_uses_trained_models_out_of_fold() {
    // Train two folds for real, then check the ensemble's member column equals each fold
    // model's own test-set score from its scores.csv (so item i used model fold(i)).
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 32, 32, 2, Normalize::ImageNet, None);
    let mut inputs = train_inputs(&s);
    let mut scores: HashMap<String, f64> = HashMap::new();
    let mut other: HashMap<String, f64> = HashMap::new();
    for k in 0..2u32 {
        let sp = spec(
            "Train",
            train_params(1),
            Some(k),
            tmp.path(),
            &format!("t{k}"),
            train_inputs(&s),
        );
        run_spec(&sp, &Hooks::default()).unwrap();
        for r in read_csv(&sp.out_dir.join("scores.csv")) {
            let z: f64 = r["logit"].parse().unwrap();
            if r["role"] == "test" {
                scores.insert(r["item"].clone(), crate::util::sigmoid(z));
            } else {
                other.insert(r["item"].clone(), crate::util::sigmoid(z));
            }
        }
        inputs.push(input("models", &format!("train@fold{k}"), Some(k), &sp.out_dir));
    }
    let params = json!({"models": ["train"], "data": "preprocess", "split": "split", "device": "Cpu"});
    let sp = spec("EnsembleInfer", params, None, tmp.path(), "inf", inputs);
    run_spec(&sp, &Hooks::default()).unwrap();
    let mut differs = 0;
    for row in read_csv(&sp.out_dir.join("predictions.csv")) {
        let p: f64 = row["train"].parse().unwrap();
        assert!(
            (p - scores[&row["item"]]).abs() < 1e-6,
            "{}: {p} vs {}",
            row["item"],
            scores[&row["item"]]
        );
        if (p - other[&row["item"]]).abs() > 1e-4 {
            differs += 1;
        }
    }
    assert!(
        differs > 0,
        "the two fold models agree everywhere: the test cannot tell them apart"
    );
}

/// A small conv net with batch norm, scripted by the venv's torch (`torch.jit.script`).
const SCRIPTED_NET: &str = r#"
import sys, torch, torch.nn as nn
torch.manual_seed(0)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 1)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).amax(dim=(2, 3)))
torch.jit.save(torch.jit.script(Net()), sys.argv[1])
"#;

/// Mean of the trained module's first batch-norm running mean, read back by PyTorch.
const READ_BUFFER: &str = r#"
import sys, torch
m = torch.jit.load(sys.argv[1])
b = dict(m.named_buffers())
print(float(b["features.1.running_mean"].abs().sum()), int(b["features.1.num_batches_tracked"]))
"#;

#[test]
fn a_torchscript_module_trains_deterministically_and_infers_like_its_scores() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let module = tmp.path().join("my_net.pt");
    testdata::run_python(SCRIPTED_NET, &[module.as_os_str()]);
    let mut params = train_params(2);
    params["model"] = json!({"TorchScript": {"path": "models/my_net.pt"}});
    let with_module = |name: &str, fold: u32| {
        let mut sp = spec("Train", params.clone(), Some(fold), tmp.path(), name, train_inputs(&s));
        sp.paths.push(flow_stages::worker::WorkerPath {
            port: "module".into(),
            rel: "models/my_net.pt".into(),
            abs: module.clone(),
        });
        sp
    };
    let a = with_module("ts_a", 0);
    run_spec(&a, &Hooks::default()).unwrap();
    // PyTorch names, parameters only; the whole trained module beside them.
    let t = crate::nets::read_tensors(&a.out_dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fc.bias",
            "fc.weight",
            "features.0.weight",
            "features.1.bias",
            "features.1.weight",
            "features.4.bias",
            "features.4.weight"
        ]
    );
    let trained = a.out_dir.join("module.pt");
    let buf = testdata::run_python(READ_BUFFER, &[trained.as_os_str()]);
    let (mean, batches) = buf.trim().split_once(' ').unwrap();
    assert!(
        mean.parse::<f64>().unwrap() > 0.0,
        "batch-norm statistics were not trained: {buf}"
    );
    assert!(batches.parse::<u64>().unwrap() > 0, "{buf}");
    let h = read_csv(&a.out_dir.join("history.csv"));
    assert_eq!(h.len(), 2);
    // Deterministic: a second run gives the same weights.
    let b = with_module("ts_b", 0);
    run_spec(&b, &Hooks::default()).unwrap();
    let bytes = |sp: &flow_stages::worker::WorkerSpec| std::fs::read(sp.out_dir.join("model.safetensors")).unwrap();
    assert!(
        bytes(&a) == bytes(&b),
        "two runs of the same TorchScript training differ"
    );
    let meta = json_of(&a.out_dir.join("meta.json"));
    assert_eq!(meta["model"]["TorchScript"]["path"], "models/my_net.pt");

    // EnsembleInfer rebuilds it from module.pt (buffers included): its probabilities are
    // the training run's test-set scores.
    let c = with_module("ts_c", 1);
    run_spec(&c, &Hooks::default()).unwrap();
    let mut inputs = train_inputs(&s);
    inputs.push(input("models", "train@fold0", Some(0), &a.out_dir));
    inputs.push(input("models", "train@fold1", Some(1), &c.out_dir));
    let ip = json!({"models": ["train"], "data": "preprocess", "split": "split", "device": "Cpu"});
    let sp = spec("EnsembleInfer", ip, None, tmp.path(), "ts_inf", inputs);
    run_spec(&sp, &Hooks::default()).unwrap();
    let scores: HashMap<String, f64> = [&a, &c]
        .iter()
        .flat_map(|t| read_csv(&t.out_dir.join("scores.csv")))
        .filter(|r| r["role"] == "test")
        .map(|r| (r["item"].clone(), crate::util::sigmoid(r["logit"].parse().unwrap())))
        .collect();
    let rows = read_csv(&sp.out_dir.join("predictions.csv"));
    let mut compared = 0;
    for row in rows.iter().filter(|r| scores.contains_key(&r["item"])) {
        let p: f64 = row["train"].parse().unwrap();
        assert!((p - scores[&row["item"]]).abs() < 1e-6, "{}: {p}", row["item"]);
        compared += 1;
    }
    assert_eq!(compared, 40, "every item is some fold's test item");
}

#[test]
fn a_broken_torchscript_module_is_a_clear_error() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"not a module").unwrap();
    let e = crate::nets::load_torchscript(tmp.path(), tch::Device::Cpu, 32)
        .err()
        .unwrap();
    assert!(e.contains("is a directory"), "{e}");
    let e = crate::nets::load_torchscript(&junk, tch::Device::Cpu, 32)
        .err()
        .unwrap();
    assert!(e.contains("cannot load") && e.contains("torch.jit.save"), "{e}");
    // Two logits per image is not a binary detector.
    let two = tmp.path().join("two.pt");
    testdata::run_python(
        "import sys, torch\nm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))\nm(torch.zeros(1, 3, 32, 32))\ntorch.jit.save(torch.jit.script(m), sys.argv[1])",
        &[two.as_os_str()],
    );
    let e = crate::nets::load_torchscript(&two, tch::Device::Cpu, 32).err().unwrap();
    assert!(e.contains("[2, 2]") && e.contains("one logit per image"), "{e}");
}

/// A RADAR small enough for the tests: a SimpleCnn backbone, a 16-px spectrum.
fn tiny_radar(extra: serde_json::Value) -> serde_json::Value {
    let mut r =
        json!({"backbone": {"SimpleCnn": {"width": 8, "depth": 3}}, "fft_size": 16, "evidence_dim": 16, "heads": 2});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    json!({ "Radar": r })
}

#[test]
fn radar_trains_with_its_loss_and_reports_its_diagnostics() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
    let mut params = train_params(2);
    params["model"] = tiny_radar(json!({}));
    let sp = spec("Train", params, Some(0), tmp.path(), "radar", train_inputs(&s));
    run_spec(&sp, &Hooks::default()).unwrap();
    let h = read_csv(&sp.out_dir.join("history.csv"));
    assert_eq!(h.len(), 2);
    for r in &h {
        let alpha: f64 = r["gating_alpha"].parse().unwrap();
        assert!(alpha > 0.3 && alpha < 0.7, "α moved far in 2 epochs: {alpha}");
        let delta: f64 = r["val_convergence_delta"].parse().unwrap();
        assert!((0.0..1.0).contains(&delta), "{delta}");
        assert!(!r["val_reasoning_auc"].is_empty());
    }
    let meta = json_of(&sp.out_dir.join("meta.json"));
    let d = &meta["diagnostics"];
    assert!(d["gating_alpha"].is_f64() && d["convergence_delta"].is_f64(), "{meta}");
    assert!(d["reasoning_auc"].is_f64(), "{meta}");
    let t = crate::nets::read_tensors(&sp.out_dir.join("model.safetensors")).unwrap();
    assert!(t.contains_key("gating_logit") && t.contains_key("badm.head.weight") && t.contains_key("aadm.head.weight"));
    assert!(t.contains_key("backbone.features.0.conv.weight"));
    // A plain model's history keeps its five columns.
    let plain = spec("Train", train_params(1), Some(0), tmp.path(), "plain", train_inputs(&s));
    run_spec(&plain, &Hooks::default()).unwrap();
    let mut r = csv::Reader::from_path(plain.out_dir.join("history.csv")).unwrap();
    assert_eq!(r.headers().unwrap().len(), 5);
}

/// The fold-0 weights `params` start from (build_model's seed rule: seed·1000 + fold, seed 7,
/// 32 px) and the weights the run `sp` of them wrote.
fn fresh_and_trained(
    params: serde_json::Value,
    sp: &flow_stages::worker::WorkerSpec,
) -> (HashMap<String, tch::Tensor>, HashMap<String, tch::Tensor>) {
    let p: flow_stages::model::Train = serde_json::from_value(params).unwrap();
    tch::manual_seed(7 * 1000);
    let fresh = crate::nets::build(&p.model, tch::Device::Cpu, 32).unwrap();
    let init = crate::nets::named(&fresh.vs).into_iter().collect();
    (
        init,
        crate::nets::read_tensors(&sp.out_dir.join("model.safetensors")).unwrap(),
    )
}

#[test]
fn freeze_backbone_trains_only_the_modules_around_it() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 32, 32, 2, Normalize::ImageNet, None);
    let mut params = train_params(1);
    params["model"] = tiny_radar(json!({"boundary": false}));
    params["freeze_backbone"] = json!(true);
    let sp = spec("Train", params.clone(), Some(0), tmp.path(), "frozen", train_inputs(&s));
    run_spec(&sp, &Hooks::default()).unwrap();
    let (init, t) = fresh_and_trained(params, &sp);
    let same = |n: &str| t[n].equal(&init[n]);
    assert!(
        same("backbone.features.1.conv.weight"),
        "a frozen backbone weight changed"
    );
    assert!(
        !same("aadm.head.weight") && !same("erm.head.weight"),
        "the modules did not train"
    );
    assert!(
        !t.keys().any(|k| k.starts_with("badm.")),
        "boundary: false builds no BADM"
    );
    let meta = json_of(&sp.out_dir.join("meta.json"));
    // 3 blocks × (conv weight, bn weight, bn bias, running mean, running var).
    assert_eq!(meta["frozen_tensors"], json!(3 * 5), "{meta}");
}

#[test]
fn the_srm_input_filter_trains_any_backbone() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 32, 32, 2, Normalize::ImageNet, None);
    let mut params = train_params(1);
    params["input_filter"] = json!("Srm");
    let sp = spec("Train", params, Some(0), tmp.path(), "srm", train_inputs(&s));
    run_spec(&sp, &Hooks::default()).unwrap();
    let base = spec("Train", train_params(1), Some(0), tmp.path(), "nosrm", train_inputs(&s));
    run_spec(&base, &Hooks::default()).unwrap();
    let logits = |sp: &flow_stages::worker::WorkerSpec| -> Vec<String> {
        read_csv(&sp.out_dir.join("scores.csv"))
            .into_iter()
            .map(|r| r["logit"].clone())
            .collect()
    };
    assert_ne!(logits(&sp), logits(&base), "the filter changed nothing");
    // The filter is fixed: the same variables as without it.
    let names = |sp: &flow_stages::worker::WorkerSpec| {
        let mut v: Vec<String> = crate::nets::read_tensors(&sp.out_dir.join("model.safetensors"))
            .unwrap()
            .into_keys()
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&sp), names(&base));
}

/// A random-init timm `vit_small_patch16_224` (224 px) as flow's pretrained file.
const VIT_224: &str = r#"
import sys, timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[1])
"#;

#[test]
fn a_224_px_vit_checkpoint_loads_at_64_px_and_into_radars_backbone() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("vit.safetensors");
    testdata::run_python(VIT_224, &[w.as_os_str()]);
    let src = crate::nets::read_tensors(&w).unwrap();
    // The plain classifier: everything but the 1000-class head loads; pos_embed resampled.
    let net = crate::nets::build(&Model::VitS16, tch::Device::Cpu, 64).unwrap();
    let rep = crate::nets::load_pretrained(&net, &w, &Model::VitS16, true).unwrap();
    assert_eq!(rep.skipped.len(), 2, "{:?}", rep.skipped);
    assert!(rep.skipped.iter().all(|s| s.starts_with("head.")));
    assert!(rep.unused.is_empty(), "{:?}", rep.unused);
    let pe = &net.vs.variables()["pos_embed"];
    assert_eq!(pe.size(), [1, 17, 384]);
    assert!(
        pe.get(0).get(0).equal(&src["pos_embed"].get(0).get(0)),
        "the CLS position is kept"
    );
    // RADAR on that backbone: the same file fills `backbone.*`; its own modules stay fresh.
    let radar: Model = serde_json::from_value(json!({"Radar": {"fft_size": 32}})).unwrap();
    let net = crate::nets::build(&radar, tch::Device::Cpu, 64).unwrap();
    let rep = crate::nets::load_pretrained(&net, &w, &radar, true).unwrap();
    let backbone = crate::nets::named(&net.vs)
        .iter()
        .filter(|(n, _)| n.starts_with("backbone."))
        .count();
    assert_eq!(rep.loaded, backbone, "every backbone tensor comes from the file");
    assert!(rep.skipped.iter().any(|s| s.starts_with("badm.")) && rep.skipped.iter().any(|s| s == "gating_logit"));
    assert!(rep.unused.iter().all(|s| s.starts_with("head.")), "{:?}", rep.unused);
    let v = net.vs.variables();
    assert!(v["backbone.blocks.3.attn.qkv.weight"].equal(&src["blocks.3.attn.qkv.weight"]));
}

#[test]
fn spotter_trains_its_attention_on_a_frozen_efficientnet() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 24, 32, 2, Normalize::ImageNet, None);
    let mut params = train_params(1);
    params["model"] = json!({"Spotter": {"backbone": "EfficientNetB0"}});
    params["freeze_backbone"] = json!(true);
    let sp = spec(
        "Train",
        params.clone(),
        Some(0),
        tmp.path(),
        "spotter",
        train_inputs(&s),
    );
    run_spec(&sp, &Hooks::default()).unwrap();
    let (init, t) = fresh_and_trained(params, &sp);
    let same = |n: &str| t[n].equal(&init[n]);
    assert!(
        same("backbone.features.4.1.block.0.0.weight"),
        "a frozen backbone weight changed"
    );
    assert!(
        !same("attention.spatial.weight") && !same("classifier.weight"),
        "attention and head did not train"
    );
    assert!(t.contains_key("multiscale.proj.0.weight"));
}

#[test]
fn a_killed_torchscript_run_resumes_with_its_trained_buffers() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let s = testdata::make(tmp.path(), 32, 32, 2, Normalize::ImageNet, None);
    // No validation set: the lowest training loss picks the best epoch, i.e. (as asserted
    // below) the last, whose module the resumed run must have trained from the checkpoint's.
    let mut w = csv::Writer::from_path(s.split.join("folds.csv")).unwrap();
    for r in &s.rows {
        let mut r = r.clone();
        r.val_for = None;
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
    let module = tmp.path().join("my_net.pt");
    testdata::run_python(SCRIPTED_NET, &[module.as_os_str()]);
    let mut params = train_params(3);
    params["model"] = json!({"TorchScript": {"path": "my_net.pt"}});
    let with_module = |name: &str| {
        let mut sp = spec("Train", params.clone(), Some(0), tmp.path(), name, train_inputs(&s));
        sp.paths.push(flow_stages::worker::WorkerPath {
            port: "module".into(),
            rel: "my_net.pt".into(),
            abs: module.clone(),
        });
        sp
    };
    let a = with_module("whole");
    run_spec(&a, &Hooks::default()).unwrap();
    assert_eq!(json_of(&a.out_dir.join("meta.json"))["best_epoch"], 3);
    let b = with_module("killed");
    assert!(run_spec(&b, &kill_after(2)).is_err());
    let (hooks, seen) = record_epochs();
    run_spec(&b, &hooks).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![3], "the rerun resumes after epoch 2");
    let bytes = |sp: &flow_stages::worker::WorkerSpec| std::fs::read(sp.out_dir.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "parameters differ from an uninterrupted run");
    let buffers = |sp: &flow_stages::worker::WorkerSpec| {
        let m = sp.out_dir.join("module.pt");
        testdata::run_python(READ_BUFFER, &[m.as_os_str()])
    };
    assert_eq!(
        buffers(&a),
        buffers(&b),
        "batch-norm statistics differ from an uninterrupted run"
    );
}
