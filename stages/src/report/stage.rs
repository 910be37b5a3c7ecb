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
    key_params_of, Code, ConfigProblem, Defaults, ExecCtx, Input, PortType, StageConfig, StageError, StageKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plots::{self, Plot, Series};
use crate::metrics::{self, Binary};
use crate::ports::calibration::{read_reliability, CalibrationDoc, ReliabilityRow};
use crate::ports::models::{self, HistRow};
use crate::ports::predictions::Predictions;
use crate::ports::report as files;
use crate::ports::split::SplitSummary;
use crate::ports::{CALIBRATION, MODELS, PREDICTIONS, SPLIT};
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
// Markdown (it had HTML entities: `fold&#39;s`).
inventory::submit! { crate::Kind(|| StageKind::new::<Report>("Report", 3, "metrics, statistics and plots: index.html, report.md, metrics.json")) }

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
        v
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
        key_params_of(self, &["predictions", "calibration", "split"])
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
        let built = build(self, &preds, calibration.as_ref(), &histories, &holdout)?;
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
    /// (file stem, title, plot)
    pub plots: Vec<(String, String, Plot)>,
}

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
    for (stem, _, plot) in &b.plots {
        w(&format!("{}/{stem}.svg", files::PLOTS), plot.svg.as_bytes())?;
        w(&format!("{}/{stem}.png", files::PLOTS), &plot.png)?;
    }
    Ok(())
}

fn sub<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

