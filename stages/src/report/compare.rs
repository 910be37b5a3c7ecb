//! Experiments side by side against a baseline: what a study's comparison stage writes
//! (`study/index.html`, `study.md`, `study.json`, `study.tex`) and `flow compare` prints. One
//! definition of every number, rendered three ways.
//!
//! Per experiment, on its out-of-fold predictions: pooled AUC with a stratified bootstrap CI,
//! AP, EER, AUC per fold (mean ± std) and per fake source (the reals plus that source's
//! fakes), and — when its split holds sources out — AUC on the sources it trained on, on those
//! it never saw, and their gap (flagged above `holdout_gap`), and the model's parameter count
//! when the comparison was given its weights. Per group (an experiment
//! repeated over seeds): mean ± std of the pooled AUC across seeds.
//!
//! Against the baseline (the baseline group's experiment of the same seed, else its first):
//! ΔAUC, and
//! * **paired** when both scored the same items in the same folds: DeLong's test on the pooled
//!   predictions, a paired t-test and a Wilcoxon signed-rank test over the per-fold AUCs;
//! * **unpaired** otherwise (another split, a held-out source, a subsample): a bootstrap of
//!   each side's items ([`stats::unpaired_auc_diff`]) — said so in the row and the warnings,
//!   never refused.
//!
//! The primary p (DeLong when paired, bootstrap otherwise) is Holm-adjusted across every
//! comparison of the study ([`stats::holm`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::page::{Block, Doc, Figure, Section};
use super::plots::{self, Series};
use super::stage::Columns;
use crate::metrics;
use crate::stats;

/// One experiment: its name, its predictions and what it changes against the baseline.
pub struct Experiment {
    pub name: String,
    /// The name without its seed: seeds of one group are aggregated.
    pub group: String,
    pub seed: Option<u64>,
    pub predictions: Columns,
    /// What it changes, as written (`preprocess.normalize=RealOnly`) or as a params diff
    /// (`train.lr: 0.003 -> 0.001`).
    pub changes: Vec<String>,
    /// Items of sources its split holds out (never trained on); empty: none held out.
    pub held_out: BTreeSet<String>,
    /// The model's parameter count, when the comparison was given its weights.
    pub parameters: Option<u64>,
}

/// Knobs of the comparison (part of the comparison stage's key).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub bootstrap: usize,
    pub seed: u64,
    /// In-source minus held-out AUC above this is flagged.
    pub holdout_gap: f64,
    pub level: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bootstrap: 1000,
            seed: 0,
            holdout_gap: 0.05,
            level: 0.95,
        }
    }
}

fn fold_aucs(p: &Columns) -> BTreeMap<u32, f64> {
    let mut by: BTreeMap<u32, (Vec<f64>, Vec<u8>)> = BTreeMap::new();
    for i in 0..p.items.len() {
        let e = by.entry(p.folds[i]).or_default();
        e.0.push(p.score[i]);
        e.1.push(p.labels[i]);
    }
    by.into_iter()
        .filter_map(|(f, (s, l))| metrics::auc(&s, &l).map(|a| (f, a)))
        .collect()
}

/// AUC of the items `keep` selects.
fn auc_where(p: &Columns, keep: impl Fn(usize) -> bool) -> Option<f64> {
    let idx: Vec<usize> = (0..p.items.len()).filter(|&i| keep(i)).collect();
    let s: Vec<f64> = idx.iter().map(|&i| p.score[i]).collect();
    let y: Vec<u8> = idx.iter().map(|&i| p.labels[i]).collect();
    metrics::auc(&s, &y)
}

