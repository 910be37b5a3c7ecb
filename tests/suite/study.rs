//! Studies (`Study(…)` files): variants, grids and seeds of a base pipeline in one run, shared
//! work run once, and the comparison stage. Incrementality is read from `run --json`.

use crate::common;
use common::{json, set, Ws};

/// Tiny 2-fold recipe with hard-negative mining and retraining (seconds on 2 cores).
const BASE: &str = r#"Pipeline(
    name: "sbase",
    defaults: (seed: 5),
    stages: {
        "ingest": Ingest(source: Demo(count: 48, size: 16, seed: 3)),
        "split": Split(dataset: "ingest", folds: 2, val_ratio: 0.25),
        "pre": Preprocess(dataset: "ingest", size: 16),
        "train": Train(data: "pre", split: "split", model: SimpleCnn(width: 4, depth: 2), epochs: 1, batch_size: 8),
        "calibrate": Calibrate(models: "train", bins: 5, thresholds: [0.9]),
        "mine": MineHardNegatives(calibration: "calibrate", top: 0.2),
        "retrain": Retrain(models: "train", hard_negatives: "mine", data: "pre", split: "split", epochs: 1),
        "infer": EnsembleInfer(models: ["train"], data: "pre", split: "split", calibration: "calibrate", aggregate: CalibratedMean),
        "report": Report(predictions: "infer", calibration: "calibrate", bootstrap: 20, bins: 5),
    },
)"#;

fn study(variants: &str, extra: &str) -> String {
    format!(
        r#"Study(
    name: "s",
    base: "base.ron",
    baseline: "original",
    variants: {{ {variants} }},
    {extra}
    compare: StudyReport(predictions: "infer", split: "split", models: "train", bootstrap: 50),
)"#
    )
}

const FOUR: &str = r#""original": {}, "real_norm": {"pre.normalize": RealOnly}, "wide": {"train.model.SimpleCnn.width": 6}, "no_inpaint": {"split.holdout": Holdout(sources: ["inpaint"])},"#;

fn executed_of<'a>(executed: &'a [String], stage: &str) -> Vec<&'a String> {
    executed
        .iter()
        .filter(|i| i.split('@').next().unwrap().split('.').next() == Some(stage))
        .collect()
}

