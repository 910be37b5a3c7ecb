//! The Report stage and `flow compare` through the `flow` binary, on tiny demo data and
//! tiny CNNs (the model stages run in flow-worker).

use crate::common;
use common::{json, Ws};

const CHAIN: &str = r#"Pipeline(
    name: "rep",
    defaults: (seed: 5),
    stages: {
        "ingest": Ingest(source: Demo(count: 48, size: 16, seed: 3)),
        "split": Split(dataset: "ingest", folds: 2, val_ratio: 0.25),
        "pre": Preprocess(dataset: "ingest", size: 16),
        "train": Train(data: "pre", split: "split", model: SimpleCnn(width: 4, depth: 2), epochs: 2, batch_size: 8),
        "calibrate": Calibrate(models: "train", bins: 5),
        "infer": EnsembleInfer(models: ["train"], data: "pre", split: "split", calibration: "calibrate", tta: [Identity, HFlip], aggregate: CalibratedMean),
        "report": Report(predictions: "infer", calibration: "calibrate", histories: ["train"], bootstrap: 50, bins: 5, dataset: "ingest"),
    },
)"#;

/// The run facts of instance `id` in `out/rep/run.json`.
fn run_fact(ws: &Ws, id: &str) -> serde_json::Value {
    let run = json(ws, "out/rep/run.json");
    let found = run["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned();
    found.unwrap_or_else(|| panic!("no {id} in {run}"))
}

#[test]
fn the_report_has_metrics_plots_and_a_self_contained_page() {
    let ws = Ws::new();
    ws.write("p.ron", CHAIN);
    let s = ws.run("p.ron", 0);
    assert!(s.executed.contains(&"report".to_string()), "{s:?}");
    let m = json(&ws, "out/rep/report/metrics.json");
    assert_eq!(m["n"], 48);
    assert_eq!(m["n_real"], 24);
    assert_eq!(m["folds"].as_array().unwrap().len(), 2);
    let auc = m["pooled"]["at_default"]["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc), "{auc}");
    for k in [
        "auc",
        "average_precision",
        "accuracy",
        "balanced_accuracy",
        "recall",
        "false_alarm_rate",
        "eer",
        "log_loss",
        "brier",
        "ece",
    ] {
        assert!(
            m["pooled"]["at_default"][k].is_number(),
            "pooled {k}: {}",
            m["pooled"]["at_default"]
        );
        assert!(m["across_folds"][k]["mean"].is_number(), "across folds {k}");
    }
    // Three demo sources, each against all reals; CIs bracket the point estimate.
    let ps = m["per_source"].as_array().unwrap();
    assert_eq!(ps.len(), 3);
    for s in ps {
        let a = s["at_default"]["auc"].as_f64().unwrap();
        let ci = s["auc_ci"].as_array().unwrap();
        assert!(
            ci[0].as_f64().unwrap() <= a + 1e-12 && a <= ci[1].as_f64().unwrap() + 1e-12,
            "{s}"
        );
    }
    assert_eq!(m["training"].as_array().unwrap().len(), 2);
    assert_eq!(m["members"][0]["name"], "train");

    // Provenance: the experiment (in the cached page) and the run facts (out/rep/run.json).
    let pv = &m["provenance"];
    assert_eq!(pv["pipeline"]["name"], "rep");
    let train = pv["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap();
    assert_eq!(train["set"]["epochs"], 2, "{train}");
    assert!(train["defaults"]["lr"].is_number(), "lr is a default: {train}");
    assert_eq!(
        train["set"]["seed"], 5,
        "the pipeline's defaults are set by the file: {train}"
    );
    assert_eq!(train["from_pipeline_defaults"][0], "seed");
    assert_eq!(train["outputs"].as_object().unwrap().len(), 2, "one hash per fold");
    assert_eq!(pv["dataset"]["items"], 48);
    assert!(pv["split"]["output"].is_string(), "{pv}");
    let rec = run_fact(&ws, "train@fold1");
    assert!(
        rec["seconds"].is_number() && rec["started"].as_str().unwrap().ends_with('Z'),
        "{rec}"
    );
    assert!(ws.read("out/rep/run.js").starts_with("// Written by flow run"));

    let html = ws.read("out/rep/report/index.html");
    assert!(html.matches("<svg").count() >= 8, "every plot inline");
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "self-contained: found {external}");
    }
    assert_eq!(
        html.matches("<script src=").count(),
        1,
        "the one script file is the run facts next to out/rep/report"
    );
    assert!(html.contains("<script src=\"../run.js\"></script>"));
    assert!(html.contains("id=\"provenance\"") && html.contains("Report — rep"));
    let md = ws.read("out/rep/report/report.md");
    assert!(md.contains("| AUC |") && md.contains("![ROC curves"), "{md}");
    for plot in [
        "roc",
        "reliability",
        "confusion",
        "per_source_auc",
        "cascade",
        "training_val_auc",
    ] {
        let png = std::fs::read(ws.path().join(format!("out/rep/report/plots/{plot}.png"))).unwrap();
        let im = image::load_from_memory(&png).unwrap_or_else(|e| panic!("{plot}.png: {e}"));
        assert!(
            im.width() >= 300 && im.height() >= 200,
            "{plot}.png is {}x{}",
            im.width(),
            im.height()
        );
        assert!(md.contains(&format!("plots/{plot}.png")), "report.md links {plot}.png");
    }

    // Headless Chromium renders the page with its plots (scripts/check-report).
    common::check_page(&ws.path().join("out/rep/report"));

    // A no-op run rewrites no run facts.
    let before = std::fs::metadata(ws.path().join("out/rep/run.json"))
        .unwrap()
        .modified()
        .unwrap();
    let s = ws.run("p.ron", 0);
    assert!(s.executed.is_empty(), "{s:?}");
    let after = std::fs::metadata(ws.path().join("out/rep/run.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a no-op run rewrote run.json");

    // A report-only change reruns only the report. With a file of the user's in its view the
    // view stays as it was, and run.json says so, so the old page does not take the new
    // report's run facts for its own.
    ws.write("out/rep/report/mine.txt", "notes");
    ws.write("p.ron", &CHAIN.replace("bootstrap: 50", "bootstrap: 60"));
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, vec!["report".to_string()], "{s:?}");
    let rec = run_fact(&ws, "report");
    assert!(rec["view_not_updated"].as_str().unwrap().contains("mine.txt"), "{rec}");
    std::fs::remove_file(ws.path().join("out/rep/report/mine.txt")).unwrap();
    ws.run("p.ron", 0);
    let rec = run_fact(&ws, "report");
    assert!(rec["view_not_updated"].is_null(), "{rec}");
    // So does a change only the provenance shows (the pipeline's name): nothing upstream.
    ws.write(
        "p.ron",
        &CHAIN
            .replace("bootstrap: 50", "bootstrap: 60")
            .replace("\"rep\"", "\"rep2\""),
    );
    let s = ws.run("p.ron", 0);
    assert_eq!(s.executed, vec!["report".to_string()], "{s:?}");
    assert_eq!(
        json(&ws, "out/rep2/report/metrics.json")["provenance"]["pipeline"]["name"],
        "rep2"
    );
}

#[test]
fn compare_needs_fresh_experiments_and_tests_against_the_baseline() {
    // The shipped pair: wide.ron extends base.ron and differs in one param (the CNN's width).
    let ws = Ws::new();
    ws.write("base.ron", include_str!("../../examples/compare/base.ron"));
    ws.write("wide.ron", include_str!("../../examples/compare/wide.ron"));
    ws.run("base.ron", 0);
    // wide never ran: compare names it and fails, running nothing.
    let out = ws.flow(&["compare", "base.ron", "wide.ron"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stale: cmp-wide: `infer` is not fresh"), "{err}");
    assert!(!ws.path().join("out/cmp-wide").exists(), "compare ran nothing");

    let out = ws.flow(&["compare", "base.ron", "wide.ron", "--run", "--latex", "t.tex", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["baseline"], "cmp-base");
    let e = c["experiments"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert!(e[0]["vs_baseline"].is_null());
    let v = &e[1]["vs_baseline"];
    let p = v["delong"]["p_value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{v}");
    assert!(v["paired_t"].is_object() && v["wilcoxon"].is_object(), "{v}");
    let diff: Vec<&str> = e[1]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(diff, vec!["train.model.SimpleCnn.width: 8 -> 16"], "{diff:?}");
    assert_eq!(e[1]["fold_auc"].as_object().unwrap().len(), 3);
    let tex = ws.read("t.tex");
    assert!(tex.contains("\\begin{tabular}") && tex.contains("cmp-wide"), "{tex}");
    // A LaTeX file that is a hard link to a cache object (made through out/): the file is
    // replaced, never written through, so the object stays intact.
    let report = ws.path().join("out/cmp-base/report/report.md");
    let before = std::fs::read(&report).unwrap();
    std::fs::hard_link(&report, ws.path().join("linked.tex")).unwrap();
    let out = ws.flow(&["compare", "base.ron", "wide.ron", "--latex", "linked.tex"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ws.read("linked.tex").contains("\\begin{tabular}"));
    assert_eq!(
        std::fs::read(&report).unwrap(),
        before,
        "the cache object was written through"
    );
    assert!(ws.flow(&["verify"]).status.success());
    // Text output: a Markdown table.
    let out = ws.flow(&["compare", "base.ron", "wide.ron"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("| experiment | AUC |") && text.contains("(baseline)"),
        "{text}"
    );
    // Experiments that do not share a split are compared unpaired (bootstrap), and say so.
    ws.write(
        "other.ron",
        &include_str!("../../examples/compare/base.ron")
            .replace("name: \"cmp-base\"", "name: \"cmp-other\"")
            .replace("folds: 3", "folds: 2"),
    );
    let out = ws.flow(&[
        "--json",
        "compare",
        "base.ron",
        "other.ron",
        "--run",
        "--html",
        "cmp.html",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let c = common::stdout_json(&out);
    let vs = &c["experiments"][1]["vs_baseline"];
    assert_eq!(vs["paired"], false, "{vs}");
    assert!(
        vs["bootstrap"]["p_value"].is_number() && vs["p_holm"].is_number(),
        "{vs}"
    );
    assert!(
        c["warnings"].to_string().contains("compared unpaired"),
        "{}",
        c["warnings"]
    );
    let page = ws.read("cmp.html");
    assert!(
        page.contains("<svg") && page.contains("cmp-other"),
        "the page has its plots and rows"
    );
}
