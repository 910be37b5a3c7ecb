//! The `Report` stage: metrics, statistics and plots of out-of-fold predictions, as one
//! self-contained `index.html`, a GitHub-readable `report.md` and a machine-readable
//! `metrics.json`.
//!
//! ```ron
//! "report": Report(predictions: "infer", calibration: "calibrate", histories: ["train", "retrain"]),
//! ```
//! Inputs: `predictions` (an EnsembleInfer stage: `predictions.csv` with `item,group,label,
//! source,fold,score` plus one column per member model), optionally `calibration` (a Calibrate
//! stage: temperatures, NLL/ECE/Brier before/after, reliability data) and `histories` (per-fold
//! model stages: `history.csv` per fold for training curves and the train/val gap).
//!
//! What is computed (metric definitions: [`crate::metrics`]):
//! * pooled over every item, at the default threshold 0.5 and at the chosen `threshold`
//!   (when unset: the pooled EER threshold, which is picked on these very predictions and so
//!   is optimistic; the report says so);
//! * per fold (at 0.5), and across folds: mean, sample std and a t-interval;
//! * per source: each fake source against all reals;
//! * percentile bootstrap CIs (stratified by class, `bootstrap` resamples, seeded) for the
//!   pooled and per-source AUC and AP;
//! * per member model: its AUC, and DeLong's test against the ensemble on the same items;
//! * cascade curves: for every threshold t on a grid, the share of items a filter passing
//!   `p ≥ t` stops (filtration) and the share of fakes it stops (leakage).
//!
//! `metrics.json` keys are stable: renaming one is a breaking change. Every string that comes
//! from the data (item, source and stage names) is HTML-escaped in `index.html` (`esc`) and
//! Markdown-escaped in `report.md` (`md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use flow_engine::{
    key_params_of, Code, ConfigProblem, Defaults, ExecCtx, Experiment, ExperimentStage, Input, PortType, StageConfig,
    StageError, StageKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::page::{Block, Doc, Figure, Section};
use super::plots::{self, Plot, Series};
use crate::metrics::{self, Binary};
use crate::ports::calibration::{read_reliability, CalibrationDoc, ReliabilityRow};
use crate::ports::dataset::{read_manifest, Item};
use crate::ports::models::{self, HistRow};
use crate::ports::predictions::Predictions;
use crate::ports::report as files;
use crate::ports::spectrum::SpectrumDoc;
use crate::ports::split::SplitSummary;
use crate::ports::{CALIBRATION, DATASET, MODELS, PREDICTIONS, SPECTRUM, SPLIT};
use crate::stats;

pub use crate::ports::REPORT;

/// The most bootstrap resamples a report may ask for (each is a full pass over the predictions).
pub const MAX_BOOTSTRAP: usize = 100_000;

fn d_bootstrap() -> usize {
    1000
}
fn d_bins() -> usize {
    10
}
fn d_level() -> f64 {
    0.95
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// An EnsembleInfer stage.
    pub predictions: String,
    /// A Calibrate stage (reliability before/after, temperatures).
    #[serde(default)]
    pub calibration: Option<String>,
    /// Per-fold model stages whose training histories to plot.
    #[serde(default)]
    pub histories: Vec<String>,
    /// The Split stage: its held-out sources get the in-source vs held-out comparison.
    #[serde(default)]
    pub split: Option<String>,
    /// The Ingest stage: counts per label and source and image sizes for the provenance, and
    /// the upscaled-images warning.
    #[serde(default)]
    pub dataset: Option<String>,
    /// A Spectrum stage: its mean spectra, difference maps and azimuthal plot get a section.
    #[serde(default)]
    pub spectrum: Option<String>,
    /// The operating point besides 0.5 (P(fake) ≥ threshold ⇒ fake). Unset: the pooled EER
    /// threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Bootstrap resamples for CIs (0 = none).
    #[serde(default = "d_bootstrap")]
    pub bootstrap: usize,
    /// Confidence level of every interval.
    #[serde(default = "d_level")]
    pub level: f64,
    /// Reliability / ECE bins.
    #[serde(default = "d_bins")]
    pub bins: usize,
    #[serde(default)]
    pub seed: Option<u64>,
}

// 2: metrics.json's calibration carries the pooled test NLL/ECE/Brier (was null: the
// reader looked for keys calibration.json does not have). 3: report.md escapes for
// Markdown (it had HTML entities: `fold&#39;s`). 4: provenance, warnings, every table in
// the page, Wilson / bootstrap intervals, training curves as small multiples.
inventory::submit! { crate::Kind(|| StageKind::new::<Report>("Report", 4, "metrics, statistics and plots: index.html, report.md, metrics.json")) }

impl StageConfig for Report {
    fn inputs(&self) -> Vec<Input> {
        let mut v = vec![Input::stage("predictions", self.predictions.clone(), &[PREDICTIONS])];
        if let Some(c) = &self.calibration {
            v.push(Input::stage("calibration", c.clone(), &[CALIBRATION]));
        }
        for h in &self.histories {
            v.push(Input::stage("histories", h.clone(), &[MODELS]));
        }
        if let Some(sp) = &self.split {
            v.push(Input::stage("split", sp.clone(), &[SPLIT]));
        }
        if let Some(d) = &self.dataset {
            v.push(Input::stage("dataset", d.clone(), &[DATASET]));
        }
        if let Some(sp) = &self.spectrum {
            v.push(Input::stage("spectrum", sp.clone(), &[SPECTRUM]));
        }
        v
    }
    fn describes_experiment(&self) -> bool {
        true
    }
    fn output(&self) -> PortType {
        REPORT
    }
    fn resolve_defaults(&mut self, d: &Defaults) {
        if self.seed.is_none() {
            self.seed = d.u64("seed");
        }
    }
    fn key_params(&self) -> Value {
        // `histories` stays: stage names label the training-curve series (output content).
        key_params_of(self, &["predictions", "calibration", "split", "dataset", "spectrum"])
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let p = |m: &str| ConfigProblem {
            code: Code::InvalidValue,
            message: m.into(),
            needle: None,
            help: None,
        };
        let mut c = crate::model::Checks::new();
        c.int("bins", self.bins as u64, 2, 10_000);
        c.int("bootstrap", self.bootstrap as u64, 0, MAX_BOOTSTRAP as u64);
        let mut v = c.0;
        if !(self.level > 0.5 && self.level < 1.0) {
            v.push(p("`level` must be in (0.5, 1), e.g. 0.95"));
        }
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                v.push(p("`threshold` is a probability in [0, 1]"));
            }
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let input = ctx
            .inputs_of("predictions")
            .next()
            .ok_or_else(|| StageError::msg("no predictions input"))?;
        let preds = Columns::read(&input.dir)?;
        let calibration = match ctx.inputs_of("calibration").next() {
            Some(c) => Some(CalibrationIn {
                doc: CalibrationDoc::read(&c.dir).map_err(StageError::msg)?,
                reliability: read_reliability(&c.dir).map_err(StageError::msg)?,
            }),
            None => None,
        };
        let mut histories = Vec::new();
        for h in ctx.inputs_of("histories") {
            if h.dir.join(models::HISTORY).exists() {
                histories.push((h.from.clone(), models::read_history(&h.dir).map_err(StageError::msg)?));
            }
        }
        histories.sort_by(|a, b| a.0.cmp(&b.0));
        let mut holdout = Vec::new();
        if let Some(sp) = ctx.inputs_of("split").next() {
            holdout = SplitSummary::read(&sp.dir)
                .map_err(StageError::msg)?
                .holdout
                .unwrap_or_default();
        }
        let dataset = match ctx.inputs_of("dataset").next() {
            Some(d) => Some(read_manifest(&d.dir).map_err(StageError::msg)?),
            None => None,
        };
        let spectrum = ctx.inputs_of("spectrum").next().map(|i| i.dir.clone());
        let extra = Extra {
            experiment: ctx.experiment,
            dataset: dataset.as_deref(),
            spectrum: spectrum.as_deref(),
        };
        let built = build_with(self, &preds, calibration.as_ref(), &histories, &holdout, &extra)?;
        write_outputs(ctx.out_dir, &built)
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> StageError {
    StageError::msg(format!("{}: {e}", path.display()))
}

/// `predictions.csv` of EnsembleInfer as columns (what the metrics take).
pub struct Columns {
    pub items: Vec<String>,
    pub labels: Vec<u8>,
    pub sources: Vec<String>,
    pub folds: Vec<u32>,
    pub score: Vec<f64>,
    /// (member name, its scores), in column order.
    pub members: Vec<(String, Vec<f64>)>,
}

impl Columns {
    /// The predictions of the `predictions` artifact in `dir`. Every member must have scored
    /// every item (a cascade's fast-only items have no member scores: not yet supported here).
    pub fn read(dir: &Path) -> Result<Columns, StageError> {
        Columns::read_file(&dir.join(crate::ports::predictions::ROWS))
    }