/// Leaf-level differences of `b` against `a` (`stage.param.path: a -> b`).
pub fn params_diff(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    walk(&format!("{path}.{k}"), x.get(k), y.get(k), out);
                }
            }
            (x, y) if x != y => {
                let show = |v: Option<&Value>| v.map_or("(none)".to_string(), |v| v.to_string());
                out.push(format!("{path}: {} -> {}", show(x), show(y)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for n in names {
        walk(n, a.get(n), b.get(n), &mut out);
    }
    out
}

/// `e`'s scores in the order of `base`'s items when both scored the same items with the same
/// labels and folds (a paired comparison), else why not.
fn align(e: &Columns, base: &Columns) -> Result<Vec<f64>, String> {
    if e.items.len() != base.items.len() {
        return Err(format!("{} items against {}", e.items.len(), base.items.len()));
    }
    let at: BTreeMap<&str, usize> = e.items.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let mut out = Vec::with_capacity(e.items.len());
    for (j, item) in base.items.iter().enumerate() {
        let i = *at
            .get(item.as_str())
            .ok_or_else(|| format!("item `{item}` is not in both"))?;
        if e.folds[i] != base.folds[j] || e.labels[i] != base.labels[j] {
            return Err(format!(
                "item `{item}` is in fold {} against fold {}",
                e.folds[i], base.folds[j]
            ));
        }
        out.push(e.score[i]);
    }
    Ok(out)
}

/// The comparison of `exps` against the group `baseline` (see the module doc).
pub fn compare(exps: &[Experiment], baseline: &str, o: &Options) -> Result<Value, String> {
    if exps.is_empty() {
        return Err("nothing to compare".into());
    }
    let bases: Vec<&Experiment> = exps.iter().filter(|b| b.group == baseline).collect();
    if bases.is_empty() {
        return Err(format!("the baseline `{baseline}` is not one of the experiments"));
    }
    let sources = fake_sources(exps);
    let mut warnings: Vec<String> = Vec::new();
    let mut rows: Vec<Value> = Vec::new();
    for (k, e) in exps.iter().enumerate() {
        let base = bases.iter().find(|b| b.seed == e.seed).unwrap_or(&bases[0]);
        let vs = if e.group == baseline {
            Value::Null
        } else {
            vs_baseline(e, base, o, o.seed.wrapping_add(k as u64), &mut warnings)
        };
        rows.push(row(e, &sources, vs, o, &mut warnings));
    }
    holm_across(&mut rows, o);
    if let Some(w) = wilcoxon_floor(&rows) {
        warnings.push(w);
    }
    let groups = groups(exps, &rows, baseline, o);
    Ok(json!({
        "baseline": baseline, "sources": sources, "experiments": rows, "groups": groups,
        "warnings": warnings, "level": o.level, "bootstrap": o.bootstrap,
    }))
}

/// Every fake source any experiment scored, sorted.
fn fake_sources(exps: &[Experiment]) -> Vec<String> {
    let all: BTreeSet<&String> = exps
        .iter()
        .flat_map(|e| {
            let p = &e.predictions;
            (0..p.items.len()).filter(|&i| p.labels[i] == 1).map(|i| &p.sources[i])
        })
        .collect();
    all.into_iter().cloned().collect()
}

/// One experiment's row: its own metrics, and `vs` (its comparison with the baseline).
fn row(e: &Experiment, sources: &[String], vs: Value, o: &Options, warnings: &mut Vec<String>) -> Value {
    let p = &e.predictions;
    let folds = fold_aucs(p);
    let fold_vals: Vec<f64> = folds.values().copied().collect();
    let per_source: BTreeMap<&String, Option<f64>> = sources
        .iter()
        .map(|s| (s, auc_where(p, |i| p.labels[i] == 0 || &p.sources[i] == s)))
        .collect();
    json!({
        "name": e.name, "group": e.group, "seed": e.seed, "n": p.items.len(), "roc": roc_points(p),
        "fakes": p.labels.iter().filter(|l| **l == 1).count(),
        "auc": metrics::auc(&p.score, &p.labels),
        "auc_ci": metrics::auc_ci(&p.score, &p.labels, o.level, o.bootstrap, o.seed),
        "ap": metrics::average_precision(&p.score, &p.labels),
        "eer": metrics::eer(&p.score, &p.labels).map(|x| x.rate),
        "fold_auc": folds.iter().map(|(f, a)| (f.to_string(), json!(a))).collect::<serde_json::Map<_, _>>(),
        "fold_auc_summary": metrics::mean_std_ci(&fold_vals, o.level),
        "per_source_auc": per_source,
        "held_out": held_out(e, o, warnings),
        "changes": e.changes,
        "parameters": e.parameters,
        "vs_baseline": vs,
    })
}

/// AUC on the sources `e` trained on, on those its split held out, and their gap (flagged,
/// with a warning, above `holdout_gap`); null when nothing is held out.
fn held_out(e: &Experiment, o: &Options, warnings: &mut Vec<String>) -> Value {
    if e.held_out.is_empty() {
        return Value::Null;
    }
    let p = &e.predictions;
    let out = |i: usize| e.held_out.contains(&p.items[i]);
    let auc_in = auc_where(p, |i| p.labels[i] == 0 || !out(i));
    let auc_out = auc_where(p, |i| p.labels[i] == 0 || out(i));
    let gap = auc_in.zip(auc_out).map(|(a, b)| a - b);
    let flagged = gap.is_some_and(|g| g > o.holdout_gap);
    if flagged {
        warnings.push(format!(
            "`{}`: AUC on held-out sources is {:.3} below the sources it trained on ({:.3} vs {:.3}): it does not generalise to unseen generators",
            e.name,
            gap.unwrap_or(0.0),
            auc_in.unwrap_or(f64::NAN),
            auc_out.unwrap_or(f64::NAN)
        ));
    }
    json!({"auc_in": auc_in, "auc_out": auc_out, "gap": gap, "flagged": flagged, "items": e.held_out.len()})
}

/// `e` against `base`: paired (DeLong, paired t, Wilcoxon) when both scored the same items
/// in the same folds, else unpaired by bootstrap (seeded with `seed`) with a warning.
fn vs_baseline(e: &Experiment, base: &Experiment, o: &Options, seed: u64, warnings: &mut Vec<String>) -> Value {
    let (p, bp) = (&e.predictions, &base.predictions);
    let delta = metrics::auc(&p.score, &p.labels)
        .zip(metrics::auc(&bp.score, &bp.labels))
        .map(|(a, b)| a - b);
    match align(p, bp) {
        Ok(aligned) => {
            let ef: Vec<f64> = fold_aucs(p).values().copied().collect();
            let bf: Vec<f64> = fold_aucs(bp).values().copied().collect();
            let dl = stats::delong(&aligned, &bp.score, &bp.labels);
            json!({
                "against": base.name, "paired": true, "delta": delta,
                "delong": dl, "paired_t": stats::paired_t(&ef, &bf),
                "wilcoxon": stats::wilcoxon(&ef, &bf),
                "p_value": dl.and_then(|d| d.p_value), "test": "DeLong",
            })
        }
        Err(why) => {
            warnings.push(format!(
                "`{}` and `{}` did not score the same items in the same folds ({why}): compared unpaired, by bootstrap",
                e.name, base.name
            ));
            let u = stats::unpaired_auc_diff(
                (&bp.score, &bp.labels),
                (&p.score, &p.labels),
                o.level,
                o.bootstrap,
                seed,
            );
            json!({
                "against": base.name, "paired": false, "delta": delta, "bootstrap": u,
                "p_value": u.map(|u| u.p_value), "test": "bootstrap",
            })
        }
    }
}

/// The pooled ROC curve, at most ~200 points (every k-th, the ends kept), for the plot.
fn roc_points(p: &Columns) -> Vec<[f64; 2]> {
    metrics::roc_curve(&p.score, &p.labels)
        .map(|pts| {
            let k = pts.len().div_ceil(200).max(1);
            let last = pts.len() - 1;
            pts.iter()
                .enumerate()
                .filter(|(i, _)| i % k == 0 || *i == last)
                .map(|(_, r)| [(r.fpr * 1e4).round() / 1e4, (r.tpr * 1e4).round() / 1e4])
                .collect()
        })
        .unwrap_or_default()
}

/// Holm-adjusts every comparison's p across the study: `p_holm` and `significant`.
fn holm_across(rows: &mut [Value], o: &Options) {
    let with_p: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i]["vs_baseline"]["p_value"].is_f64())
        .collect();
    let ps: Vec<f64> = with_p
        .iter()
        .map(|&i| rows[i]["vs_baseline"]["p_value"].as_f64().unwrap_or(1.0))
        .collect();
    for (&i, a) in with_p.iter().zip(stats::holm(&ps)) {
        rows[i]["vs_baseline"]["p_holm"] = json!(a);
        rows[i]["vs_baseline"]["significant"] = json!(a < 1.0 - o.level);
    }
}