/// Bootstrap CI of a statistic of (scores, labels), stratified by class.
fn boot(cfg: &Report, salt: u64, scores: &[f64], labels: &[u8], f: fn(&[f64], &[u8]) -> Option<f64>) -> Value {
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

/// `s` as one Markdown code span: fenced by one backtick more than the longest run inside
/// it (so a backtick in the text cannot close the span and let HTML through), control
/// characters as spaces.
pub(crate) fn md_code(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
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

pub fn build(
    cfg: &Report,
    p: &Columns,
    cal: Option<&CalibrationIn>,
    histories: &[(String, Vec<HistRow>)],
    holdout: &[String],
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

    let metrics_json = json!({
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

    let plots = make_plots(p, &folds.idx, &sources, &metrics_json, cal, histories, bins)?;
    let markdown = render_md(&metrics_json, &plots);
    let html = render_html(&metrics_json, &plots);
    Ok(Built {
        metrics: metrics_json,
        markdown,
        html,
        plots,
    })
}

/// [`Binary`] metrics of the items `idx` at threshold `t`, as JSON.
fn bin_json(p: &Columns, idx: &[usize], t: f64, bins: usize) -> Value {
    serde_json::to_value(Binary::compute(&sub(&p.score, idx), &sub(&p.labels, idx), t, bins)).unwrap()
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
    for (k, _) in METRIC_ROWS {
        let vals: Vec<f64> = folds_json.iter().filter_map(|f| get(&f["at_default"], k)).collect();
        across.insert(
            (*k).into(),
            serde_json::to_value(metrics::mean_std_ci(&vals, cfg.level)).unwrap(),
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

/// One plot of the report: (file stem, title, plot).
type Figure = (String, String, Plot);

fn figure(stem: &str, title: &str, plot: Result<Plot, impl std::fmt::Display>) -> Result<Figure, StageError> {
    Ok((stem.into(), title.into(), plot.map_err(perr)?))
}

fn make_plots(
    p: &Columns,
    fold_idx: &BTreeMap<u32, Vec<usize>>,
    sources: &[String],
    m: &Value,
    cal: Option<&CalibrationIn>,
    histories: &[(String, Vec<HistRow>)],
    bins: usize,
) -> Result<Vec<Figure>, StageError> {
    let mut out = vec![roc_plot(p, fold_idx, m)?, reliability_plot(p, cal, bins)?];
    out.extend(score_histograms(p, sources)?);
    out.push(confusion_plot(m)?);
    out.push(per_source_auc_plot(m)?);
    out.push(cascade_plot(m)?);
    if !histories.is_empty() {
        out.extend(training_plots(histories)?);
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
        plots::histogram(&classes, 20, "Scores by class", "P(fake)"),
    )?;
    let mut groups = vec![("real".to_string(), by(&|i| p.labels[i] == 0))];
    for s in sources {
        groups.push((s.clone(), by(&|i| p.labels[i] == 1 && &p.sources[i] == s)));
    }
    let by_source = figure(
        "scores_by_source",
        "Ensemble score by source",
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

/// Validation AUC, and training and validation loss, per epoch of each history.
fn training_plots(histories: &[(String, Vec<HistRow>)]) -> Result<[Figure; 2], StageError> {
    let auc: Vec<Series> = histories
        .iter()
        .map(|(from, rows)| Series {
            name: from.clone(),
            points: rows
                .iter()
                .filter_map(|r| r.val_auc.map(|a| (r.epoch as f64, a)))
                .collect(),
        })
        .collect();
    let val_auc = figure(
        "training_val_auc",
        "Validation AUC per epoch",
        plots::lines(&auc, "Validation AUC", "epoch", "AUC"),
    )?;
    let mut loss = Vec::new();
    for (from, rows) in histories {
        loss.push(Series {
            name: format!("{from} train"),
            points: rows.iter().map(|r| (r.epoch as f64, r.train_loss)).collect(),
        });
        loss.push(Series {
            name: format!("{from} val"),
            points: rows
                .iter()
                .filter_map(|r| r.val_loss.map(|v| (r.epoch as f64, v)))
                .collect(),
        });
    }
    let loss = figure(
        "training_loss",
        "Training and validation loss per epoch",
        plots::lines(&loss, "Loss", "epoch", "loss"),
    )?;
    Ok([val_auc, loss])
}

fn metric_table_rows(d: &Value, c: Option<&Value>, across: &Value) -> Vec<[String; 4]> {
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
            [
                label.to_string(),
                fnum(get(d, k), 3),
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
fn metric_table(m: &Value) -> ([String; 4], Vec<Vec<String>>) {
    let chosen = m["threshold"]["chosen"].as_f64().unwrap_or(0.5);
    let head = [
        "metric".to_string(),
        "pooled, t = 0.5".to_string(),
        format!("pooled, t = {chosen:.3}"),
        "across folds (t = 0.5): mean ± std [t-CI]".to_string(),
    ];
    let rows = metric_table_rows(
        &m["pooled"]["at_default"],
        Some(&m["pooled"]["at_chosen"]),
        &m["across_folds"],
    )
    .into_iter()
    .map(|r| r.to_vec())
    .collect();
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

/// A Markdown table; every cell is escaped with [`md`].
fn md_table<H: AsRef<str>>(s: &mut String, head: &[H], rows: &[Vec<String>]) {
    let line = |cells: &mut dyn Iterator<Item = &str>| cells.map(md).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(s, "| {} |", line(&mut head.iter().map(|h| h.as_ref())));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", line(&mut r.iter().map(String::as_str)));
    }
}

fn render_md(m: &Value, plots: &[Figure]) -> String {
    let mut s = String::new();
    md_summary(&mut s, m);
    let _ = writeln!(s, "## Per source (each fake source against all reals)\n");
    md_table(&mut s, PER_SOURCE_HEAD, &per_source_rows(m));
    let _ = writeln!(s, "\n## Per fold (t = 0.5)\n");
    md_table(&mut s, PER_FOLD_HEAD, &per_fold_rows(m));
    if let Some(rows) = member_rows(m) {
        let _ = writeln!(s, "\n## Members vs the ensemble (DeLong)\n");
        md_table(&mut s, MEMBER_HEAD, &rows);
    }
    if let Some(rows) = training_rows(m) {
        let _ = writeln!(s, "\n## Training (best epoch by validation AUC)\n");
        md_table(&mut s, TRAINING_HEAD, &rows);
    }
    if let Some(rows) = calibration_rows(m) {
        let _ = writeln!(s, "\n## Calibration (temperature per fold, each fold's test items)\n");
        md_table(&mut s, CALIBRATION_HEAD, &rows);
    }
    let _ = writeln!(s, "\n## Plots\n");
    for (stem, title, _) in plots {
        let _ = writeln!(s, "### {}\n\n![{}](plots/{stem}.png)\n", md(title), md(title));
    }
    s
}

/// The title, counts, pooled AUC, the metric table and the operating point.
fn md_summary(s: &mut String, m: &Value) {
    let _ = writeln!(s, "# Report\n");
    let _ = writeln!(
        s,
        "{} items ({} real, {} fake), {} folds, sources: {}. Out-of-fold predictions: each item scored by models that never trained on it.\n",
        m["n"],
        m["n_real"],
        m["n_fake"],
        m["folds"].as_array().map_or(0, |a| a.len()),
        m["sources"].as_array().unwrap().iter().map(|v| md(v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        s,
        "Pooled AUC **{}** (bootstrap {} CI {}), EER {}.\n",
        fnum(get(&m["pooled"]["at_default"], "auc"), 3),
        m["settings"]["level"],
        ci_text(&m["pooled"]["auc_ci"], 3),
        fnum(get(&m["pooled"], "eer"), 3)
    );
    let (head, rows) = metric_table(m);
    md_table(s, &head, &rows);
    let _ = writeln!(
        s,
        "\nChosen threshold: {}.\n",
        md(m["threshold"]["chosen_from"].as_str().unwrap_or(""))
    );
    if let Some(h) = holdout_line(m) {
        let _ = writeln!(s, "{}\n", md(&h));
    }
}

const CSS: &str = "svg{max-width:100%;height:auto}body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}\
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}\
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.plots{display:flex;flex-wrap:wrap;gap:1rem}\
figure{margin:0;border:1px solid #ddd;padding:.5rem}figcaption{font-size:.9rem;color:#555;max-width:640px}\
.note{color:#555;font-size:.9rem}";

/// An HTML table; every cell is escaped with [`esc`].
fn html_table<H: AsRef<str>>(head: &[H], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h.as_ref()));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn render_html(m: &Value, plots: &[Figure]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flow report</title><style>{CSS}</style></head><body>"
    );
    html_summary(&mut s, m);
    s.push_str("<h2>Per source</h2>");
    s.push_str(&html_table(PER_SOURCE_HEAD, &per_source_rows(m)));
    if let Some(rows) = member_rows(m) {
        s.push_str("<h2>Members vs the ensemble (DeLong)</h2>");
        s.push_str(&html_table(MEMBER_HEAD, &rows));
    }
    s.push_str("<h2>Plots</h2><div class=\"plots\">");
    for (_, title, plot) in plots {
        let _ = write!(
            s,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            plot.svg,
            esc(title)
        );
    }
    s.push_str("</div>");
    let _ = write!(
        s,
        "<p class=\"note\">Machine-readable: metrics.json. Plots as PNG: plots/. Made by flow.</p></body></html>"
    );
    s
}

/// The title, counts, pooled AUC, the metric table and the operating point.
fn html_summary(s: &mut String, m: &Value) {
    let _ = write!(s, "<h1>Report</h1>");
    let _ = write!(
        s,
        "<p>{} items ({} real, {} fake), {} folds, sources: {}. Out-of-fold predictions: each item is scored by models that never trained on it.</p>",
        m["n"],
        m["n_real"],
        m["n_fake"],
        m["folds"].as_array().map_or(0, |a| a.len()),
        esc(&m["sources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap_or("").to_string()).collect::<Vec<_>>().join(", "))
    );
    let _ = write!(
        s,
        "<p>Pooled AUC <b>{}</b> (bootstrap {} CI {}), EER {}.</p>",
        fnum(get(&m["pooled"]["at_default"], "auc"), 3),
        m["settings"]["level"],
        ci_text(&m["pooled"]["auc_ci"], 3),
        fnum(get(&m["pooled"], "eer"), 3)
    );
    let (head, rows) = metric_table(m);
    s.push_str(&html_table(&head, &rows));
    let _ = write!(
        s,
        "<p class=\"note\">Chosen threshold: {}.</p>",
        esc(m["threshold"]["chosen_from"].as_str().unwrap_or(""))
    );
    if let Some(h) = holdout_line(m) {
        let _ = write!(s, "<p><b>{}</b></p>", esc(&h));
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
        assert!(!b.html.contains("<script"), "index.html executes a name");
        assert!(b.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!b.html.contains("<b>m</b>"));
        assert!(!b.markdown.contains("<script"), "report.md renders HTML on GitHub");
        for (_, _, p) in &b.plots {
            assert!(!p.svg.contains("<script"));
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
    fn code_spans_cannot_be_closed_by_the_text() {
        assert_eq!(md_code("p.cmd: 1 -> 2"), "`p.cmd: 1 -> 2`");
        assert_eq!(md_code("a ` <img src=x> `"), "`` a ` <img src=x> ` ``");
        assert_eq!(md_code("`x`"), "`` `x` ``");
        assert_eq!(md_code("a\nb"), "`a b`");
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