    /// [`Columns::read`] of a `predictions.csv` stored elsewhere (a cache object).
    pub fn read_file(path: &Path) -> Result<Columns, StageError> {
        let p = Predictions::read_file(path).map_err(StageError::msg)?;
        let mut c = Columns {
            items: Vec::with_capacity(p.rows.len()),
            labels: Vec::with_capacity(p.rows.len()),
            sources: Vec::with_capacity(p.rows.len()),
            folds: Vec::with_capacity(p.rows.len()),
            score: Vec::with_capacity(p.rows.len()),
            members: p
                .members
                .iter()
                .map(|m| (m.clone(), Vec::with_capacity(p.rows.len())))
                .collect(),
        };
        for (line, r) in p.rows.into_iter().enumerate() {
            for (k, v) in r.members.iter().enumerate() {
                let v = v.ok_or_else(|| {
                    err(
                        path,
                        format!("row {}: member `{}` has no score", line + 2, c.members[k].0),
                    )
                })?;
                c.members[k].1.push(v);
            }
            c.items.push(r.item);
            c.labels.push(r.label);
            c.sources.push(r.source);
            c.folds.push(r.fold);
            c.score.push(r.score);
        }
        Ok(c)
    }
}

/// What the report takes from a Calibrate stage.
pub struct CalibrationIn {
    pub doc: CalibrationDoc,
    pub reliability: Vec<ReliabilityRow>,
}

/// Everything the report writes.
pub struct Built {
    pub metrics: Value,
    pub markdown: String,
    pub html: String,
    pub plots: Vec<Figure>,
    /// Files copied from inputs into `plots/`: the spectrum images.
    pub copies: Copies,
}

/// Files by name (under `plots/`) and their bytes.
pub type Copies = Vec<(String, Vec<u8>)>;

/// A history's lines for one panel: (dashed, points).
type PanelLines = Vec<(bool, Vec<(f64, f64)>)>;

fn write_outputs(out: &Path, b: &Built) -> Result<(), StageError> {
    let w = |name: &str, bytes: &[u8]| -> Result<(), StageError> {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| err(&p, e))
    };
    std::fs::create_dir_all(out.join(files::PLOTS)).map_err(|e| err(out, e))?;
    w(
        files::METRICS,
        serde_json::to_string_pretty(&b.metrics).unwrap().as_bytes(),
    )?;
    w(files::MARKDOWN, b.markdown.as_bytes())?;
    w(files::HTML, b.html.as_bytes())?;
    for f in &b.plots {
        w(&format!("{}/{}.svg", files::PLOTS, f.stem), f.plot.svg.as_bytes())?;
        w(&format!("{}/{}.png", files::PLOTS, f.stem), &f.plot.png)?;
    }
    for (name, bytes) in &b.copies {
        w(&format!("{}/{name}", files::PLOTS), bytes)?;
    }
    Ok(())
}

fn sub<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

/// Bootstrap CI of a statistic of (scores, labels), stratified by class.
fn boot(cfg: &Report, salt: u64, scores: &[f64], labels: &[u8], f: impl Fn(&[f64], &[u8]) -> Option<f64>) -> Value {
    if cfg.bootstrap == 0 {
        return Value::Null;
    }
    let seed = cfg.seed.unwrap_or(0) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let ci = metrics::bootstrap_ci_stratified(labels, cfg.level, cfg.bootstrap, seed, |idx| {
        f(&sub(scores, idx), &sub(labels, idx))
    });
    match ci {
        Some((lo, hi)) => json!([lo, hi]),
        None => Value::Null,
    }
}

fn fnum(v: Option<f64>, d: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.d$}"),
        _ => "–".into(),
    }
}

fn ci_text(v: &Value, d: usize) -> String {
    match (v.get(0).and_then(Value::as_f64), v.get(1).and_then(Value::as_f64)) {
        (Some(a), Some(b)) => format!("[{a:.d$}, {b:.d$}]"),
        _ => "–".into(),
    }
}