/// With fewer than 6 folds the Wilcoxon test cannot be significant: say so when it is shown.
fn wilcoxon_floor(rows: &[Value]) -> Option<String> {
    let k = rows
        .iter()
        .filter_map(|r| r["fold_auc"].as_object().map(|m| m.len()))
        .min()?;
    let paired = rows.iter().any(|r| r["vs_baseline"]["paired"] == json!(true));
    (k > 0 && k < 6 && paired).then(|| {
        format!(
            "with {k} folds the Wilcoxon signed-rank test cannot reach p < {:.3} (2/2^{k}); read DeLong or the paired t-test",
            2.0 / f64::powi(2.0, k as i32)
        )
    })
}

/// Groups: the seeds of one experiment, aggregated (mean ± std of AUC and ΔAUC), in the
/// order they first appear.
fn groups(exps: &[Experiment], rows: &[Value], baseline: &str, o: &Options) -> Vec<Value> {
    let mut names: Vec<&str> = Vec::new();
    for e in exps {
        if !names.contains(&e.group.as_str()) {
            names.push(&e.group);
        }
    }
    names
        .into_iter()
        .map(|g| {
            let members: Vec<&Value> = rows.iter().filter(|r| r["group"] == json!(g)).collect();
            let aucs: Vec<f64> = members.iter().filter_map(|r| r["auc"].as_f64()).collect();
            let deltas: Vec<f64> = members
                .iter()
                .filter_map(|r| r["vs_baseline"]["delta"].as_f64())
                .collect();
            let seeds: Vec<&Value> = members.iter().map(|r| &r["seed"]).filter(|s| !s.is_null()).collect();
            let significant = members
                .iter()
                .filter(|r| r["vs_baseline"]["significant"] == json!(true))
                .count();
            json!({
                "group": g, "seeds": seeds, "auc": metrics::mean_std_ci(&aucs, o.level),
                "delta": (!deltas.is_empty()).then(|| metrics::mean_std_ci(&deltas, o.level)),
                "significant": significant, "of": members.len(),
                "changes": members.first().map(|r| r["changes"].clone()),
                "baseline": g == baseline,
            })
        })
        .collect()
}

