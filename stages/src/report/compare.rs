//! `flow compare`: out-of-fold predictions of several experiments that share a split, side by
//! side, each tested against a baseline (the first experiment).
//!
//! Per experiment: pooled AUC, AUC per fold (mean ± std) and per fake source, and against the
//! baseline: ΔAUC, DeLong's test on the pooled predictions (same items, paired), a paired t-test
//! and a Wilcoxon signed-rank test over the per-fold AUCs. Experiments must score the same
//! items with the same folds (a shared split); anything else is an error that names the first
//! difference, because paired tests on different items would be meaningless.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::stage::{md, md_code, Columns};
use crate::metrics;
use crate::stats;

/// One experiment: its name, its predictions and its stages' key params (for the params diff).
pub struct Experiment {
    pub name: String,
    pub predictions: Columns,
    pub params: BTreeMap<String, Value>,
}

fn fold_aucs(p: &Columns, filter: &dyn Fn(usize) -> bool) -> BTreeMap<u32, f64> {
    let mut by: BTreeMap<u32, (Vec<f64>, Vec<u8>)> = BTreeMap::new();
    for i in 0..p.items.len() {
        if filter(i) {
            let e = by.entry(p.folds[i]).or_default();
            e.0.push(p.score[i]);
            e.1.push(p.labels[i]);
        }
    }
    by.into_iter()
        .filter_map(|(f, (s, l))| metrics::auc(&s, &l).map(|a| (f, a)))
        .collect()
}

/// Leaf-level differences of `b` against `a` (`stage.param.path: a -> b`).
pub fn params_diff(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
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
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for n in names {
        walk(n, a.get(n), b.get(n), &mut out);
    }
    out
}