/// HTML-escapes text from the data.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Text from the data (source names, pipeline names) for Markdown: every ASCII punctuation
/// character CommonMark gives a meaning inline (emphasis, code, links, images, tables,
/// strikethrough, entities, headings, quotes) is backslash-escaped; a `<` that could open a
/// tag becomes `&lt;`; control characters (a newline would end a table row) become spaces.
/// Everything else is written as is: `fold's` stays `fold's`.
pub(crate) fn md(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '<' if chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?')) =>
            {
                o.push_str("&lt;")
            }
            '\\' | '|' | '*' | '_' | '`' | '[' | ']' | '!' | '~' | '&' | '#' | '>' | '<' => {
                o.push('\\');
                o.push(c);
            }
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

const METRIC_ROWS: &[(&str, &str)] = &[
    ("auc", "AUC"),
    ("average_precision", "Average precision"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("precision", "Precision"),
    ("recall", "Recall (fake detection rate)"),
    ("false_alarm_rate", "False alarm rate"),
    ("f1", "F1"),
    ("eer", "EER"),
    ("log_loss", "Log loss"),
    ("brier", "Brier"),
    ("ece", "ECE"),
];

fn get(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// [`build_with`] without provenance or dataset.
pub fn build(
    cfg: &Report,
    p: &Columns,
    cal: Option<&CalibrationIn>,
    histories: &[(String, Vec<HistRow>)],
    holdout: &[String],
) -> Result<Built, StageError> {
    build_with(cfg, p, cal, histories, holdout, &Extra::default())
}

/// Everything the report computes and writes, from its inputs.
pub fn build_with(
    cfg: &Report,
    p: &Columns,
    cal: Option<&CalibrationIn>,
    histories: &[(String, Vec<HistRow>)],
    holdout: &[String],
    extra: &Extra<'_>,
) -> Result<Built, StageError> {
    let n = p.items.len();
    let all: Vec<usize> = (0..n).collect();
    let n_fake = p.labels.iter().filter(|&&l| l == 1).count();
    if n_fake == 0 || n_fake == n {
        return Err(StageError::msg(format!(
            "the predictions hold only {} items: metrics need both reals and fakes",
            if n_fake == 0 { "real" } else { "fake" }
        )));
    }
    let bins = cfg.bins;
    let (eer, eer_t) = metrics::eer(&p.score, &p.labels).map_or((f64::NAN, 0.5), |e| (e.rate, e.threshold));
    let (chosen, chosen_from) = match cfg.threshold {
        Some(t) => (t, "param"),
        None => (eer_t, "pooled EER threshold (picked on these predictions: optimistic)"),
    };
    let pooled_default = bin_json(p, &all, 0.5, bins);
    let pooled_chosen = bin_json(p, &all, chosen, bins);
    let folds = Folds::of(p);
    let (folds_json, across) = per_fold_json(cfg, p, &folds);
    let sources = fake_sources(p);

    let mut metrics_json = json!({
        "provenance": provenance_json(extra),
        "n": n,
        "n_real": n - n_fake,
        "n_fake": n_fake,
        "sources": sources,
        "folds": folds.ids,
        "threshold": {"default": 0.5, "chosen": chosen, "chosen_from": chosen_from},
        "pooled": {
            "at_default": pooled_default,
            "at_chosen": pooled_chosen,
            "eer": eer,
            "ci_at_default": pooled_cis(cfg, p, &pooled_default),
            "auc_ci": boot(cfg, 1, &p.score, &p.labels, metrics::auc),
            "ap_ci": boot(cfg, 2, &p.score, &p.labels, metrics::average_precision),
        },
        "per_fold": folds_json,
        "across_folds": across,
        "per_source": per_source_json(cfg, p, &sources, &folds),
        "members": members_json(cfg, p),
        "calibration": cal.map(calibration_json),
        "training": training_json(histories),
        "cascade": cascade_json(p, n_fake),
        "holdout": holdout_json(p, holdout),
        "settings": {"bootstrap": cfg.bootstrap, "stratified_bootstrap": true, "level": cfg.level,
                     "bins": bins, "seed": cfg.seed},
    });

    metrics_json["warnings"] = json!(warnings(&metrics_json, cal, p));
    let plots = make_plots(cfg, p, &folds.idx, &sources, &metrics_json, cal, histories)?;
    let mut doc = document(&metrics_json, plots);
    let mut copies = Vec::new();
    if let Some(dir) = extra.spectrum {
        let (section, files) = spectrum_section(dir)?;
        metrics_json["spectrum"] = json!(files.iter().map(|(n, _)| n).collect::<Vec<_>>());
        let at = doc
            .sections
            .iter()
            .position(|s| s.id == "plots")
            .map_or(doc.sections.len(), |i| i + 1);
        doc.sections.insert(at, section);
        copies = files;
    }
    let markdown = super::page::render_md(&doc);
    let html = super::page::render_html(&doc, "");
    Ok(Built {
        metrics: metrics_json,
        markdown,
        html,
        plots: doc.figures,
        copies,
    })
}

/// [`Binary`] metrics of the items `idx` at threshold `t`, as JSON.
fn bin_json(p: &Columns, idx: &[usize], t: f64, bins: usize) -> Value {
    serde_json::to_value(Binary::compute(&sub(&p.score, idx), &sub(&p.labels, idx), t, bins)).unwrap()
}

/// Intervals of the pooled metrics at 0.5: Wilson for the four proportions (their counts are
/// in the confusion matrix), a stratified bootstrap for the rest.
fn pooled_cis(cfg: &Report, p: &Columns, at: &Value) -> Value {
    let c = &at["confusion"];
    let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (tp, fp, tn, fn_) = (n("tp"), n("fp"), n("tn"), n("fn"));
    let wilson = |k: u64, of: u64| {
        metrics::wilson(k, of, cfg.level)
            .map_or(Value::Null, |(lo, hi)| json!({"lo": lo, "hi": hi, "method": "Wilson"}))
    };
    let mut out = serde_json::Map::new();
    out.insert("accuracy".into(), wilson(tp + tn, tp + tn + fp + fn_));
    out.insert("precision".into(), wilson(tp, tp + fp));
    out.insert("recall".into(), wilson(tp, tp + fn_));
    out.insert("false_alarm_rate".into(), wilson(fp, fp + tn));
    let bins = cfg.bins;
    for (i, (k, _)) in METRIC_ROWS.iter().enumerate() {
        if out.contains_key(*k) {
            continue;
        }
        let key = k.to_string();
        // AUC and AP: the very resamples of `pooled.auc_ci` / `ap_ci` (same salt), so the
        // page quotes one interval per metric.
        let salt = match *k {
            "auc" => 1,
            "average_precision" => 2,
            _ => 700 + i as u64,
        };
        let v = match *k {
            "auc" => boot(cfg, salt, &p.score, &p.labels, metrics::auc),
            "average_precision" => boot(cfg, salt, &p.score, &p.labels, metrics::average_precision),
            _ => boot(cfg, salt, &p.score, &p.labels, |s, l| {
                let b = serde_json::to_value(Binary::compute(s, l, 0.5, bins)).ok()?;
                get(&b, &key)
            }),
        };
        let v = match (v.get(0).and_then(Value::as_f64), v.get(1).and_then(Value::as_f64)) {
            (Some(lo), Some(hi)) => json!({"lo": lo, "hi": hi, "method": "bootstrap"}),
            _ => Value::Null,
        };
        out.insert(k.to_string(), v);
    }
    Value::Object(out)
}

/// The folds of the predictions, ascending, and the items of each.
struct Folds {
    ids: Vec<u32>,
    idx: BTreeMap<u32, Vec<usize>>,
}

impl Folds {
    fn of(p: &Columns) -> Folds {
        let n = p.items.len();
        let mut ids: Vec<u32> = p.folds.clone();
        ids.sort_unstable();
        ids.dedup();
        let idx = ids
            .iter()
            .map(|&f| (f, (0..n).filter(|&i| p.folds[i] == f).collect()))
            .collect();
        Folds { ids, idx }
    }
}

/// Per fold (at 0.5), and each metric across folds: mean, std and t-interval.
fn per_fold_json(cfg: &Report, p: &Columns, folds: &Folds) -> (Vec<Value>, serde_json::Map<String, Value>) {
    let folds_json: Vec<Value> = folds
        .idx
        .iter()
        .map(|(f, idx)| json!({"fold": f, "n": idx.len(), "at_default": bin_json(p, idx, 0.5, cfg.bins)}))
        .collect();
    let mut across = serde_json::Map::new();
    for (i, (k, _)) in METRIC_ROWS.iter().enumerate() {
        let vals: Vec<f64> = folds_json.iter().filter_map(|f| get(&f["at_default"], k)).collect();
        let s = metrics::mean_std_ci(&vals, cfg.level);
        let seed = cfg.seed.unwrap_or(0) ^ (500 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let ci = metrics::fold_mean_ci(&vals, cfg.level, cfg.bootstrap.max(1000), seed);
        across.insert(
            (*k).into(),
            json!({"n": s.n, "level": s.level, "mean": s.mean, "std": s.std,
                   "ci_lo": ci.map(|c| c.0), "ci_hi": ci.map(|c| c.1),
                   "interval": "percentile bootstrap of the mean over folds"}),
        );
    }
    (folds_json, across)
}

/// The sources of the fakes, sorted.
fn fake_sources(p: &Columns) -> Vec<String> {
    let mut sources: Vec<String> = (0..p.items.len())
        .filter(|&i| p.labels[i] == 1)
        .map(|i| p.sources[i].clone())
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

/// Each fake source against all reals: metrics at 0.5, bootstrap CIs, AUC across folds.
fn per_source_json(cfg: &Report, p: &Columns, sources: &[String], folds: &Folds) -> Vec<Value> {
    let n = p.items.len();
    let mut per_source = Vec::new();
    for (si, s) in sources.iter().enumerate() {
        let idx: Vec<usize> = (0..n).filter(|&i| p.labels[i] == 0 || &p.sources[i] == s).collect();
        let (sc, lb) = (sub(&p.score, &idx), sub(&p.labels, &idx));
        let fold_aucs: Vec<f64> = folds
            .idx
            .values()
            .filter_map(|fi| {
                let j: Vec<usize> = fi
                    .iter()
                    .copied()
                    .filter(|&i| p.labels[i] == 0 || &p.sources[i] == s)
                    .collect();
                metrics::auc(&sub(&p.score, &j), &sub(&p.labels, &j))
            })
            .collect();
        per_source.push(json!({
            "source": s,
            "n_fake": lb.iter().filter(|&&l| l == 1).count(),
            "at_default": bin_json(p, &idx, 0.5, cfg.bins),
            "auc_ci": boot(cfg, 100 + si as u64, &sc, &lb, metrics::auc),
            "ap_ci": boot(cfg, 200 + si as u64, &sc, &lb, metrics::average_precision),
            "auc_across_folds": metrics::mean_std_ci(&fold_aucs, cfg.level),
        }));
    }
    per_source
}

/// Each member model: its AUC with a bootstrap CI, and DeLong's test against the ensemble.
fn members_json(cfg: &Report, p: &Columns) -> Vec<Value> {
    let mut members = Vec::new();
    for (name, scores) in &p.members {
        let d = stats::delong(scores, &p.score, &p.labels);
        members.push(json!({
            "name": name,
            "auc": metrics::auc(scores, &p.labels),
            "auc_ci": boot(cfg, 300 + members.len() as u64, scores, &p.labels, metrics::auc),
            "delong_vs_ensemble": d,
        }));
    }
    members
}

/// Cascade curve on the pooled scores.
fn cascade_json(p: &Columns, n_fake: usize) -> Vec<Value> {
    let n = p.items.len();
    (0..=100)
        .map(|k| {
            let t = k as f64 / 100.0;
            let stopped = p.score.iter().filter(|&&s| s < t).count();
            let fakes_stopped = (0..n).filter(|&i| p.labels[i] == 1 && p.score[i] < t).count();
            let reals_passed = (0..n).filter(|&i| p.labels[i] == 0 && p.score[i] >= t).count();
            json!({
                "threshold": t,
                "filtration": stopped as f64 / n as f64,
                "leakage": fakes_stopped as f64 / n_fake as f64,
                "false_alarm": reals_passed as f64 / (n - n_fake) as f64,
            })
        })
        .collect()
}

/// Training histories: gap at the best epoch (by val AUC, else last).
fn training_json(histories: &[(String, Vec<HistRow>)]) -> Vec<Value> {
    let mut training = Vec::new();
    for (from, rows) in histories {
        let best = rows
            .iter()
            .filter(|r| r.val_auc.is_some())
            .max_by(|a, b| a.val_auc.unwrap().total_cmp(&b.val_auc.unwrap()))
            .or(rows.last());
        if let Some(b) = best {
            training.push(json!({
                "from": from,
                "epochs": rows.len(),
                "best_epoch": b.epoch,
                "train_loss": b.train_loss,
                "val_loss": b.val_loss,
                "loss_gap": b.val_loss.map(|v| v - b.train_loss),
                "val_auc": b.val_auc,
            }));
        }
    }
    training
}

fn calibration_json(c: &CalibrationIn) -> Value {
    json!({
        "folds": c.doc.folds.iter().map(|f| json!({
            "fold": f.fold,
            "temperature": f.temperature,
            "test_before": f.test.before,
            "test_after": f.test.after,
        })).collect::<Vec<_>>(),
        "test_before": c.doc.pooled_test.before,
        "test_after": c.doc.pooled_test.after,
    })
}

/// Source hold-out: reals + fakes of trained-on sources vs reals + fakes of held-out ones.
fn holdout_json(p: &Columns, holdout: &[String]) -> Value {
    if holdout.is_empty() {
        return Value::Null;
    }
    let n = p.items.len();
    let pick = |held: bool| -> Option<f64> {
        let idx: Vec<usize> = (0..n)
            .filter(|&i| p.labels[i] == 0 || holdout.contains(&p.sources[i]) == held)
            .collect();
        metrics::auc(&sub(&p.score, &idx), &sub(&p.labels, &idx))
    };
    let (ins, held) = (pick(false), pick(true));
    let delta = ins.zip(held).map(|(a, b)| a - b);
    json!({
        "sources": holdout,
        "in_source_auc": ins,
        "held_out_auc": held,
        "delta": delta,
        "flagged": delta.is_some_and(|d| d > 0.05),
    })
}

fn perr(e: impl std::fmt::Display) -> StageError {
    StageError::msg(format!("plot: {e}"))
}

fn figure(
    stem: &str,
    title: &str,
    read: &str,
    plot: Result<Plot, impl std::fmt::Display>,
) -> Result<Figure, StageError> {
    Ok(Figure {
        stem: stem.into(),
        title: title.into(),
        read: read.into(),
        plot: plot.map_err(perr)?,
        wide: false,
    })
}

fn make_plots(
    cfg: &Report,
    p: &Columns,
    fold_idx: &BTreeMap<u32, Vec<usize>>,
    sources: &[String],
    m: &Value,
    cal: Option<&CalibrationIn>,
    histories: &[(String, Vec<HistRow>)],
) -> Result<Vec<Figure>, StageError> {
    let (bins, order) = (cfg.bins, &cfg.histories);
    let mut out = vec![roc_plot(p, fold_idx, m)?, reliability_plot(p, cal, bins)?];
    out.extend(score_histograms(p, sources)?);
    out.push(confusion_plot(m)?);
    out.push(per_source_auc_plot(m)?);
    out.push(cascade_plot(m)?);
    if !histories.is_empty() {
        out.extend(training_plots(histories, order)?);
    }
    Ok(out)
}

/// ROC curves per fold and pooled.
fn roc_plot(p: &Columns, fold_idx: &BTreeMap<u32, Vec<usize>>, m: &Value) -> Result<Figure, StageError> {
    let roc_series = |name: String, idx: &[usize]| -> Series {
        let (s, l) = (sub(&p.score, idx), sub(&p.labels, idx));
        Series {
            name,
            points: metrics::roc_curve(&s, &l)
                .unwrap_or_default()
                .iter()
                .map(|r| (r.fpr, r.tpr))
                .collect(),
        }
    };
    let mut curves: Vec<Series> = fold_idx
        .iter()
        .map(|(f, idx)| {
            let a = metrics::auc(&sub(&p.score, idx), &sub(&p.labels, idx));
            roc_series(format!("fold {f} (AUC {})", fnum(a, 3)), idx)
        })
        .collect();
    let all: Vec<usize> = (0..p.items.len()).collect();
    curves.push(roc_series(
        format!("pooled (AUC {})", fnum(get(&m["pooled"]["at_default"], "auc"), 3)),
        &all,
    ));
    figure(
        "roc",
        "ROC curves, out of fold",
        "Each fold's curve and the pooled one; curves that hug the top-left corner separate fakes from reals at every threshold. Folds far apart mean the estimate rests on which items a fold got.",
        plots::roc(&curves, "ROC, out-of-fold"),
    )
}

/// Reliability before/after temperature scaling (from the Calibrate stage), else of the
/// ensemble's scores.
fn reliability_plot(p: &Columns, cal: Option<&CalibrationIn>, bins: usize) -> Result<Figure, StageError> {
    let bins_of = |c: &CalibrationIn, which: &str| -> Vec<metrics::Bin> {
        c.reliability
            .iter()
            .filter(|r| r.which == which)
            .map(|r| metrics::Bin {
                lo: r.lo,
                hi: r.hi,
                count: r.count,
                mean_p: r.mean_pred,
                frac_pos: r.frac_pos,
            })
            .collect()
    };
    let (before, after): (Vec<metrics::Bin>, Option<Vec<metrics::Bin>>) = match cal {
        Some(c) if !c.reliability.is_empty() => (bins_of(c, "before"), Some(bins_of(c, "after"))),
        _ => (
            metrics::reliability(&p.score, &p.labels, bins).unwrap_or_default(),
            None,
        ),
    };
    let rel_title = if after.is_some() {
        "Reliability of each fold's test items, before/after temperature scaling"
    } else {
        "Reliability of the ensemble's scores"
    };
    figure(
        "reliability",
        rel_title,
        "Points on the diagonal are calibrated: of the items scored 0.8, 80 % are fakes. Below the diagonal the model is over-confident; temperature scaling should pull the points onto it.",
        plots::reliability(&before, after.as_deref(), "Reliability"),
    )
}

/// Histograms of the ensemble's score by class and by source.
fn score_histograms(p: &Columns, sources: &[String]) -> Result<[Figure; 2], StageError> {
    let n = p.items.len();
    let by = |pred: &dyn Fn(usize) -> bool| -> Vec<f64> { (0..n).filter(|&i| pred(i)).map(|i| p.score[i]).collect() };
    let classes = vec![
        ("real".to_string(), by(&|i| p.labels[i] == 0)),
        ("fake".to_string(), by(&|i| p.labels[i] == 1)),
    ];
    let by_class = figure(
        "scores_by_class",
        "Ensemble score by class",
        "Two well separated humps mean an easy threshold; overlap in the middle is where the errors are.",
        plots::histogram(&classes, 20, "Scores by class", "P(fake)"),
    )?;
    let mut groups = vec![("real".to_string(), by(&|i| p.labels[i] == 0))];
    for s in sources {
        groups.push((s.clone(), by(&|i| p.labels[i] == 1 && &p.sources[i] == s)));
    }
    let by_source = figure(
        "scores_by_source",
        "Ensemble score by source",
        "A fake source whose scores sit near the reals' is the one the detector misses.",
        plots::histogram(&groups, 20, "Scores by source", "P(fake)"),
    )?;
    Ok([by_class, by_source])
}

fn confusion_plot(m: &Value) -> Result<Figure, StageError> {
    let d = &m["pooled"]["at_default"]["confusion"];
    let c = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
    figure(
        "confusion",
        "Confusion matrix at threshold 0.5",
        "Rows are the truth, columns the decision; each cell's share is of its row (recall of fakes, false alarms on reals).",
        plots::confusion(c("tn"), c("fp"), c("fn"), c("tp"), "Confusion matrix (t = 0.5)"),
    )
}

fn per_source_auc_plot(m: &Value) -> Result<Figure, StageError> {
    let bars: Vec<(String, f64, Option<(f64, f64)>)> = m["per_source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ci = match (
                s["auc_ci"].get(0).and_then(Value::as_f64),
                s["auc_ci"].get(1).and_then(Value::as_f64),
            ) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            };
            (
                s["source"].as_str().unwrap_or("").to_string(),
                get(&s["at_default"], "auc").unwrap_or(f64::NAN),
                ci,
            )
        })
        .collect();
    figure(
        "per_source_auc",
        "AUC per fake source (against all reals), bootstrap CI",
        "Whiskers are stratified bootstrap intervals; a source whose interval does not reach the others' is detected differently, and a wide whisker means too few items to say.",
        plots::bars_with_ci(&bars, "AUC per source", "AUC", (0.0, 1.0)),
    )
}

fn cascade_plot(m: &Value) -> Result<Figure, StageError> {
    let casc = m["cascade"].as_array().unwrap();
    let line = |k: &str, name: &str| Series {
        name: name.into(),
        points: casc
            .iter()
            .map(|c| (c["threshold"].as_f64().unwrap(), c[k].as_f64().unwrap()))
            .collect(),
    };
    figure(
        "cascade",
        "Cascade: a filter passing P(fake) ≥ t on to the next stage",
        "Filtration is the work a fast filter saves; leakage the fakes it lets go as real. Read off the largest t whose leakage you can accept.",
        plots::lines(
            &[
                line("filtration", "filtration (items stopped)"),
                line("leakage", "leakage (fakes stopped)"),
                line("false_alarm", "false alarms (reals passed)"),
            ],
            "Cascade thresholds",
            "threshold t",
            "share",
        ),
    )
}

/// Training curves as small multiples: one panel per model generation (the history's stage:
/// `train`, `retrain`), one line per fold in one palette (colour = fold), the legend beside
/// the panels. Validation AUC; and training (solid) and validation (dashed) loss.
fn training_plots(histories: &[(String, Vec<HistRow>)], order: &[String]) -> Result<[Figure; 2], StageError> {
    let split = |from: &str| -> (String, String) {
        match from.split_once('@') {
            Some((s, f)) => (s.to_string(), f.to_string()),
            None => (from.to_string(), String::new()),
        }
    };
    let mut generations: Vec<String> = Vec::new();
    let mut folds: Vec<String> = Vec::new();
    for (from, _) in histories {
        let (g, f) = split(from);
        if !generations.contains(&g) {
            generations.push(g);
        }
        if !folds.contains(&f) {
            folds.push(f);
        }
    }
    // Generations in the order the report lists them (train before retrain).
    generations.sort_by_key(|g| order.iter().position(|o| o == g).unwrap_or(usize::MAX));
    folds.sort_by_key(|f| {
        (
            f.trim_start_matches("fold").parse::<u32>().unwrap_or(u32::MAX),
            f.clone(),
        )
    });
    let colour = |f: &str| folds.iter().position(|x| x == f).unwrap_or(0);
    let legend: Vec<(usize, String)> = folds
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                i,
                if f.is_empty() {
                    "model".into()
                } else {
                    f.replace("fold", "fold ")
                },
            )
        })
        .collect();
    let panels = |lines: &dyn Fn(&[HistRow]) -> PanelLines| -> Vec<plots::Panel> {
        generations
            .iter()
            .map(|g| plots::Panel {
                title: g.clone(),
                lines: histories
                    .iter()
                    .filter(|(from, _)| &split(from).0 == g)
                    .flat_map(|(from, rows)| {
                        let c = colour(&split(from).1);
                        lines(rows)
                            .into_iter()
                            .map(move |(dashed, pts)| (c, dashed, Series::new(from.clone(), pts)))
                    })
                    .collect(),
            })
            .collect()
    };
    let auc = panels(&|rows| {
        vec![(
            false,
            rows.iter()
                .filter_map(|r| r.val_auc.map(|a| (r.epoch as f64, a)))
                .collect(),
        )]
    });
    let mut val_auc = figure(
        "training_val_auc",
        "Validation AUC per epoch, one panel per model generation",
        "Each line is a fold's model on its own validation items. Curves still rising at the last epoch want more epochs; a fine-tuning panel below its first generation means the retraining hurt.",
        plots::small_multiples(&auc, &legend, None, "epoch", "validation AUC"),
    )?;
    val_auc.wide = true;
    let loss = panels(&|rows| {
        vec![
            (false, rows.iter().map(|r| (r.epoch as f64, r.train_loss)).collect()),
            (
                true,
                rows.iter()
                    .filter_map(|r| r.val_loss.map(|v| (r.epoch as f64, v)))
                    .collect(),
            ),
        ]
    });
    let mut loss = figure(
        "training_loss",
        "Training (solid) and validation (dashed) loss per epoch",
        "A validation loss that turns up while the training loss keeps falling is over-fitting: the best epoch (the table) is where the dashed line bottoms out.",
        plots::small_multiples(&loss, &legend, Some(("train loss", "val loss")), "epoch", "loss"),
    )?;
    loss.wide = true;
    Ok([val_auc, loss])
}

