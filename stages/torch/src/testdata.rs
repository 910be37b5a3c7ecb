//! Tiny synthetic inputs for this crate's tests (not for production use): a Preprocess
//! output (`preprocess.json`, `index.csv`, `pixels-000.u8`) and a Split output (`folds.csv`),
//! where fakes carry a visible high-frequency checkerboard a small CNN learns in an epoch.

use std::path::{Path, PathBuf};

use flow_stages::data::preprocess::channel_stats;
use flow_stages::ports::split::FoldRow;
use flow_stages::ports::tensors::{IndexRow, Normalize};
use flow_stages::worker::{WorkerInput, WorkerSpec};

pub struct Synth {
    pub data: PathBuf,
    pub split: PathBuf,
    pub rows: Vec<FoldRow>,
    pub size: usize,
}

/// `n` items of `size` px in `folds` folds: item i has label i % 2, group "g{i/2}" (each
/// real/fake pair its own group) and fold (i / 2) % folds; every 5th item is in the inner
/// validation set of the next fold. `fake_fold`: put every fake in that fold (its training set has no fakes).
pub fn make(root: &Path, n: usize, size: usize, folds: u32, normalize: Normalize, fake_fold: Option<u32>) -> Synth {
    make_in(root, n, size, folds, normalize, fake_fold, [0, 0, size, size])
}

/// [`make`] with the fakes' checkerboard only inside `region` (`[x0, y0, x1, y1]`, pixels):
/// evidence in a known place, for the explanation tests.
pub fn make_in(
    root: &Path,
    n: usize,
    size: usize,
    folds: u32,
    normalize: Normalize,
    fake_fold: Option<u32>,
    region: [usize; 4],
) -> Synth {
    let data = root.join("data");
    let split = root.join("split");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&split).unwrap();
    let mut pixels = Vec::with_capacity(n * size * size * 3);
    let mut index = Vec::new();
    let mut rows = Vec::new();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    for i in 0..n {
        let label = (i % 2) as u8;
        let (br, bg, bb) = (0.3 + 0.4 * rnd(), 0.3 + 0.4 * rnd(), 0.3 + 0.4 * rnd());
        let mut px = Vec::with_capacity(size * size * 3);
        for y in 0..size {
            for x in 0..size {
                let smooth = 0.15 * ((x as f32 / size as f32 * std::f32::consts::TAU + i as f32).sin());
                let inside = (region[0]..region[2]).contains(&x) && (region[1]..region[3]).contains(&y);
                let check = if label == 1 && inside && (x + y) % 2 == 0 {
                    0.25
                } else {
                    0.0
                };
                for b in [br, bg, bb] {
                    let v = (b + smooth + check + 0.05 * (rnd() - 0.5)).clamp(0.0, 1.0);
                    px.push((v * 255.0).round() as u8);
                }
            }
        }
        let st = channel_stats(&px);
        pixels.extend_from_slice(&px);
        let item = format!("item{i:03}");
        let source = if label == 1 { "checker" } else { "real" }.to_string();
        let group = format!("g{:03}", i / 2);
        index.push(IndexRow {
            row: i,
            shard: 0,
            item: item.clone(),
            label,
            source: source.clone(),
            group: group.clone(),
            hash: format!("{i:064x}"),
            mean_r: st[0],
            mean_g: st[1],
            mean_b: st[2],
            sq_r: st[3],
            sq_g: st[4],
            sq_b: st[5],
        });
        let fold = match fake_fold {
            Some(f) if label == 1 => f,
            _ => (i / 2) as u32 % folds,
        };
        let val_for = if i % 5 == 0 { Some((fold + 1) % folds) } else { None };
        rows.push(FoldRow {
            item,
            group,
            label,
            source,
            fold,
            val_for,
            holdout: 0,
        });
    }
    std::fs::write(data.join("pixels-000.u8"), &pixels).unwrap();
    let mut w = csv::Writer::from_path(data.join("index.csv")).unwrap();
    for r in &index {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
    let info = serde_json::json!({
        "size": size, "crop": "Center", "filter": "CatmullRom", "normalize": normalize, "count": n,
        "rows_per_shard": n, "shards": ["pixels-000.u8"], "layout": "u8 [rows, size, size, 3] (HWC, RGB)",
    });
    std::fs::write(
        data.join("preprocess.json"),
        serde_json::to_string_pretty(&info).unwrap(),
    )
    .unwrap();
    let mut w = csv::Writer::from_path(split.join("folds.csv")).unwrap();
    for r in &rows {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
    Synth {
        data,
        split,
        rows,
        size,
    }
}

pub fn input(port: &str, from: &str, fold: Option<u32>, dir: &Path) -> WorkerInput {
    WorkerInput {
        port: port.into(),
        from: from.into(),
        fold,
        dir: dir.to_path_buf(),
        meta: serde_json::Value::Null,
    }
}

/// A spec for `kind` writing into `root/<name>/{out,work,resume}`.
pub fn spec(
    kind: &str,
    params: serde_json::Value,
    fold: Option<u32>,
    root: &Path,
    name: &str,
    inputs: Vec<WorkerInput>,
) -> WorkerSpec {
    let base = root.join(name);
    for d in ["out", "work"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    WorkerSpec {
        kind: kind.into(),
        params,
        instance: match fold {
            Some(k) => format!("{name}@fold{k}"),
            None => name.into(),
        },
        fold,
        out_dir: base.join("out"),
        work_dir: base.join("work"),
        resume_dir: base.join("resume"),
        workspace: root.to_path_buf(),
        inputs,
        paths: vec![],
        threads: 1,
        gpu: None,
    }
}

/// Train params for a small SimpleCnn, no augmentation but hflip.
pub fn train_params(epochs: u32) -> serde_json::Value {
    serde_json::json!({
        "data": "preprocess", "split": "split",
        "model": {"SimpleCnn": {"width": 8, "depth": 3}},
        "epochs": epochs, "lr": 3e-3, "batch_size": 8, "seed": 7, "device": "Cpu",
    })
}

/// The Python the tests compare against (`FLOW_PYTHON`, else the checkout's `.venv`), with
/// torch (and, for the weight-name tests, torchvision and timm) installed by
/// `scripts/setup --test-deps`. A missing one fails the test: it must not pass unchecked.
pub fn python() -> PathBuf {
    let p = std::env::var_os("FLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"));
    assert!(
        p.exists(),
        "no Python at {} (run scripts/setup --test-deps, or set FLOW_PYTHON)",
        p.display()
    );
    p
}

/// Runs `code` in [`python`] with `args`; panics with its stderr when it fails. The code
/// runs from a file (`torch.jit.script` reads its source).
pub fn run_python(code: &str, args: &[&std::ffi::OsStr]) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = std::env::temp_dir().join(format!("flow-test-{}-{n}.py", std::process::id()));
    std::fs::write(&script, code).expect("write script");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("cannot run python");
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "python failed (scripts/setup --test-deps installs what the tests need):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