/// Compares `exps` against `exps[0]`. Errors if they do not share items and folds.
pub fn compare(exps: &[Experiment]) -> Result<Value, String> {
    let base = exps.first().ok_or("nothing to compare")?;
    let order =
        |p: &Columns| -> BTreeMap<String, usize> { p.items.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect() };
    let base_idx = order(&base.predictions);
    let mut rows = Vec::new();
    let mut sources: Vec<String> = (0..base.predictions.items.len())
        .filter(|&i| base.predictions.labels[i] == 1)
        .map(|i| base.predictions.sources[i].clone())
        .collect();
    sources.sort();
    sources.dedup();
    let base_folds = fold_aucs(&base.predictions, &|_| true);
    for e in exps {
        let p = &e.predictions;
        if p.items.len() != base.predictions.items.len() {
            return Err(format!(
                "`{}` has {} predictions, `{}` has {}: experiments must share a split",
                e.name,
                p.items.len(),
                base.name,
                base.predictions.items.len()
            ));
        }
        // Align to the baseline's item order.
        let mut perm = Vec::with_capacity(p.items.len());
        for (i, item) in p.items.iter().enumerate() {
            let j = *base_idx.get(item).ok_or_else(|| {
                format!(
                    "item `{item}` of `{}` is not in `{}`: experiments must share a split",
                    e.name, base.name
                )
            })?;
            if p.folds[i] != base.predictions.folds[j] || p.labels[i] != base.predictions.labels[j] {
                return Err(format!(
                    "item `{item}` is in fold {} of `{}` but fold {} of `{}`: experiments must share a split",
                    p.folds[i], e.name, base.predictions.folds[j], base.name
                ));
            }
            perm.push((j, i));
        }
        perm.sort_unstable();
        let aligned: Vec<f64> = perm.iter().map(|&(_, i)| p.score[i]).collect();
        let labels = &base.predictions.labels;
        let folds = fold_aucs(p, &|_| true);
        let fold_vals: Vec<f64> = folds.values().copied().collect();
        let per_source: BTreeMap<&String, Option<f64>> = sources
            .iter()
            .map(|s| {
                let idx: Vec<usize> = (0..p.items.len())
                    .filter(|&i| p.labels[i] == 0 || &p.sources[i] == s)
                    .collect();
                let sc: Vec<f64> = idx.iter().map(|&i| p.score[i]).collect();
                let lb: Vec<u8> = idx.iter().map(|&i| p.labels[i]).collect();
                (s, metrics::auc(&sc, &lb))
            })
            .collect();
        let vs_base = if std::ptr::eq(e, base) {
            Value::Null
        } else {
            let a: Vec<f64> = base_folds.values().copied().collect();
            json!({
                "delong": stats::delong(&aligned, &base.predictions.score, labels),
                "paired_t": stats::paired_t(&fold_vals, &a),
                "wilcoxon": stats::wilcoxon(&fold_vals, &a),
                "params_diff": params_diff(&base.params, &e.params),
            })
        };
        rows.push(json!({
            "name": e.name,
            "auc": metrics::auc(&aligned, labels),
            "fold_auc": folds.iter().map(|(f, a)| (f.to_string(), json!(a))).collect::<serde_json::Map<_, _>>(),
            "fold_auc_summary": metrics::mean_std_ci(&fold_vals, 0.95),
            "per_source_auc": per_source,
            "vs_baseline": vs_base,
        }));
    }
    Ok(json!({"baseline": base.name, "sources": sources, "experiments": rows}))
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

/// A Markdown table of [`compare`]'s result (names Markdown-escaped with `stage::md`).
pub fn markdown(c: &Value) -> String {
    let sources = source_names(c);
    let mut s = String::new();
    let _ = write!(s, "| experiment | AUC | folds: mean ± std |");
    for src in &sources {
        let _ = write!(s, " {} |", md(src));
    }
    let _ = writeln!(s, " ΔAUC | DeLong p | paired t p | Wilcoxon p |");
    let _ = writeln!(s, "|---|---|---|{}---|---|---|---|", "---|".repeat(sources.len()));
    for e in c["experiments"].as_array().unwrap() {
        let sm = &e["fold_auc_summary"];
        let v = &e["vs_baseline"];
        let _ = write!(
            s,
            "| {} | {} | {} ± {} |",
            md(e["name"].as_str().unwrap_or("")),
            f(&e["auc"], 3),
            f(&sm["mean"], 3),
            f(&sm["std"], 3)
        );
        for src in &sources {
            let _ = write!(s, " {} |", f(&e["per_source_auc"][*src], 3));
        }
        if v.is_null() {
            let _ = writeln!(s, " (baseline) | | | |");
        } else {
            let _ = writeln!(
                s,
                " {} | {} | {} | {} |",
                f(&v["delong"]["diff"], 4),
                f(&v["delong"]["p_value"], 4),
                f(&v["paired_t"]["p_value"], 4),
                f(&v["wilcoxon"]["p_value"], 4)
            );
        }
    }
    for e in c["experiments"].as_array().unwrap() {
        if let Some(d) = e["vs_baseline"]["params_diff"].as_array() {
            let _ = writeln!(
                s,
                "\n{} vs {}:",
                md_code(e["name"].as_str().unwrap_or("")),
                md_code(c["baseline"].as_str().unwrap_or(""))
            );
            if d.is_empty() {
                let _ = writeln!(s, "- (no param differences)");
            }
            for x in d {
                let _ = writeln!(s, "- {}", md_code(x.as_str().unwrap_or("")));
            }
        }
    }
    s
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
            c => o.push(c),
        }
    }
    o
}

/// A LaTeX `tabular` (booktabs) of [`compare`]'s result, ready to paste into a paper.
pub fn latex(c: &Value) -> String {
    let sources = source_names(c);
    let mut s = String::new();
    let _ = writeln!(s, "% generated by flow compare; needs \\usepackage{{booktabs}}");
    let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}", "r".repeat(3 + sources.len()));
    let _ = writeln!(s, "\\toprule");
    let _ = write!(s, "Experiment & AUC & Folds (mean $\\pm$ std)");
    for src in &sources {
        let _ = write!(s, " & {}", tex(src));
    }
    let _ = writeln!(s, " & DeLong $p$ \\\\");
    let _ = writeln!(s, "\\midrule");
    for e in c["experiments"].as_array().unwrap() {
        let sm = &e["fold_auc_summary"];
        let _ = write!(
            s,
            "{} & {} & {} $\\pm$ {}",
            tex(e["name"].as_str().unwrap_or("")),
            f(&e["auc"], 3),
            f(&sm["mean"], 3),
            f(&sm["std"], 3)
        );
        for src in &sources {
            let _ = write!(s, " & {}", f(&e["per_source_auc"][*src], 3));
        }
        let p = &e["vs_baseline"]["delong"]["p_value"];
        let _ = writeln!(s, " & {} \\\\", if p.is_null() { "--".to_string() } else { f(p, 4) });
    }
    let _ = writeln!(s, "\\bottomrule");
    let _ = writeln!(s, "\\end{{tabular}}");
    s
}