fn metric_table_rows(d: &Value, cis: &Value, c: Option<&Value>, across: &Value) -> Vec<Vec<String>> {
    METRIC_ROWS
        .iter()
        .map(|(k, label)| {
            let s = &across[*k];
            let fold = match (get(s, "mean"), get(s, "std")) {
                (Some(mu), Some(sd)) => format!(
                    "{mu:.3} ± {sd:.3} [{}, {}]",
                    fnum(get(s, "ci_lo"), 3),
                    fnum(get(s, "ci_hi"), 3)
                ),
                (Some(mu), None) => format!("{mu:.3}"),
                _ => "–".into(),
            };
            let ci = &cis[*k];
            let ci_text = match (get(ci, "lo"), get(ci, "hi")) {
                (Some(lo), Some(hi)) => format!("[{lo:.3}, {hi:.3}] {}", ci["method"].as_str().unwrap_or("")),
                _ => "–".into(),
            };
            vec![
                label.to_string(),
                fnum(get(d, k), 3),
                ci_text,
                c.map_or("–".into(), |c| fnum(get(c, k), 3)),
                fold,
            ]
        })
        .collect()
}

/// "Source hold-out: …" when the split held sources out.
fn holdout_line(m: &Value) -> Option<String> {
    let h = m.get("holdout").filter(|h| !h.is_null())?;
    let names: Vec<&str> = h["sources"].as_array()?.iter().filter_map(Value::as_str).collect();
    Some(format!(
        "Source hold-out ({}): AUC on trained-on sources {}, on held-out sources {}, Δ {}{}",
        names.join(", "),
        fnum(get(h, "in_source_auc"), 3),
        fnum(get(h, "held_out_auc"), 3),
        fnum(get(h, "delta"), 3),
        if h["flagged"] == true {
            " — FLAGGED: Δ > 0.05, the detector does not generalise to the held-out sources"
        } else {
            ""
        }
    ))
}