#[test]
fn a_study_runs_shared_work_once_and_a_new_variant_only_its_own() {
    let ws = Ws::new();
    ws.write("base.ron", BASE);
    ws.write("s.ron", &study(FOUR, ""));
    let s = ws.run("s.ron", 0);
    // Ingest once; the split once for the three variants that keep it (no_inpaint has its
    // own); preprocessing once per normalisation; each variant its own models.
    assert_eq!(executed_of(&s.executed, "ingest"), ["ingest"]);
    assert_eq!(
        executed_of(&s.executed, "split"),
        ["split.no_inpaint", "split.original"]
    );
    assert_eq!(executed_of(&s.executed, "pre"), ["pre.original", "pre.real_norm"]);
    assert_eq!(executed_of(&s.executed, "train").len(), 8, "{:?}", s.executed);
    assert!(s.executed.contains(&"study".to_string()));
    assert!(s.cached.is_empty(), "{:?}", s.cached);
    // Nothing twice, and nothing left: a no-op rerun executes nothing.
    let again = ws.run("s.ron", 0);
    assert!(again.executed.is_empty(), "{:?}", again.executed);

    // The comparison: every variant, the paired tests where folds agree, Holm.
    let c = json(&ws, "out/s/study/study.json");
    let e = c["experiments"].as_array().unwrap();
    let names: Vec<&str> = e.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["original", "real_norm", "wide", "no_inpaint"]);
    assert!(e[0]["vs_baseline"].is_null());
    for x in &e[1..] {
        assert!(x["vs_baseline"]["p_holm"].is_number(), "{x}");
        assert!(x["vs_baseline"]["p_holm"].as_f64() >= x["vs_baseline"]["p_value"].as_f64());
    }
    assert_eq!(e[1]["changes"], serde_json::json!(["pre.normalize=RealOnly"]));
    assert!(e[3]["held_out"]["auc_out"].is_number(), "{}", e[3]);
    // Parameter counts from each variant's weights: `wide` (width 6) is the bigger model.
    let params = |i: usize| e[i]["parameters"].as_u64().unwrap_or_else(|| panic!("{}", e[i]));
    assert!(params(2) > params(0), "{} vs {}", params(2), params(0));
    assert_eq!(params(0), params(1));
    for f in [
        "index.html",
        "study.md",
        "study.tex",
        "plots/auc.svg",
        "plots/auc.png",
        "plots/size.svg",
    ] {
        assert!(ws.path().join("out/s/study").join(f).is_file(), "{f}");
    }
    assert!(ws.read("out/s/study/study.tex").contains("\\toprule"));
    // Headless Chromium renders the page with its plots and every table of study.md.
    common::check_page(&ws.path().join("out/s/study"));

    // A variant is the pipeline its --set would be: same keys (only the report, which names
    // its pipeline, is new).
    let out = ws.flow(&["run", "--json", "base.ron", "--set", "pre.normalize=RealOnly"]);
    let one = common::Summary::from(&common::stdout_json(&out));
    assert_eq!(one.executed, set(&["report"]), "{one:?}");

    // A fifth variant: only its own models and what reads them run.
    ws.write("s.ron", &study(&format!(r#"{FOUR} "slow": {{"train.lr": 1e-4}},"#), ""));
    let s = ws.run("s.ron", 0);
    assert_eq!(
        s.executed,
        set(&[
            "train.slow@fold0",
            "train.slow@fold1",
            "calibrate.slow",
            "mine.slow",
            "retrain.slow@fold0",
            "retrain.slow@fold1",
            "infer.slow",
            "report.slow",
            "study"
        ])
    );

    // --variant runs one variant and what it needs, never the comparison.
    ws.write("s.ron", &study(&format!(r#"{FOUR} "fast": {{"train.lr": 1e-2}},"#), ""));
    let out = ws.flow(&["run", "--json", "s.ron", "--variant", "fast"]);
    let v = common::Summary::from(&common::stdout_json(&out));
    assert!(v.executed.iter().all(|i| i.contains(".fast")), "{v:?}");
    assert_eq!(executed_of(&v.executed, "train").len(), 2);
    let out = ws.flow(&["run", "s.ron", "--variant", "fsat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `fast`"));

    // Status groups instances by variant.
    let out = ws.flow(&["status", "s.ron"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shared by every variant") && text.contains("variant fast"),
        "{text}"
    );
    let st = ws.status("s.ron");
    let ingest = st.iter().find(|x| x["stage"] == "ingest").unwrap();
    assert_eq!(ingest["variants"].as_array().unwrap().len(), 5);
}

#[test]
fn a_threshold_sweep_never_retrains() {
    let ws = Ws::new();
    ws.write("base.ron", BASE);
    let sweep = |values: &str| {
        format!(
            r#"Study(
    name: "sweep",
    base: "base.ron",
    grid: {{"calibrate.thresholds": [{values}]}},
    compare: StudyReport(predictions: "infer"),
)"#
        )
    };
    ws.write("s.ron", &sweep("[0.9], [0.95]"));
    let s = ws.run("s.ron", 0);
    // Both points share the models; the retrained models too (mining reads temperatures, not
    // thresholds: the second point's retrain has the first's key and waits for it).
    assert_eq!(executed_of(&s.executed, "train").len(), 2, "{:?}", s.executed);
    assert_eq!(executed_of(&s.executed, "retrain").len(), 2, "{:?}", s.executed);
    assert_eq!(executed_of(&s.executed, "calibrate").len(), 2, "{:?}", s.executed);
    // A third threshold: no model is trained or retrained.
    ws.write("s.ron", &sweep("[0.9], [0.95], [0.99]"));
    let s = ws.run("s.ron", 0);
    assert!(
        executed_of(&s.executed, "train").is_empty() && executed_of(&s.executed, "retrain").is_empty(),
        "{:?}",
        s.executed
    );
    assert!(
        s.executed.contains(&"calibrate.thresholds=0.99".to_string()),
        "{:?}",
        s.executed
    );
}

#[test]
fn seeds_repeat_the_models_over_one_split_and_aggregate() {
    let ws = Ws::new();
    ws.write("base.ron", BASE);
    ws.write(
        "s.ron",
        r#"Study(name: "seeds", base: "base.ron", seeds: [1, 2], compare: StudyReport(predictions: "infer"))"#,
    );
    let s = ws.run("s.ron", 0);
    assert_eq!(executed_of(&s.executed, "split"), ["split"]);
    assert_eq!(executed_of(&s.executed, "train").len(), 4, "{:?}", s.executed);
    let c = json(&ws, "out/seeds/study/study.json");
    assert_eq!(c["groups"][0]["of"], 2);
    assert!(c["groups"][0]["auc"]["std"].is_number(), "{}", c["groups"]);
    assert!(ws.read("out/seeds/study/study.md").contains("Across seeds"));
}
