//! Ingest / Split / Preprocess through the `flow` binary: every layout, every bad-data case,
//! the leakage check, determinism, nested subsampling, early cutoff on a renamed dataset.

use crate::common;
use common::{has, rows, set, Ws};
use std::collections::{BTreeMap, BTreeSet};

fn img(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) as u8;
        image::Rgb([v, v.wrapping_mul(3).wrapping_add(seed as u8), 255 - v])
    })
}

fn write_img(ws: &Ws, rel: &str, seed: u32) {
    let p = ws.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    img(24, 20, seed).save(&p).unwrap();
}

fn pipeline(ingest: &str, extra: &str) -> String {
    format!(
        r#"Pipeline(name: "d", defaults: (seed: 1), stages: {{
            "ingest": {ingest},
            {extra}
        }})"#
    )
}

/// A small ImageFolder dataset: 6 identities, each a real and a fake (two sources).
fn image_folder(ws: &Ws) {
    for i in 0..6u32 {
        write_img(ws, &format!("data/real/img_{i:03}.png"), i);
        let src = if i % 2 == 0 { "gan" } else { "swap" };
        write_img(ws, &format!("data/fake/{src}/img_{i:03}_{src}.jpg"), 100 + i);
    }
}

#[test]
fn image_folder_layout() {
    let ws = Ws::new();
    image_folder(&ws);
    ws.write(
        "p.ron",
        &pipeline(r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#, ""),
    );
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    assert_eq!(m.len(), 12);
    let real = m.iter().find(|r| r["path"] == "real/img_003.png").unwrap();
    assert_eq!(
        (real["label"].as_str(), real["source"].as_str(), real["group"].as_str()),
        ("0", "real", "img_003")
    );
    assert_eq!(
        (real["width"].as_str(), real["height"].as_str(), real["format"].as_str()),
        ("24", "20", "png")
    );
    let fake = m.iter().find(|r| r["path"] == "fake/swap/img_003_swap.jpg").unwrap();
    assert_eq!(
        (
            fake["label"].as_str(),
            fake["source"].as_str(),
            fake["group"].as_str(),
            fake["format"].as_str()
        ),
        ("1", "swap", "img_003", "jpeg")
    );
    assert_eq!(real["hash"].len(), 64);
}

#[test]
fn presplit_layout_and_predefined_split() {
    let ws = Ws::new();
    for (s, (split, n)) in [("train", 4u32), ("val", 2), ("test", 2)].into_iter().enumerate() {
        for i in 0..n {
            let seed = s as u32 * 10 + i;
            write_img(&ws, &format!("kaggle/{split}/real/{split}_{i}.jpg"), seed);
            write_img(&ws, &format!("kaggle/{split}/fake/{split}_{i}_f.jpg"), 50 + seed);
        }
    }
    ws.write(
        "p.ron",
        &pipeline(
            r#"Ingest(source: Folder(root: "kaggle", layout: PreSplit))"#,
            r#""split": Split(dataset: "ingest", mode: Predefined),"#,
        ),
    );
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    assert_eq!(m.len(), 16);
    assert!(
        m.iter().all(|r| r["path"].starts_with(&r["split"])),
        "split column from the folder"
    );
    let f = rows(&ws, "out/d/split/folds.csv");
    for r in &f {
        let split = if r["item"].starts_with("test") {
            "test"
        } else if r["item"].starts_with("val") {
            "val"
        } else {
            "train"
        };
        match split {
            "test" => assert_eq!(r["fold"], "0"),
            "val" => assert_eq!((r["fold"].as_str(), r["val_for"].as_str()), ("1", "0")),
            _ => assert_eq!((r["fold"].as_str(), r["val_for"].as_str()), ("1", "")),
        }
    }
}

#[test]
fn manifest_layout_with_group_column() {
    let ws = Ws::new();
    write_img(&ws, "ds/a.png", 1);
    write_img(&ws, "ds/b.png", 2);
    write_img(&ws, "ds/sub/c.png", 3);
    write_img(&ws, "ds/sub/d.png", 4);
    ws.write(
        "ds/labels.csv",
        "path,label,source,group\na.png,real,cam,p1\nb.png,fake,gan,p1\nsub/c.png,0,,p2\nsub/d.png,1,gan,p2\n",
    );
    ws.write(
        "p.ron",
        &pipeline(
            r#"Ingest(source: Folder(root: "ds", layout: Manifest("labels.csv")), group_by: Column)"#,
            "",
        ),
    );
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    let got: Vec<(String, String, String, String)> = m
        .iter()
        .map(|r| {
            (
                r["path"].clone(),
                r["label"].clone(),
                r["source"].clone(),
                r["group"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a.png".into(), "0".into(), "cam".into(), "p1".into()),
            ("b.png".into(), "1".into(), "gan".into(), "p1".into()),
            ("sub/c.png".into(), "0".into(), "real".into(), "p2".into()),
            ("sub/d.png".into(), "1".into(), "gan".into(), "p2".into()),
        ]
    );
}

#[test]
fn bad_data_is_reported_by_path_and_skippable() {
    let ws = Ws::new();
    image_folder(&ws);
    ws.write("data/real/empty.png", "");
    let good = std::fs::read(ws.path().join("data/real/img_000.png")).unwrap();
    std::fs::write(ws.path().join("data/real/truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(
        ws.path().join("data/fake/gan/garbage.png"),
        b"this is not an image at all",
    )
    .unwrap();
    ws.write("data/real/notes.txt", "hello");
    // The same bytes under both labels: a leak.
    std::fs::copy(
        ws.path().join("data/real/img_001.png"),
        ws.path().join("data/fake/swap/copy_of_real.png"),
    )
    .unwrap();
    ws.write(
        "p.ron",
        &pipeline(r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#, ""),
    );
    let out = ws.flow(&["run", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = v["failed"][0]["error"].as_str().unwrap();
    assert!(err.starts_with("6 bad files in dataset `data`"), "{err}");
    for (path, what) in [
        ("data/real/empty.png", "empty file"),
        ("data/real/truncated.png", ""),
        ("data/fake/gan/garbage.png", ""),
        ("data/real/notes.txt", "unknown extension"),
        ("data/fake/swap/copy_of_real.png", "under the other label"),
        ("data/real/img_001.png", "under the other label"),
    ] {
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with(path))
            .unwrap_or_else(|| panic!("{path} not reported:\n{err}"));
        assert!(line.contains(what), "{line}");
    }
    // Skip: the run goes on, the bad files are listed in report.json.
    ws.write(
        "p.ron",
        &pipeline(
            r#"Ingest(source: Folder(root: "data", layout: ImageFolder), on_bad_image: Skip)"#,
            "",
        ),
    );
    ws.run("p.ron", 0);
    let report: serde_json::Value = serde_json::from_str(&ws.read("out/d/ingest/report.json")).unwrap();
    assert_eq!(report["skipped"].as_array().unwrap().len(), 6, "{report}");
    assert_eq!(report["items"], 11);
    assert!(!ws.read("out/d/ingest/manifest.csv").contains("copy_of_real"));
}

#[test]
fn an_empty_class_fails() {
    let ws = Ws::new();
    write_img(&ws, "data/real/a1.png", 1);
    write_img(&ws, "data/real/a2.png", 2);
    ws.write(
        "p.ron",
        &pipeline(r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#, ""),
    );
    let out = ws.flow(&["run", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["failed"][0]["error"].as_str().unwrap().contains("no fake images"),
        "{v}"
    );
}

#[test]
fn identical_files_under_one_label_become_one_group() {
    let ws = Ws::new();
    image_folder(&ws);
    std::fs::copy(
        ws.path().join("data/real/img_002.png"),
        ws.path().join("data/real/other_999.png"),
    )
    .unwrap();
    ws.write(
        "p.ron",
        &pipeline(r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#, ""),
    );
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    let g = |p: &str| m.iter().find(|r| r["path"] == p).unwrap()["group"].clone();
    assert_eq!(g("real/other_999.png"), g("real/img_002.png"));
}

fn demo_split(count: usize, extra: &str) -> String {
    pipeline(
        &format!("Ingest(source: Demo(count: {count}, size: 16, seed: 3))"),
        &format!(r#""split": Split(dataset: "ingest", folds: 5, val_ratio: 0.1{extra}),"#),
    )
}

#[test]
fn folds_do_not_leak_and_are_balanced() {
    let ws = Ws::new();
    ws.write("p.ron", &demo_split(200, r#", holdout: Holdout(sources: ["inpaint"])"#));
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    let f = rows(&ws, "out/d/split/folds.csv");
    assert_eq!(f.len(), 200);
    let hash: BTreeMap<&str, &str> = m.iter().map(|r| (r["item"].as_str(), r["hash"].as_str())).collect();
    let mut group_folds: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut hash_folds: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &f {
        group_folds.entry(&r["group"]).or_default().insert(&r["fold"]);
        hash_folds
            .entry(hash[r["item"].as_str()])
            .or_default()
            .insert(&r["fold"]);
    }
    assert!(group_folds.values().all(|s| s.len() == 1), "a group is in two folds");
    assert!(
        hash_folds.values().all(|s| s.len() == 1),
        "the same content is in two folds"
    );
    for k in 0..5 {
        let k = k.to_string();
        let test: Vec<_> = f.iter().filter(|r| r["fold"] == k).collect();
        let val: Vec<_> = f.iter().filter(|r| r["val_for"] == k).collect();
        // Stratified: 20 reals and 20 fakes per fold, within one item.
        let reals = test.iter().filter(|r| r["label"] == "0").count() as i64;
        assert!(
            (reals - 20).abs() <= 1 && (test.len() as i64 - 40).abs() <= 2,
            "fold {k}: {reals} reals of {}",
            test.len()
        );
        // Inner validation is outside the test fold, never held out, and shares no group with training.
        assert!(!val.is_empty());
        assert!(val.iter().all(|r| r["fold"] != k && r["holdout"] == "0"));
        let val_groups: BTreeSet<&str> = val.iter().map(|r| r["group"].as_str()).collect();
        let train_groups: BTreeSet<&str> = f
            .iter()
            .filter(|r| r["fold"] != k && r["val_for"] != k && r["holdout"] == "0")
            .map(|r| r["group"].as_str())
            .collect();
        assert!(
            val_groups.is_disjoint(&train_groups),
            "fold {k}: a group in both val and train"
        );
        // The held-out source is evaluated in every fold but never trained on.
        assert!(test.iter().any(|r| r["source"] == "inpaint"));
    }
    assert!(f
        .iter()
        .filter(|r| r["source"] == "inpaint")
        .all(|r| r["holdout"] == "1"));
    let summary: serde_json::Value = serde_json::from_str(&ws.read("out/d/split/split.json")).unwrap();
    assert_eq!(summary["leakage"]["groups_across_folds"], 0);
}

#[test]
fn splits_are_deterministic_across_workspaces() {
    let a = Ws::new();
    let b = Ws::new();
    a.write("p.ron", &demo_split(100, ""));
    b.write(
        "p.ron",
        &demo_split(100, "")
            .replace("name: \"d\"", "name: \"other\"")
            .replace("\"d\"", "\"other\""),
    );
    a.run("p.ron", 0);
    let out = b.cmd(&["run", "--json", "-j", "1", "p.ron"]).output().unwrap();
    assert!(out.status.success());
    let fa = std::fs::read(a.path().join("out/d/split/folds.csv")).unwrap();
    let name = if b.path().join("out/other").exists() {
        "other"
    } else {
        "d"
    };
    let fb = std::fs::read(b.path().join(format!("out/{name}/split/folds.csv"))).unwrap();
    assert_eq!(fa, fb);
    // A different seed gives a different assignment.
    a.write("p.ron", &demo_split(100, ", seed: 99"));
    a.run("p.ron", 0);
    assert_ne!(std::fs::read(a.path().join("out/d/split/folds.csv")).unwrap(), fa);
}

#[test]
fn subsamples_are_nested() {
    let ws = Ws::new();
    let mut sets = Vec::new();
    for frac in ["0.2", "0.5", "1.0"] {
        ws.write("p.ron", &demo_split(200, &format!(", subsample: {frac}")));
        ws.run("p.ron", 0);
        let f = rows(&ws, "out/d/split/folds.csv");
        let items: BTreeSet<String> = f.iter().map(|r| r["item"].clone()).collect();
        let reals = f.iter().filter(|r| r["label"] == "0").count();
        assert_eq!(reals * 2, f.len(), "stratified: as many reals as fakes");
        sets.push(items);
    }
    // Rounded per stratum (3 strata of ~33 groups): within a few items of the fraction.
    assert!(
        (sets[0].len() as i64 - 40).abs() <= 4 && (sets[1].len() as i64 - 100).abs() <= 4,
        "{} {}",
        sets[0].len(),
        sets[1].len()
    );
    assert_eq!(sets[2].len(), 200);
    assert!(sets[0].is_subset(&sets[1]) && sets[1].is_subset(&sets[2]));
}

#[test]
fn split_errors_are_clear() {
    let ws = Ws::new();
    ws.write("p.ron", &demo_split(8, ""));
    let out = ws.flow(&["run", "--json", "p.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has(&v["failed"][0]["error"], "4 groups cannot fill 5 folds"), "{v}");
    ws.write(
        "p.ron",
        &demo_split(40, r#", holdout: Holdout(sources: ["midjourney"])"#),
    );
    let out = ws.flow(&["run", "--json", "p.ron"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = v["failed"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("holdout source `midjourney` does not exist") && e.contains("gan_upsample"),
        "{e}"
    );
}

#[test]
fn renaming_the_dataset_folder_reruns_only_ingest() {
    let ws = Ws::new();
    image_folder(&ws);
    ws.write(
        "p.ron",
        &pipeline(
            r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#,
            r#""split": Split(dataset: "ingest", folds: 2, val_ratio: 0.0), "pre": Preprocess(dataset: "ingest", size: 16),"#,
        ),
    );
    ws.run("p.ron", 0);
    std::fs::rename(ws.path().join("data"), ws.path().join("dataset_v2")).unwrap();
    ws.write(
        "p.ron",
        &ws.read("p.ron").replace("root: \"data\"", "root: \"dataset_v2\""),
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["ingest"]));
    assert_eq!(s.cached, set(&["pre", "split"]));
    // Preprocessing after the rename reads from the new place.
    ws.write("p.ron", &ws.read("p.ron").replace("size: 16", "size: 12"));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, set(&["pre"]));
}

#[test]
fn preprocess_writes_exact_pixels() {
    let ws = Ws::new();
    // Solid colours survive crop + resize exactly; a 40x20 image with a left and right half
    // is center-cropped to its middle 20x20 (both halves), letterboxed to black bars.
    let solid = image::RgbImage::from_pixel(30, 30, image::Rgb([10, 200, 90]));
    std::fs::create_dir_all(ws.path().join("data/real")).unwrap();
    std::fs::create_dir_all(ws.path().join("data/fake")).unwrap();
    solid.save(ws.path().join("data/real/solid_1.png")).unwrap();
    let halves = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    halves.save(ws.path().join("data/fake/halves_2.png")).unwrap();
    for crop in ["Center", "Letterbox"] {
        ws.write(
            "p.ron",
            &pipeline(
                r#"Ingest(source: Folder(root: "data", layout: ImageFolder))"#,
                &format!(r#""pre": Preprocess(dataset: "ingest", size: 8, crop: {crop}),"#),
            ),
        );
        ws.run("p.ron", 0);
        let idx = rows(&ws, "out/d/pre/index.csv");
        let px = std::fs::read(ws.path().join("out/d/pre/pixels-000.u8")).unwrap();
        assert_eq!(px.len(), 2 * 8 * 8 * 3);
        let row = |item: &str| {
            idx.iter().find(|r| r["item"] == item).unwrap()["row"]
                .parse::<usize>()
                .unwrap()
        };
        let s = &px[row("real/solid_1") * 192..][..192];
        assert!(s.chunks(3).all(|p| p == [10, 200, 90]), "{crop}: solid colour changed");
        let h = &px[row("fake/halves_2") * 192..][..192];
        let at = |x: usize, y: usize| &h[(y * 8 + x) * 3..][..3];
        if crop == "Center" {
            assert_eq!(at(0, 4), [255, 0, 0]);
            assert_eq!(at(7, 4), [0, 0, 255]);
        } else {
            assert_eq!(at(4, 0), [0, 0, 0], "letterbox bar");
            assert_eq!(at(0, 4), [255, 0, 0]);
            assert_eq!(at(7, 4), [0, 0, 255]);
        }
    }
}

#[test]
fn quick_pipeline_writes_the_documented_artifacts() {
    let ws = Ws::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    ws.write(
        "pipelines/quick.ron",
        &std::fs::read_to_string(root.join("pipelines/quick.ron")).unwrap(),
    );
    let s = ws.run("pipelines/quick.ron", 0);
    assert!(s.failed.is_empty());
    let folds = ws.read("out/quick/split/folds.csv");
    assert!(
        folds.starts_with("item,group,label,source,fold,val_for,holdout\n"),
        "{}",
        &folds[..80]
    );
    let info: serde_json::Value = serde_json::from_str(&ws.read("out/quick/preprocess/preprocess.json")).unwrap();
    let n = info["count"].as_u64().unwrap() as usize;
    let size = info["size"].as_u64().unwrap() as usize;
    let bytes = std::fs::metadata(ws.path().join("out/quick/preprocess/pixels-000.u8"))
        .unwrap()
        .len() as usize;
    assert_eq!(bytes, n * size * size * 3);
}

#[test]
fn a_crop_step_between_ingest_and_preprocess() {
    // examples/facecrop.ron: an Exec that `produces: "dataset"` feeds Preprocess.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = Ws::new();
    for f in [
        "pipelines/quick.ron",
        "examples/facecrop.ron",
        "examples/scripts/center_crop.py",
    ] {
        ws.write(f, &std::fs::read_to_string(root.join(f)).unwrap());
    }
    std::os::unix::fs::symlink(root.join(".venv"), ws.path().join(".venv")).unwrap();
    let s = ws.run("examples/facecrop.ron", 0);
    assert!(s.executed.contains(&"crop".to_string()));
    let m = rows(&ws, "out/facecrop/crop/manifest.csv");
    assert_eq!(m.len(), 60);
    assert!(m.iter().all(|r| r["width"] == "24"), "cropped to 75 % of 32 px");
    let info: serde_json::Value = serde_json::from_str(&ws.read("out/facecrop/preprocess/preprocess.json")).unwrap();
    assert_eq!(info["count"], 60);
    // Editing the cropper reruns the crop and what depends on it.
    ws.write(
        "examples/scripts/center_crop.py",
        &ws.read("examples/scripts/center_crop.py").replace("0.75", "0.5"),
    );
    ws.write(
        "examples/facecrop.ron",
        &ws.read("examples/facecrop.ron")
            .replace("center_crop.py 0.75", "center_crop.py 0.5"),
    );
    let s = ws.run("examples/facecrop.ron", 0);
    assert_eq!(s.executed, set(&["crop", "preprocess"]));
}

/// The luminance quantisation table (DQT, table 0, 8-bit) of a baseline JPEG.
fn jpeg_luma_table(b: &[u8]) -> Option<Vec<u8>> {
    if !b.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= b.len() && b[i] == 0xff {
        let (marker, len) = (b[i + 1], u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize);
        if marker == 0xdb {
            // Several tables may share one segment: a Pq/Tq byte, then 64 values.
            let seg = b.get(i + 4..i + 2 + len)?;
            return seg
                .chunks(65)
                .find(|t| t.len() == 65 && t[0] == 0)
                .map(|t| t[1..].to_vec());
        }
        i += 2 + len;
    }
    None
}

#[test]
fn jpeg_demo_compresses_reals_and_fakes_alike() {
    use image::ImageEncoder;
    // The quality of each file is read back from its quantisation table, matched against the
    // tables of the `image` crate's encoder at every quality (independent of how the generator
    // draws it). Tables tie only at the top end (where every entry clamps to 1); iterating
    // downwards keeps the lowest quality of a tie, and the range below stays clear of ties.
    let mut tables: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    for q in (1..=100u8).rev() {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
            .write_image(&[128u8; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        tables.insert(jpeg_luma_table(&out).expect("a DQT segment"), q);
    }
    let (lo, hi) = (50u8, 95u8);
    let ws = Ws::new();
    ws.write(
        "p.ron",
        &pipeline(
            &format!("Ingest(source: Demo(count: 40, size: 32, seed: 3, jpeg: (min: {lo}, max: {hi})))"),
            r#""preprocess": Preprocess(dataset: "ingest", size: 32),"#,
        ),
    );
    ws.run("p.ron", 0);
    let m = rows(&ws, "out/d/ingest/manifest.csv");
    assert_eq!(m.len(), 40);
    let mut quality: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &m {
        // No format, extension or encoder difference by label.
        assert_eq!(r["format"], "jpeg", "{}", r["path"]);
        assert!(r["path"].ends_with(".jpg"), "{}", r["path"]);
        let bytes = std::fs::read(ws.path().join("out/d/ingest").join(&r["path"])).unwrap();
        let q = jpeg_luma_table(&bytes)
            .and_then(|t| tables.get(&t).copied())
            .unwrap_or_else(|| panic!("{}: not a JPEG of the image crate's encoder", r["path"]));
        assert!((lo..=hi).contains(&q), "{}: quality {q}", r["path"]);
        quality.entry(r["label"].as_str()).or_default().push(f64::from(q));
    }
    let (reals, fakes) = (&quality["0"], &quality["1"]);
    assert_eq!((reals.len(), fakes.len()), (20, 20));
    // Same distribution: the two-sample Kolmogorov–Smirnov distance stays below its 0.1 %
    // critical value for 20 + 20 (1.95 · sqrt(2/20) = 0.62). Fakes all at one quality, or
    // from a different range, would exceed it.
    let cdf = |v: &[f64], x: f64| v.iter().filter(|&&q| q <= x).count() as f64 / v.len() as f64;
    let ks = (lo..=hi)
        .map(|x| (cdf(reals, f64::from(x)) - cdf(fakes, f64::from(x))).abs())
        .fold(0.0, f64::max);
    assert!(
        ks < 0.62,
        "quality distributions differ by label: KS {ks:.2}\nreals {reals:?}\nfakes {fakes:?}"
    );
    for v in [reals, fakes] {
        let distinct: BTreeSet<u64> = v.iter().map(|&q| q as u64).collect();
        assert!(distinct.len() >= 5, "qualities are drawn per item: {v:?}");
    }
    // The JPEGs decode downstream.
    assert_eq!(rows(&ws, "out/d/preprocess/index.csv").len(), 40);
}