/// The metric table: pooled at 0.5 and at the chosen threshold, and across folds.
fn metric_table(m: &Value) -> ([String; 5], Vec<Vec<String>>) {
    let chosen = m["threshold"]["chosen"].as_f64().unwrap_or(0.5);
    let head = [
        "metric".to_string(),
        "pooled, t = 0.5".to_string(),
        format!("{} CI (method)", m["settings"]["level"]),
        format!("pooled, t = {chosen:.3}"),
        "across folds (t = 0.5): mean ± std [fold bootstrap CI]".to_string(),
    ];
    let rows = metric_table_rows(
        &m["pooled"]["at_default"],
        &m["pooled"]["ci_at_default"],
        Some(&m["pooled"]["at_chosen"]),
        &m["across_folds"],
    );
    (head, rows)
}

const PER_SOURCE_HEAD: &[&str] = &[
    "source",
    "fakes",
    "AUC",
    "bootstrap CI",
    "AUC across folds",
    "AP",
    "recall @0.5",
];

fn per_source_rows(m: &Value) -> Vec<Vec<String>> {
    m["per_source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ps| {
            let af = &ps["auc_across_folds"];
            vec![
                ps["source"].as_str().unwrap_or("").to_string(),
                ps["n_fake"].to_string(),
                fnum(get(&ps["at_default"], "auc"), 3),
                ci_text(&ps["auc_ci"], 3),
                format!("{} ± {}", fnum(get(af, "mean"), 3), fnum(get(af, "std"), 3)),
                fnum(get(&ps["at_default"], "average_precision"), 3),
                fnum(get(&ps["at_default"], "recall"), 3),
            ]
        })
        .collect()
}

const MEMBER_HEAD: &[&str] = &["member", "AUC", "CI", "ΔAUC vs ensemble", "p"];

/// The members' rows, when the ensemble has members.
fn member_rows(m: &Value) -> Option<Vec<Vec<String>>> {
    let ms = m["members"].as_array().filter(|a| !a.is_empty())?;
    let rows = ms
        .iter()
        .map(|mm| {
            let d = &mm["delong_vs_ensemble"];
            vec![
                mm["name"].as_str().unwrap_or("").to_string(),
                fnum(get(mm, "auc"), 3),
                ci_text(&mm["auc_ci"], 3),
                fnum(get(d, "diff"), 4),
                fnum(get(d, "p_value"), 4),
            ]
        })
        .collect();
    Some(rows)
}

const PER_FOLD_HEAD: &[&str] = &["fold", "items", "AUC", "accuracy", "ECE"];

fn per_fold_rows(m: &Value) -> Vec<Vec<String>> {
    m["per_fold"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let d = &f["at_default"];
            vec![
                f["fold"].to_string(),
                f["n"].to_string(),
                fnum(get(d, "auc"), 3),
                fnum(get(d, "accuracy"), 3),
                fnum(get(d, "ece"), 3),
            ]
        })
        .collect()
}

const TRAINING_HEAD: &[&str] = &["instance", "epochs", "best", "train loss", "val loss", "gap", "val AUC"];

/// The training histories' rows, when there are histories.
fn training_rows(m: &Value) -> Option<Vec<Vec<String>>> {
    let ts = m["training"].as_array().filter(|a| !a.is_empty())?;
    let rows = ts
        .iter()
        .map(|t| {
            vec![
                t["from"].as_str().unwrap_or("").to_string(),
                t["epochs"].to_string(),
                t["best_epoch"].to_string(),
                fnum(get(t, "train_loss"), 4),
                fnum(get(t, "val_loss"), 4),
                fnum(get(t, "loss_gap"), 4),
                fnum(get(t, "val_auc"), 3),
            ]
        })
        .collect();
    Some(rows)
}

const CALIBRATION_HEAD: &[&str] = &["fold", "T", "ECE before", "ECE after", "NLL before", "NLL after"];

/// The calibration's rows (one per fold), when the report has a Calibrate input.
fn calibration_rows(m: &Value) -> Option<Vec<Vec<String>>> {
    let c = m["calibration"].as_object()?;
    let rows = c
        .get("folds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                f["fold"].to_string(),
                fnum(get(f, "temperature"), 3),
                fnum(get(&f["test_before"], "ece"), 4),
                fnum(get(&f["test_after"], "ece"), 4),
                fnum(get(&f["test_before"], "nll"), 4),
                fnum(get(&f["test_after"], "nll"), 4),
            ]
        })
        .collect();
    Some(rows)
}

/// What the report knows beyond the predictions: the experiment (provenance) and the dataset.
#[derive(Default)]
pub struct Extra<'a> {
    pub experiment: Option<&'a Experiment>,
    pub dataset: Option<&'a [Item]>,
    pub spectrum: Option<&'a Path>,
}

fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// A param value for a table cell: strings bare, everything else as compact JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The output identity of a stage: its one hash, or `N instances` and a digest of their hashes.
fn outputs_text(o: &BTreeMap<String, String>) -> String {
    match o.len() {
        0 => "–".into(),
        1 => short(o.values().next().unwrap()),
        n => {
            let all: String = o.values().cloned().collect::<Vec<_>>().join(",");
            format!("{n} instances, {}", short(&blake3::hash(all.as_bytes()).to_hex()))
        }
    }
}

/// `provenance` of metrics.json: the experiment, the dataset's identity, versions.
fn provenance_json(x: &Extra<'_>) -> Value {
    let Some(e) = x.experiment else {
        return json!({"pipeline": Value::Null, "run_facts": "../run.json"});
    };
    let stages: Vec<Value> = e
        .stages
        .iter()
        .map(|s| {
            let (mut set, mut dflt) = (serde_json::Map::new(), serde_json::Map::new());
            let mut shared = Vec::new();
            if let Value::Object(p) = &s.params {
                for (k, v) in p {
                    if s.written.contains(k) {
                        set.insert(k.clone(), v.clone());
                    } else if e.defaults.get(k) == Some(v) {
                        set.insert(k.clone(), v.clone());
                        shared.push(k.clone());
                    } else {
                        dflt.insert(k.clone(), v.clone());
                    }
                }
            }
            json!({"name": s.name, "kind": s.kind, "version": s.version, "set": set, "defaults": dflt,
                   "from_pipeline_defaults": shared, "env": s.env, "outputs": s.outputs})
        })
        .collect();
    let of_kind = |k: &str| e.stages.iter().find(|s| s.kind == k);
    let libtorch = e.stages.iter().find_map(|s| s.env.get("libtorch").cloned());
    json!({
        "pipeline": {"name": e.pipeline},
        "stages": stages,
        "dataset": dataset_json(x, of_kind("Ingest")),
        "split": of_kind("Split").map(|s| json!({"stage": s.name, "output": s.outputs.values().next()})),
        "versions": {"flow": env!("CARGO_PKG_VERSION"), "libtorch": libtorch},
        "run_facts": "../run.json",
    })
}

/// Counts per label and source and image sizes of the dataset input; how many images are
/// smaller than the Preprocess size (upscaled).
fn dataset_json(x: &Extra<'_>, ingest: Option<&ExperimentStage>) -> Value {
    let Some(items) = x.dataset else {
        return ingest.map_or(
            Value::Null,
            |i| json!({"stage": i.name, "output": i.outputs.values().next()}),
        );
    };
    let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sizes: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for it in items {
        *by_label.entry(if it.label == 1 { "fake" } else { "real" }).or_default() += 1;
        *by_source.entry(it.source.as_str()).or_default() += 1;
        *sizes.entry((it.width, it.height)).or_default() += 1;
    }
    let size = x.experiment.and_then(|e| {
        e.stages
            .iter()
            .find(|s| s.kind == "Preprocess")
            .and_then(|s| s.params.get("size").and_then(Value::as_u64))
    });
    let upscaled = size.map(|sz| items.iter().filter(|i| u64::from(i.width.min(i.height)) < sz).count());
    let mut common: Vec<((u32, u32), usize)> = sizes.into_iter().collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    json!({
        "stage": ingest.map(|i| i.name.clone()),
        "output": ingest.and_then(|i| i.outputs.values().next().cloned()),
        "items": items.len(),
        "by_label": by_label,
        "by_source": by_source,
        "sizes": common.iter().take(5).map(|((w, h), n)| json!({"width": w, "height": h, "items": n})).collect::<Vec<_>>(),
        "distinct_sizes": common.len(),
        "preprocess_size": size,
        "upscaled": upscaled,
    })
}