/// `11689512` → `11.69M`, `20512` → `0.021M`.
fn millions(n: u64) -> String {
    let m = n as f64 / 1e6;
    if m >= 1.0 {
        format!("{m:.2}M")
    } else {
        format!("{m:.3}M")
    }
}

fn f(v: &Value, d: usize) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.d$}"))
}

fn source_names(c: &Value) -> Vec<&str> {
    c["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn rows_of(c: &Value) -> &[Value] {
    c["experiments"].as_array().map_or(&[], |v| v.as_slice())
}

fn ci(v: &Value, d: usize) -> String {
    match (v[0].as_f64(), v[1].as_f64()) {
        (Some(a), Some(b)) => format!("[{a:.d$}, {b:.d$}]"),
        _ => "–".into(),
    }
}

fn mean_std(s: &Value, d: usize) -> String {
    match (s["mean"].as_f64(), s["std"].as_f64()) {
        (Some(m), Some(sd)) => format!("{m:.d$} ± {sd:.d$}"),
        (Some(m), None) => format!("{m:.d$}"),
        _ => "–".into(),
    }
}

/// The p of the primary test, its Holm adjustment and the test's name.
fn p_cells(v: &Value) -> [String; 3] {
    if v.is_null() {
        return ["(baseline)".into(), String::new(), String::new()];
    }
    [
        f(&v["p_value"], 4),
        f(&v["p_holm"], 4),
        v["test"].as_str().unwrap_or("").to_string(),
    ]
}

/// The main table: one row per experiment.
fn main_table(c: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let sources = source_names(c);
    let mut head: Vec<String> = ["experiment", "AUC", "95% CI", "AP", "EER", "folds: mean ± std"]
        .map(String::from)
        .to_vec();
    head.extend(sources.iter().map(|s| format!("AUC {s}")));
    let sized = rows_of(c).iter().any(|e| e["parameters"].is_u64());
    if sized {
        head.push("params".into());
    }
    head.extend(["ΔAUC", "p", "p (Holm)", "test"].map(String::from));
    let rows = rows_of(c)
        .iter()
        .map(|e| {
            let mut r = vec![
                e["name"].as_str().unwrap_or("").to_string(),
                f(&e["auc"], 3),
                ci(&e["auc_ci"], 3),
                f(&e["ap"], 3),
                f(&e["eer"], 3),
                mean_std(&e["fold_auc_summary"], 3),
            ];
            r.extend(sources.iter().map(|s| f(&e["per_source_auc"][*s], 3)));
            if sized {
                r.push(e["parameters"].as_u64().map_or(String::new(), millions));
            }
            let v = &e["vs_baseline"];
            r.push(if v.is_null() {
                String::new()
            } else {
                format!("{:+.4}", v["delta"].as_f64().unwrap_or(f64::NAN))
            });
            r.extend(p_cells(v));
            r
        })
        .collect();
    (head, rows)
}

/// Seeds aggregated per group (only when some group has more than one experiment).
fn groups_table(c: &Value) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let gs = c["groups"].as_array()?;
    if !gs.iter().any(|g| g["of"].as_u64().unwrap_or(0) > 1) {
        return None;
    }
    let head = [
        "variant",
        "seeds",
        "AUC mean ± std",
        "ΔAUC mean ± std",
        "significant (Holm)",
    ]
    .map(String::from)
    .to_vec();
    let rows = gs
        .iter()
        .map(|g| {
            vec![
                g["group"].as_str().unwrap_or("").to_string(),
                g["of"].to_string(),
                mean_std(&g["auc"], 3),
                if g["baseline"] == json!(true) {
                    "(baseline)".into()
                } else {
                    mean_std(&g["delta"], 4)
                },
                if g["baseline"] == json!(true) {
                    String::new()
                } else {
                    format!("{}/{}", g["significant"], g["of"])
                },
            ]
        })
        .collect();
    Some((head, rows))
}