/// What makes the analysis weak or suspicious, in words (see the module doc).
fn warnings(m: &Value, cal: Option<&CalibrationIn>, p: &Columns) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(c) = cal {
        for f in &c.doc.folds {
            let t = f.temperature;
            if !(1.001e-3..=0.999e3).contains(&t) {
                w.push(format!(
                    "Fold {}: the temperature {t:.4} sits at the bound of its search [0.001, 1000]: the scores carry (almost) no ranking the calibration could use, or the validation set is degenerate.",
                    f.fold
                ));
            }
        }
        let on_train: Vec<String> = c
            .doc
            .folds
            .iter()
            .filter(|f| f.fit_on != "val")
            .map(|f| f.fold.to_string())
            .collect();
        if !on_train.is_empty() {
            w.push(format!(
                "Calibration of fold(s) {} was fitted on training items (no validation items: Split's val_ratio is 0): the temperatures are optimistic and the before/after numbers on them mean little.",
                on_train.join(", ")
            ));
        }
    }
    let d = &m["provenance"]["dataset"];
    if let (Some(up), Some(sz)) = (d["upscaled"].as_u64(), d["preprocess_size"].as_u64()) {
        if up > 0 {
            w.push(format!(
                "{up} of {} images are smaller than the preprocessing size {sz} px and were upscaled: up-sampling leaves a spectral fingerprint a detector can learn instead of the manipulation.",
                d["items"]
            ));
        }
    }
    for s in m["per_source"].as_array().into_iter().flatten() {
        let n = s["n_fake"].as_u64().unwrap_or(0);
        if n < 30 {
            w.push(format!(
                "Source \u{201c}{}\u{201d} has {n} fakes: its AUC and interval rest on too few items to compare with the others.",
                s["source"].as_str().unwrap_or("")
            ));
        }
    }
    let k = m["folds"].as_array().map_or(0, Vec::len);
    if (2..=5).contains(&k) {
        let min_p = 2.0 / f64::powi(2.0, k as i32);
        w.push(format!(
            "Fold-paired tests over {k} folds (the Wilcoxon signed-rank test of flow compare) cannot reach p < 0.05: the smallest attainable two-sided p is {min_p:.4}. Use DeLong on the pooled out-of-fold items, more folds or repeated seeds."
        ));
    }
    // (fold, AUC, its sampling standard error: Hanley & McNeil 1982, from its class counts).
    let aucs: Vec<(u64, f64, f64)> = m["per_fold"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let a = f["at_default"]["auc"].as_f64()?;
            let c = &f["at_default"]["confusion"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0) as f64;
            Some((f["fold"].as_u64()?, a, auc_se(a, n("tp") + n("fn"), n("tn") + n("fp"))))
        })
        .collect();
    if aucs.len() >= 3 {
        for &(f, a, se) in &aucs {
            let mut rest: Vec<f64> = aucs.iter().filter(|x| x.0 != f).map(|x| x.1).collect();
            rest.sort_by(f64::total_cmp);
            let med = rest[rest.len() / 2];
            let mut dev: Vec<f64> = rest.iter().map(|x| (x - med).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = dev[dev.len() / 2];
            // Far beyond the fold's own sampling noise and the others' spread.
            if (a - med).abs() > (3.0 * se).max(3.0 * 1.4826 * mad).max(0.05) {
                w.push(format!(
                    "Fold {f}'s AUC {a:.3} is far from the other folds' (median {med:.3}; more than 3 of its standard errors, {se:.3}): look at what that fold's test items have in common."
                ));
            }
        }
    }
    for (i, (a, sa)) in p.members.iter().enumerate() {
        for (b, sb) in p.members.iter().skip(i + 1) {
            if let Some(d) = stats::delong(sa, sb, &p.labels) {
                if d.p_value.is_some_and(|pv| pv < 0.05) {
                    let (worse, better, diff) = if d.diff < 0.0 { (a, b, -d.diff) } else { (b, a, d.diff) };
                    w.push(format!(
                        "Ensemble member \u{201c}{worse}\u{201d} is significantly worse than \u{201c}{better}\u{201d} (DeLong on the same items: ΔAUC {diff:.3}, p = {:.4}); the ensemble still averages it in — consider dropping it.",
                        d.p_value.unwrap_or(f64::NAN)
                    ));
                }
            }
        }
    }
    w
}

/// Standard error of an AUC `a` from `pos` fakes and `neg` reals (Hanley & McNeil 1982).
fn auc_se(a: f64, pos: f64, neg: f64) -> f64 {
    if pos < 1.0 || neg < 1.0 {
        return f64::INFINITY;
    }
    let (q1, q2) = (a / (2.0 - a), 2.0 * a * a / (1.0 + a));
    ((a * (1.0 - a) + (pos - 1.0) * (q1 - a * a) + (neg - 1.0) * (q2 - a * a)) / (pos * neg))
        .max(0.0)
        .sqrt()
}