fn held_out_table(c: &Value) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let rows: Vec<Vec<String>> = rows_of(c)
        .iter()
        .filter(|e| !e["held_out"].is_null())
        .map(|e| {
            let h = &e["held_out"];
            vec![
                e["name"].as_str().unwrap_or("").to_string(),
                f(&h["auc_in"], 3),
                f(&h["auc_out"], 3),
                format!("{:+.3}", h["gap"].as_f64().unwrap_or(f64::NAN)),
                if h["flagged"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    (!rows.is_empty()).then(|| {
        let head = [
            "experiment",
            "AUC trained sources",
            "AUC held-out sources",
            "gap",
            "gap > threshold",
        ]
        .map(String::from)
        .to_vec();
        (head, rows)
    })
}

fn changes_table(c: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let rows = rows_of(c)
        .iter()
        .map(|e| {
            let ch: Vec<&str> = e["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                e["name"].as_str().unwrap_or("").to_string(),
                if ch.is_empty() {
                    "(the base pipeline)".into()
                } else {
                    ch.join("; ")
                },
            ]
        })
        .collect();
    (vec!["experiment".into(), "changes against the base".into()], rows)
}

/// A Markdown rendering of [`compare`]'s result (the tables of [`document`]).
pub fn markdown(c: &Value) -> String {
    super::page::render_md(&document(c, "comparison", Vec::new()))
}

fn tex(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(c);
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            '±' => o.push_str("$\\pm$"),
            'Δ' => o.push_str("$\\Delta$"),
            c => o.push(c),
        }
    }
    o
}

/// LaTeX `tabular`s (booktabs) of [`compare`]'s result, ready to paste into a paper: the main
/// table, and the seeds aggregated when there are seeds.
pub fn latex(c: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "% generated by flow; needs \\usepackage{{booktabs}}");
    let sources = source_names(c);
    let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}", "r".repeat(5 + sources.len()));
    let _ = writeln!(s, "\\toprule");
    let _ = write!(s, "Experiment & AUC & AP & EER & Folds (mean $\\pm$ std)");
    for src in &sources {
        let _ = write!(s, " & {}", tex(src));
    }
    let _ = writeln!(s, " & $p$ (Holm) \\\\");
    let _ = writeln!(s, "\\midrule");
    for e in rows_of(c) {
        let _ = write!(
            s,
            "{} & {} & {} & {} & {}",
            tex(e["name"].as_str().unwrap_or("")),
            f(&e["auc"], 3),
            f(&e["ap"], 3),
            f(&e["eer"], 3),
            tex(&mean_std(&e["fold_auc_summary"], 3))
        );
        for src in &sources {
            let _ = write!(s, " & {}", f(&e["per_source_auc"][*src], 3));
        }
        let p = &e["vs_baseline"]["p_holm"];
        let _ = writeln!(s, " & {} \\\\", if p.is_null() { "--".to_string() } else { f(p, 4) });
    }
    let _ = writeln!(s, "\\bottomrule\n\\end{{tabular}}");
    if let Some((head, rows)) = groups_table(c) {
        let _ = writeln!(s, "\n\\begin{{tabular}}{{l{}}}\n\\toprule", "r".repeat(head.len() - 1));
        let _ = writeln!(
            s,
            "{} \\\\\n\\midrule",
            head.iter().map(|h| tex(h)).collect::<Vec<_>>().join(" & ")
        );
        for r in rows {
            let _ = writeln!(s, "{} \\\\", r.iter().map(|x| tex(x)).collect::<Vec<_>>().join(" & "));
        }
        let _ = writeln!(s, "\\bottomrule\n\\end{{tabular}}");
    }
    s
}

/// The plots of a comparison: pooled AUC per experiment with its CI, and AUC against the data
/// fraction when experiments differ by `subsample` (seed 000's data-scaling curve).
/// `(experiment, x, y)` points as one line per seed (`AUC` when unseeded), sorted by x.
fn series_by_seed<'a>(points: impl Iterator<Item = (&'a Value, f64, f64)>) -> Vec<Series> {
    let mut by_seed: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (e, x, y) in points {
        let seed = e["seed"].as_u64().map_or("AUC".to_string(), |s| format!("seed {s}"));
        by_seed.entry(seed).or_default().push((x, y));
    }
    by_seed
        .into_iter()
        .map(|(n, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(n, pts)
        })
        .collect()
}

/// AUC against parameter count (a backbone study), one line per seed, when the experiments
/// differ in size; the x axis is log10 of the count.
fn size_figure(c: &Value) -> Result<Option<Figure>, plots::PlotError> {
    let sized: Vec<(&Value, u64, f64)> = rows_of(c)
        .iter()
        .filter_map(|e| Some((e, e["parameters"].as_u64().filter(|n| *n > 0)?, e["auc"].as_f64()?)))
        .collect();
    if sized.iter().map(|s| s.1).collect::<BTreeSet<_>>().len() < 2 {
        return Ok(None);
    }
    let series = series_by_seed(sized.into_iter().map(|(e, n, auc)| (e, (n as f64).log10(), auc)));
    Ok(Some(Figure {
        stem: "size".into(),
        title: "AUC against the model's parameter count".into(),
        read: "x is log10 of the parameters (6 = 1M, 7 = 10M); the table's `params` column names each point. A flat line: the bigger backbones buy nothing on this data.".into(),
        plot: plots::lines(&series, "AUC vs model size", "log10(parameters)", "AUC")?,
        wide: false,
    }))
}