/// The provenance section: the experiment, the dataset, the run facts (from `../run.js`).
fn provenance_section(m: &Value) -> Section {
    let pv = &m["provenance"];
    let mut blocks = Vec::new();
    let mut kv: Vec<Vec<String>> = Vec::new();
    let push = |kv: &mut Vec<Vec<String>>, k: &str, v: String| kv.push(vec![k.to_string(), v]);
    push(
        &mut kv,
        "pipeline",
        pv["pipeline"]["name"].as_str().unwrap_or("–").to_string(),
    );
    let d = &pv["dataset"];
    if !d.is_null() {
        let mut t = match d["output"].as_str() {
            Some(h) => format!("stage {}, output {}", d["stage"].as_str().unwrap_or("?"), short(h)),
            None => "–".into(),
        };
        if let Some(n) = d["items"].as_u64() {
            let counts = |o: &Value| {
                o.as_object()
                    .map(|o| o.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            let _ = write!(
                t,
                "; {n} items ({}); sources: {}",
                counts(&d["by_label"]),
                counts(&d["by_source"])
            );
            let sizes: Vec<String> = d["sizes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| format!("{}×{} ({})", s["width"], s["height"], s["items"]))
                .collect();
            let _ = write!(t, "; image sizes: {}", sizes.join(", "));
            if d["distinct_sizes"].as_u64().unwrap_or(0) > 5 {
                let _ = write!(t, " and {} more", d["distinct_sizes"].as_u64().unwrap_or(0) - 5);
            }
        }
        push(&mut kv, "dataset", t);
    }
    if let Some(h) = pv["split"]["output"].as_str() {
        push(
            &mut kv,
            "split",
            format!(
                "stage {}, output {} (reports with this hash share their folds)",
                pv["split"]["stage"].as_str().unwrap_or("?"),
                short(h)
            ),
        );
    }
    push(
        &mut kv,
        "versions",
        format!(
            "flow {}{}",
            pv["versions"]["flow"].as_str().unwrap_or("?"),
            pv["versions"]["libtorch"]
                .as_str()
                .map(|v| format!(", libtorch {v}"))
                .unwrap_or_default()
        ),
    );
    blocks.push(Block::Table {
        head: vec!["what".into(), "identity".into()],
        rows: kv,
    });
    let rows: Vec<Vec<String>> = pv["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let shared: Vec<&str> = s["from_pipeline_defaults"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let pairs = |o: &Value| {
                o.as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                let from = if shared.contains(&k.as_str()) {
                                    " (pipeline defaults)"
                                } else {
                                    ""
                                };
                                format!("{k}: {}{from}", value_text(v))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            let outputs: BTreeMap<String, String> = serde_json::from_value(s["outputs"].clone()).unwrap_or_default();
            vec![
                s["name"].as_str().unwrap_or("").to_string(),
                format!("{} v{}", s["kind"].as_str().unwrap_or(""), s["version"]),
                outputs_text(&outputs),
                pairs(&s["set"]),
                pairs(&s["defaults"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        blocks.push(Block::Note(
            "Every stage this report depends on: the params the pipeline file sets, the defaults it left, and the content hash of what each stage made (equal hashes: equal results)."
                .into(),
        ));
        blocks.push(Block::Table {
            head: ["stage", "kind", "output", "set in the pipeline", "defaults"]
                .map(String::from)
                .to_vec(),
            rows,
        });
    }
    // The run facts rows are this report's own (its stage is the experiment's last).
    let own = pv["stages"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|s| s["name"].as_str())
        .unwrap_or("");
    blocks.push(Block::Html {
        html: RUN_FACTS_HTML
            .replace("{stage}", &esc(own))
            .replace("{experiment}", &esc(pv["pipeline"]["name"].as_str().unwrap_or(""))),
        md_alt: md("Run facts (dates, wall time per stage, device, host, git commit, pipeline file hash): ../run.json, written by each flow run next to this report's directory."),
    });
    Section {
        id: "provenance",
        title: "Provenance".into(),
        blocks,
    }
}

/// Filled from `../run.js` (written by `flow run`; not part of this cached page, which holds no
/// dates or durations). Without it the paragraph says where the facts are.
const RUN_FACTS_HTML: &str = "<div id=\"run-facts\" data-stage=\"{stage}\" data-experiment=\"{experiment}\"><p class=\"note\">Run facts (dates, wall time per stage, device, host, git commit, pipeline file hash) are in <code>../run.json</code>, written by each <code>flow run</code> next to this report's directory.</p></div>\
<script src=\"../run.js\"></script><script>(function(){var r=window.FLOW_RUN;if(!r)return;\
function e(t,x){var n=document.createElement(t);if(x!==undefined)n.textContent=x;return n}\
var d=document.getElementById('run-facts');d.textContent='';d.appendChild(e('h3','Run facts'));\
var me=(r.instances||[]).filter(function(i){return i.ran});var own=d.getAttribute('data-stage');var ex=d.getAttribute('data-experiment');\
var vr=ex.indexOf('/')>=0?ex.split('/').pop():null;function inv(i){return !i.variants||!vr||i.variants.indexOf(vr)>=0}\
var last=me.filter(function(i){return i.experiment?i.local===own&&i.experiment===ex:i.stage===own})[0]||{};\
var kv=e('table');kv.className='kv rf';function row(k,v){var tr=e('tr');tr.appendChild(e('td',k));tr.appendChild(e('td',v));kv.appendChild(tr)}\
if(last.view_not_updated){var wn=e('p','These run facts describe a newer result of this report than this page: its view under out/ was not updated ('+last.view_not_updated+').');wn.className='warn';d.appendChild(wn)}\
if(last.pipeline_file)row('pipeline file',last.pipeline_file.path+' (blake3 '+last.pipeline_file.blake3.slice(0,12)+')'+(last.set&&last.set.length?' with --set '+last.set.join(' --set '):''));\
row('git commit',last.git?last.git.commit.slice(0,12)+(last.git.dirty?' (uncommitted changes)':''):'not a git work tree');\
if(last.started)row('report computed',last.started.replace('T',' '));if(last.host)row('host',last.host);\
if(last.flow_version)row('flow',last.flow_version);d.appendChild(kv);\
var rl=document.getElementById('run-line');if(rl&&last.started&&!last.view_not_updated)rl.textContent='· computed '+last.started.replace('T',' ')+(last.git?' at commit '+last.git.commit.slice(0,10)+(last.git.dirty?' (uncommitted changes)':''):'');\
var t=e('table');t.className='rf';var h=e('tr');['stage','instances','wall time (s)','device','first computed'].forEach(function(x){h.appendChild(e('th',x))});t.appendChild(h);\
(r.stages||[]).forEach(function(s){var is=me.filter(function(i){return i.stage===s.stage&&inv(i)});if(!is.length&&me.some(function(i){return i.stage===s.stage}))return;var dev=is.map(function(i){return i.device}).filter(function(x){return x}).filter(function(x,k,a){return a.indexOf(x)===k}).join(', ');\
var first=is.map(function(i){return i.started}).sort()[0]||'';var tr=e('tr');[s.stage,String(s.instances),s.seconds.toFixed(1),dev||'–',first.replace('T',' ')].forEach(function(x){tr.appendChild(e('td',x))});t.appendChild(tr)});\
var w=e('div');w.className='scroll';w.appendChild(t);d.appendChild(w)})();</script>";

/// The spectrum section from a Spectrum artifact in `dir`, and its images (copied into
/// `plots/` as `spectrum-<name>`, embedded in the page as `data:` URIs).
fn spectrum_section(dir: &Path) -> Result<(Section, Copies), StageError> {
    use base64::Engine as _;
    let doc = SpectrumDoc::read(dir).map_err(StageError::msg)?;
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| err(&dir.join(name), e));
    let mut files = Vec::new();
    let mut blocks = vec![Block::Para(format!(
        "The classic check for generator fingerprints, before any model: the mean log-magnitude Fourier spectrum of the preprocessed {} px images per class and source (zero frequency in the centre), how each fake group differs from the reals (red: more energy than reals, blue: less), and the azimuthal average (energy per spatial frequency). Up-sampling leaves periodic peaks and a missing high-frequency band; a detector can learn those instead of the manipulation.",
        doc.size
    ))];
    blocks.push(Block::Note(doc.method.clone()));
    let svg = String::from_utf8(read(&doc.azimuthal_svg)?)
        .map_err(|e| StageError::msg(format!("{}: {e}", doc.azimuthal_svg)))?;
    let az_name = format!("spectrum-{}", doc.azimuthal_png);
    files.push((az_name.clone(), read(&doc.azimuthal_png)?));
    blocks.push(Block::Html {
        html: format!(
            "<div class=\"grid\"><figure id=\"fig-spectrum-azimuthal\">{svg}<figcaption><b>Azimuthal average.</b> Mean log magnitude per spatial frequency (1 = Nyquist), one line per group; a fake group that leaves the reals' curve at high frequencies carries a resampling fingerprint.</figcaption></figure></div>"
        ),
        md_alt: format!("![Azimuthal average](plots/{az_name})"),
    });
    let mut cells = String::from("<div class=\"grid spectra\">");
    let mut md_alt = String::new();
    for g in &doc.groups {
        for (png, what) in [
            (Some(&g.png), "mean spectrum"),
            (g.diff_png.as_ref(), "difference to real"),
        ] {
            let Some(png) = png else { continue };
            let bytes = read(png)?;
            let uri = format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            );
            let name = format!("spectrum-{png}");
            let caption = format!("{} ({} images): {what}", g.name, g.n);
            let _ = write!(
                cells,
                "<figure><img src=\"{}\" alt=\"{}\" style=\"image-rendering:pixelated\"><figcaption>{}</figcaption></figure>",
                esc(&uri),
                esc(&caption),
                esc(&caption)
            );
            let _ = write!(md_alt, "![{}](plots/{name}) ", md(&caption));
            files.push((name, bytes));
        }
    }
    cells.push_str("</div>");
    blocks.push(Block::Html { html: cells, md_alt });
    Ok((
        Section {
            id: "spectrum",
            title: "Spectrum: generator fingerprints in the data".into(),
            blocks,
        },
        files,
    ))
}

/// One line at the top saying which experiment this is (the details are in the provenance
/// section); the run's date and commit are filled in from `../run.js` where it is present.
fn identity_line(m: &Value) -> Vec<Block> {
    let pv = &m["provenance"];
    let Some(name) = pv["pipeline"]["name"].as_str() else {
        return Vec::new();
    };
    let mut parts = vec![format!("Pipeline {name}")];
    if let Some(h) = pv["dataset"]["output"].as_str() {
        parts.push(format!("dataset {}", short(h)));
    }
    if let Some(h) = pv["split"]["output"].as_str() {
        parts.push(format!("split {}", short(h)));
    }
    parts.push(format!(
        "flow {}{}",
        pv["versions"]["flow"].as_str().unwrap_or("?"),
        pv["versions"]["libtorch"]
            .as_str()
            .map(|v| format!(", libtorch {v}"))
            .unwrap_or_default()
    ));
    let text = parts.join(" · ");
    vec![Block::Html {
        html: format!(
            "<p class=\"note\" id=\"identity\">{} <span id=\"run-line\"></span> (see Provenance)</p>",
            esc(&text)
        ),
        md_alt: format!("_{} (see Provenance)_", md(&text)),
    }]
}

/// The whole report as one document.
fn document(m: &Value, figures: Vec<Figure>) -> Doc {
    let name = m["provenance"]["pipeline"]["name"].as_str();
    let title = match name {
        Some(n) => format!("Report — {n}"),
        None => "Report".into(),
    };
    let mut summary = identity_line(m);
    summary.extend([
        Block::Para(format!(
            "{} items ({} real, {} fake), {} folds, sources: {}. Out-of-fold predictions: each item is scored by models that never trained on it.",
            m["n"],
            m["n_real"],
            m["n_fake"],
            m["folds"].as_array().map_or(0, |a| a.len()),
            m["sources"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
        )),
        Block::Para(format!(
            "Pooled AUC {} (stratified bootstrap {} CI {}), EER {}.",
            fnum(get(&m["pooled"]["at_default"], "auc"), 3),
            m["settings"]["level"],
            ci_text(&m["pooled"]["auc_ci"], 3),
            fnum(get(&m["pooled"], "eer"), 3)
        )),
    ]);
    let w: Vec<String> = m["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    if !w.is_empty() {
        summary.push(Block::Warnings(w));
    }
    let (head, rows) = metric_table(m);
    summary.push(Block::Table {
        head: head.to_vec(),
        rows,
    });
    summary.push(Block::Note(format!(
        "Intervals: pooled rates (accuracy, precision, recall, false alarm rate) Wilson score; the other pooled metrics a stratified percentile bootstrap ({} resamples); across folds a percentile bootstrap of the mean over folds (inside the folds' range, so a rate's interval stays in [0, 1]). Chosen threshold: {}.",
        m["settings"]["bootstrap"],
        m["threshold"]["chosen_from"].as_str().unwrap_or("")
    )));
    if let Some(h) = holdout_line(m) {
        summary.push(Block::Para(h));
    }
    let mut sections = vec![Section {
        id: "summary",
        title: "Summary".into(),
        blocks: summary,
    }];
    let table = |head: &[&str], rows: Vec<Vec<String>>| Block::Table {
        head: head.iter().map(|h| h.to_string()).collect(),
        rows,
    };
    let mut results = vec![
        Block::Para("Each fake source against all reals.".into()),
        table(PER_SOURCE_HEAD, per_source_rows(m)),
        Block::Para("Per fold (t = 0.5).".into()),
        table(PER_FOLD_HEAD, per_fold_rows(m)),
    ];
    if let Some(rows) = member_rows(m) {
        results.push(Block::Para(
            "Members vs the ensemble (DeLong on the same items).".into(),
        ));
        results.push(table(MEMBER_HEAD, rows));
    }
    sections.push(Section {
        id: "tables",
        title: "Per source, per fold, per member".into(),
        blocks: results,
    });
    let mut model = Vec::new();
    if let Some(rows) = training_rows(m) {
        model.push(Block::Para("Training (best epoch by validation AUC).".into()));
        model.push(table(TRAINING_HEAD, rows));
    }
    if let Some(rows) = calibration_rows(m) {
        model.push(Block::Para(
            "Calibration (temperature per fold, each fold's test items).".into(),
        ));
        model.push(table(CALIBRATION_HEAD, rows));
    }
    if !model.is_empty() {
        sections.push(Section {
            id: "training",
            title: "Training and calibration".into(),
            blocks: model,
        });
    }
    sections.push(Section {
        id: "plots",
        title: "Plots".into(),
        blocks: vec![Block::Figures(figures.iter().map(|f| f.stem.clone()).collect())],
    });
    sections.push(provenance_section(m));
    Doc {
        title,
        sections,
        figures,
        data: "metrics.json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Report {
        Report {
            predictions: "infer".into(),
            calibration: None,
            histories: vec![],
            split: None,
            dataset: None,
            spectrum: None,
            threshold: Some(0.6),
            bootstrap: 50,
            level: 0.95,
            bins: 5,
            seed: Some(1),
        }
    }

    /// 40 items over 2 folds; the source and member names are hostile HTML.
    fn preds(source: &str) -> Columns {
        let n = 40;
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let score: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 97) as f64 / 97.0 * 0.6 + 0.4 * (i % 2) as f64)
            .collect();
        Columns {
            items: (0..n).map(|i| format!("img_{i}.png")).collect(),
            sources: labels
                .iter()
                .map(|&l| if l == 1 { source.to_string() } else { "real".into() })
                .collect(),
            folds: (0..n).map(|i| (i / 2 % 2) as u32).collect(),
            members: vec![(
                "<b>m</b>".into(),
                score
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s * 0.8 + 0.2 * ((i * 31 % 17) as f64 / 17.0))
                    .collect(),
            )],
            labels,
            score,
        }
    }

    #[test]
    fn names_from_the_data_are_escaped_everywhere() {
        let evil = "<script>alert(1)</script>";
        let b = build(&cfg(), &preds(evil), None, &[], &[]).unwrap();
        assert!(!b.html.contains("<script>alert"), "index.html executes a name");
        assert_eq!(
            b.html.matches("<script").count(),
            2,
            "only the run-facts loader and its renderer"
        );
        assert!(b.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!b.html.contains("<b>m</b>"));
        assert!(!b.markdown.contains("<script"), "report.md renders HTML on GitHub");
        for f in &b.plots {
            assert!(!f.plot.svg.contains("<script"));
        }
        assert_eq!(
            b.metrics["per_source"][0]["source"], evil,
            "metrics.json keeps the raw name"
        );
        // Each format escapes for itself: report.md is Markdown, not HTML.
        let b = build(&cfg(), &preds("o'neil|gan_*v2*"), None, &[], &[]).unwrap();
        assert!(
            b.markdown.contains("| o'neil\\|gan\\_\\*v2\\* |"),
            "report.md: the name as one readable table cell\n{}",
            b.markdown
        );
        assert!(b.markdown.contains("### Reliability of the ensemble's scores"));
        for entity in ["&#39;", "&quot;", "&amp;"] {
            assert!(!b.markdown.contains(entity), "report.md holds the HTML entity {entity}");
        }
        assert!(b.html.contains("o&#39;neil|gan_*v2*"), "index.html escapes for HTML");
    }

    #[test]
    fn markdown_escapes_only_what_markdown_reads() {
        assert_eq!(md("o'neil \"q\" co"), "o'neil \"q\" co");
        assert_eq!(md("a|b\\c*d_e`f"), "a\\|b\\\\c\\*d\\_e\\`f");
        assert_eq!(md("# x #1"), "\\# x \\#1");
        assert_eq!(md("  > quote, a > b"), "  \\> quote, a \\> b");
        assert_eq!(md("<script>1 < 2</script>"), "&lt;script\\>1 \\< 2&lt;/script\\>");
        assert_eq!(
            md("<!-- c --> <?x <http://a>"),
            "&lt;\\!-- c --\\> &lt;?x &lt;http://a\\>"
        );
        // Images, links, strikethrough, entities and a row-breaking newline (adversarial pass).
        assert_eq!(
            md("![t](https://e/p.png) [x](javascript:1) ~~s~~ &lt; a\nb"),
            "\\!\\[t\\](https://e/p.png) \\[x\\](javascript:1) \\~\\~s\\~\\~ \\&lt; a b"
        );
    }

    #[test]
    fn metrics_json_has_the_stable_keys() {
        let b = build(&cfg(), &preds("gan"), None, &[], &[]).unwrap();
        let m = &b.metrics;
        assert_eq!(m["n"], 40);
        assert_eq!(m["threshold"]["chosen"], 0.6);
        assert_eq!(m["threshold"]["chosen_from"], "param");
        for k in ["at_default", "at_chosen", "eer", "auc_ci", "ap_ci"] {
            assert!(!m["pooled"][k].is_null(), "pooled.{k}");
        }
        assert_eq!(m["pooled"]["at_chosen"]["threshold"], 0.6);
        assert_eq!(m["per_fold"].as_array().unwrap().len(), 2);
        assert_eq!(m["across_folds"]["auc"]["n"], 2);
        assert_eq!(m["cascade"].as_array().unwrap().len(), 101);
        assert!(m["members"][0]["delong_vs_ensemble"]["p_value"].is_number());
        // Pooled AUC equals metrics::auc on the raw vectors.
        let p = preds("gan");
        assert_eq!(
            m["pooled"]["at_default"]["auc"].as_f64(),
            metrics::auc(&p.score, &p.labels)
        );
    }

    #[test]
    fn every_markdown_table_is_in_the_page_and_intervals_stay_in_range() {
        let b = build(&cfg(), &preds("gan"), None, &[], &[]).unwrap();
        let heads: Vec<&str> = b.markdown.lines().filter(|l| l.starts_with("| ")).collect();
        let tables = b.markdown.matches("\n|---").count();
        assert!(tables >= 4, "{}", b.markdown);
        assert_eq!(b.html.matches("<table").count(), tables, "{heads:?}");
        for (k, v) in b.metrics["across_folds"].as_object().unwrap() {
            if k == "log_loss" {
                continue;
            }
            for end in ["ci_lo", "ci_hi"] {
                if let Some(x) = v[end].as_f64() {
                    assert!((0.0..=1.0).contains(&x), "{k}.{end} = {x}");
                }
            }
        }
        let ci = &b.metrics["pooled"]["ci_at_default"];
        assert_eq!(ci["recall"]["method"], "Wilson");
        assert_eq!(ci["auc"]["method"], "bootstrap");
        let w = b.metrics["warnings"].as_array().unwrap();
        assert!(
            w.iter().any(|x| x
                .as_str()
                .unwrap()
                .contains("smallest attainable two-sided p is 0.5000")),
            "2 folds: {w:?}"
        );
        assert!(b.html.contains("id=\"warnings\"") && b.markdown.contains("> **Warnings**"));
    }

    /// 4 folds × 60 items; fold 3 (or none) is nearly random; a second member `bad` that is
    /// noise (or a copy of the first).
    fn warn_preds(outlier: bool, bad_member: bool) -> Columns {
        let n = 240;
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let folds: Vec<u32> = (0..n).map(|i| (i / 2 % 4) as u32).collect();
        let noise = |i: usize| ((i * 7919 + 13) % 101) as f64 / 101.0;
        let score: Vec<f64> = (0..n)
            .map(|i| {
                if outlier && folds[i] == 3 {
                    noise(i)
                } else {
                    0.5 * noise(i) + 0.5 * labels[i] as f64
                }
            })
            .collect();
        let second: Vec<f64> = if bad_member {
            (0..n).map(|i| noise(i * 3 + 1)).collect()
        } else {
            score.clone()
        };
        Columns {
            items: (0..n).map(|i| format!("i{i}")).collect(),
            sources: labels
                .iter()
                .map(|&l| if l == 1 { "gan".into() } else { "real".into() })
                .collect(),
            folds,
            members: vec![("good".into(), score.clone()), ("bad".into(), second)],
            labels,
            score,
        }
    }

    fn warned(c: &Columns, extra: &Extra<'_>) -> Vec<String> {
        let b = build_with(&cfg(), c, None, &[], &[], extra).unwrap();
        b.metrics["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn each_warning_fires_when_and_only_when_its_condition_holds() {
        let has = |w: &[String], s: &str| w.iter().any(|x| x.contains(s));
        let calm = warned(&warn_preds(false, false), &Extra::default());
        for s in [
            "far from the other folds",
            "significantly worse",
            "too few items",
            "upscaled",
        ] {
            assert!(!has(&calm, s), "{s}: {calm:?}");
        }
        assert!(
            has(&calm, "smallest attainable two-sided p is 0.1250"),
            "4 folds: {calm:?}"
        );
        let w = warned(&warn_preds(true, false), &Extra::default());
        assert!(has(&w, "Fold 3's AUC"), "{w:?}");
        let w = warned(&warn_preds(false, true), &Extra::default());
        assert!(
            has(
                &w,
                "member \u{201c}bad\u{201d} is significantly worse than \u{201c}good\u{201d}"
            ),
            "{w:?}"
        );
        // 20 fakes of one source: too few for its interval.
        let w = warned(&preds("gan"), &Extra::default());
        assert!(has(&w, "has 20 fakes"), "{w:?}");
        // Images smaller than the Preprocess size were upscaled.
        let item = |i: usize, side: u32| Item {
            item: format!("i{i}"),
            path: format!("i{i}.png"),
            hash: String::new(),
            label: (i % 2) as u8,
            source: "gan".into(),
            group: format!("g{i}"),
            width: side,
            height: side,
            format: "png".into(),
            split: String::new(),
        };
        let exp = Experiment {
            pipeline: "p".into(),
            defaults: Default::default(),
            stages: vec![ExperimentStage {
                name: "pre".into(),
                kind: "Preprocess".into(),
                version: 1,
                params: json!({"size": 32}),
                written: vec!["size".into()],
                env: Default::default(),
                outputs: Default::default(),
            }],
        };
        for (side, fires) in [(16, true), (32, false)] {
            let items: Vec<Item> = (0..10).map(|i| item(i, side)).collect();
            let extra = Extra {
                experiment: Some(&exp),
                dataset: Some(&items),
                spectrum: None,
            };
            let w = warned(&warn_preds(false, false), &extra);
            assert_eq!(
                has(&w, "10 of 10 images are smaller than the preprocessing size 32 px"),
                fires,
                "{side}: {w:?}"
            );
        }
    }

    #[test]
    fn one_class_predictions_are_a_clear_error() {
        let mut p = preds("gan");
        p.labels.iter_mut().for_each(|l| *l = 0);
        let e = build(&cfg(), &p, None, &[], &[]).err().unwrap();
        assert!(e.to_string().contains("only real items"), "{e}");
    }

    #[test]
    fn a_held_out_source_is_compared_and_flagged() {
        // Fakes of "seen" are scored high, of "unseen" like reals.
        let n = 60;
        let labels: Vec<u8> = (0..n).map(|i| u8::from(i % 3 != 0)).collect();
        let sources: Vec<String> = (0..n)
            .map(|i| match i % 3 {
                0 => "real".to_string(),
                1 => "seen".to_string(),
                _ => "unseen".to_string(),
            })
            .collect();
        let score: Vec<f64> = (0..n)
            .map(|i| {
                let u = ((i * 37) % 11) as f64 / 11.0;
                if i % 3 == 1 {
                    0.5 + 0.5 * u
                } else {
                    0.6 * u
                }
            })
            .collect();
        let p = Columns {
            items: (0..n).map(|i| format!("i{i}")).collect(),
            labels,
            sources,
            folds: (0..n).map(|i| (i % 2) as u32).collect(),
            score,
            members: vec![],
        };
        let b = build(&cfg(), &p, None, &[], &["unseen".to_string()]).unwrap();
        let h = &b.metrics["holdout"];
        let (ins, held) = (
            h["in_source_auc"].as_f64().unwrap(),
            h["held_out_auc"].as_f64().unwrap(),
        );
        assert!(ins > 0.8 && held < 0.7, "{h}");
        assert!((h["delta"].as_f64().unwrap() - (ins - held)).abs() < 1e-12);
        assert_eq!(h["flagged"], true);
        assert!(b.markdown.contains("FLAGGED") && b.html.contains("FLAGGED"));
        assert!(build(&cfg(), &p, None, &[], &[]).unwrap().metrics["holdout"].is_null());
    }
}