pub fn figures(c: &Value) -> Result<Vec<Figure>, plots::PlotError> {
    let mut out = Vec::new();
    let bars: Vec<plots::Bar> = rows_of(c)
        .iter()
        .filter_map(|e| {
            let ci = e["auc_ci"][0].as_f64().zip(e["auc_ci"][1].as_f64());
            Some((e["name"].as_str()?.to_string(), e["auc"].as_f64()?, ci))
        })
        .collect();
    if !bars.is_empty() {
        // From 0.5 (chance) unless something lies below it.
        let low = bars
            .iter()
            .flat_map(|b| [Some(b.1), b.2.map(|c| c.0)])
            .flatten()
            .fold(0.5_f64, f64::min);
        let low = if low < 0.5 { (low * 10.0).floor() / 10.0 } else { 0.5 };
        out.push(Figure {
            stem: "auc".into(),
            title: "Pooled out-of-fold AUC per experiment".into(),
            read: "Whiskers: stratified bootstrap 95% CI. Overlapping whiskers are no evidence of equality: read the paired tests in the table.".into(),
            plot: plots::bars_with_ci(&bars, "AUC per experiment", "AUC", (low, 1.0))?,
            wide: bars.len() > 6,
        });
    }
    let curves: Vec<Series> = rows_of(c)
        .iter()
        .filter_map(|e| {
            let pts: Vec<(f64, f64)> = e["roc"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect();
            (!pts.is_empty()).then(|| Series::new(e["name"].as_str().unwrap_or(""), pts))
        })
        .collect();
    if !curves.is_empty() {
        out.push(Figure {
            stem: "roc".into(),
            title: "Pooled out-of-fold ROC per experiment".into(),
            read: "A curve above another at the false-positive rates that matter (left) is the better detector there, whatever the AUCs say.".into(),
            plot: plots::roc(&curves, "ROC")?,
            wide: false,
        });
    }
    if let Some(fig) = size_figure(c)? {
        out.push(fig);
    }
    // Data scaling: fraction from `…subsample=x`, 1.0 for an experiment that sets none.
    let fraction = |e: &Value| -> Option<f64> {
        let ch = e["changes"].as_array()?;
        for x in ch.iter().filter_map(Value::as_str) {
            if let Some((k, v)) = x.split_once('=') {
                if k.ends_with(".subsample") {
                    return v.trim().trim_start_matches("Some(").trim_end_matches(')').parse().ok();
                }
            }
        }
        Some(1.0)
    };
    if rows_of(c).iter().any(|e| fraction(e).is_some_and(|x| x < 1.0)) {
        let series = series_by_seed(
            rows_of(c)
                .iter()
                .filter_map(|e| Some((e, fraction(e)?, e["auc"].as_f64()?))),
        );
        out.push(Figure {
            stem: "data-scaling".into(),
            title: "AUC against the fraction of training data".into(),
            read: "Still rising at 100 %: more data would help. Flat: the model, not the data, is the limit.".into(),
            plot: plots::lines(&series, "Data scaling", "fraction of the data", "AUC")?,
            wide: false,
        });
    }
    Ok(out)
}

/// The comparison as a page ([`super::page`]): summary, the main table, seeds, held-out
/// sources, what each experiment changes, warnings, figures.
pub fn document(c: &Value, title: &str, figures: Vec<Figure>) -> Doc {
    let mut summary = Vec::new();
    let baseline = c["baseline"].as_str().unwrap_or("");
    let n = rows_of(c).len();
    summary.push(Block::Para(format!(
        "{n} experiments against the baseline {baseline}. p: DeLong on the pooled predictions where both scored the same items in the same folds, otherwise a bootstrap of each side; p (Holm): adjusted across all {} comparisons.",
        rows_of(c).iter().filter(|e| !e["vs_baseline"].is_null()).count()
    )));
    let best = rows_of(c)
        .iter()
        .filter(|e| e["vs_baseline"]["significant"] == json!(true))
        .map(|e| {
            format!(
                "{} ({:+.3})",
                e["name"].as_str().unwrap_or(""),
                e["vs_baseline"]["delta"].as_f64().unwrap_or(0.0)
            )
        })
        .collect::<Vec<_>>();
    summary.push(Block::Para(if best.is_empty() {
        "No experiment differs from the baseline after Holm's correction.".into()
    } else {
        format!(
            "Different from the baseline after Holm's correction: {}.",
            best.join(", ")
        )
    }));
    let warnings: Vec<String> = c["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(String::from))
        .collect();
    if !warnings.is_empty() {
        summary.push(Block::Warnings(warnings));
    }
    let (head, rows) = main_table(c);
    summary.push(Block::Table { head, rows });
    let mut sections = vec![Section {
        id: "summary",
        title: "Summary".into(),
        blocks: summary,
    }];
    let noted = |id, title: &str, note: &str, (head, rows): (Vec<String>, Vec<Vec<String>>)| Section {
        id,
        title: title.into(),
        blocks: vec![Block::Note(note.into()), Block::Table { head, rows }],
    };
    if let Some(t) = groups_table(c) {
        let note =
            "Mean ± sample std of each seed's pooled AUC, and of its ΔAUC against the baseline of the same seed.";
        sections.push(noted("seeds", "Across seeds", note, t));
    }
    if let Some(t) = held_out_table(c) {
        let note = "AUC on the reals plus the fakes of the sources each model trained on, and plus the fakes of the sources its split held out.";
        sections.push(noted("held-out", "Held-out sources", note, t));
    }
    if !figures.is_empty() {
        sections.push(Section {
            id: "figures",
            title: "Figures".into(),
            blocks: vec![Block::Figures(figures.iter().map(|f| f.stem.clone()).collect())],
        });
    }
    let (head, rows) = changes_table(c);
    sections.push(Section {
        id: "changes",
        title: "What each experiment changes".into(),
        blocks: vec![Block::Table { head, rows }],
    });
    if let Some(p) = c["provenance"].as_array() {
        let short = |v: &Value| v.as_str().map_or("–".to_string(), |h| h.chars().take(16).collect());
        let rows = p
            .iter()
            .map(|r| {
                vec![
                    r["variant"].as_str().unwrap_or("").to_string(),
                    short(&r["predictions"]),
                    short(&r["split"]),
                ]
            })
            .collect();
        sections.push(Section {
            id: "provenance",
            title: "Provenance".into(),
            blocks: vec![
                Block::Para(format!(
                    "Study {}, compared by flow {}: the output hash of each variant's predictions and split (out/<study>/run.json says when and at which commit each was computed).",
                    c["study"].as_str().unwrap_or(""),
                    env!("CARGO_PKG_VERSION")
                )),
                Block::Table {
                    head: ["variant", "predictions", "split"].map(String::from).to_vec(),
                    rows,
                },
            ],
        });
    }
    Doc {
        title: title.to_string(),
        sections,
        figures,
        data: "study.json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 items in 4 folds, fakes of two sources; `skill` separates the classes.
    fn columns(skill: f64, salt: u64) -> Columns {
        let n = 40;
        let noise = |i: usize| ((i as u64 * 2654435761 + salt * 97) % 1000) as f64 / 1000.0;
        Columns {
            items: (0..n).map(|i| format!("i{i}")).collect(),
            labels: (0..n).map(|i| (i % 2) as u8).collect(),
            sources: (0..n)
                .map(|i| match i % 4 {
                    1 => "gan".into(),
                    3 => "swap".into(),
                    _ => "real".into(),
                })
                .collect(),
            folds: (0..n).map(|i| (i / 10) as u32).collect(),
            score: (0..n).map(|i| (i % 2) as f64 * skill + noise(i)).collect(),
            members: Vec::new(),
        }
    }

    fn exp(name: &str, skill: f64, parameters: Option<u64>) -> Experiment {
        Experiment {
            name: name.into(),
            group: name.into(),
            seed: None,
            predictions: columns(skill, name.len() as u64),
            changes: vec![format!("train.model={name}")],
            held_out: BTreeSet::new(),
            parameters,
        }
    }

    #[test]
    fn a_backbone_study_gets_a_params_column_and_a_size_plot() {
        let exps = [
            exp("small", 0.3, Some(20_512)),
            exp("resnet18", 0.6, Some(11_177_538)),
            exp("resnet50", 0.7, Some(23_512_130)),
        ];
        let c = compare(&exps, "small", &Options::default()).unwrap();
        assert_eq!(c["experiments"][1]["parameters"], json!(11_177_538));
        let md = markdown(&c);
        assert!(
            md.contains("| params |") && md.contains("11.18M") && md.contains("0.021M"),
            "{md}"
        );
        let stems: Vec<String> = figures(&c).unwrap().into_iter().map(|f| f.stem).collect();
        assert!(stems.contains(&"size".to_string()), "{stems:?}");
        // One size for all (or none known): no column, no plot.
        let same = [exp("a", 0.3, Some(5)), exp("b", 0.6, Some(5))];
        let c = compare(&same, "a", &Options::default()).unwrap();
        assert!(!figures(&c).unwrap().iter().any(|f| f.stem == "size"));
        let none = [exp("a", 0.3, None), exp("b", 0.6, None)];
        let c = compare(&none, "a", &Options::default()).unwrap();
        assert!(!markdown(&c).contains("params"));
    }
}
