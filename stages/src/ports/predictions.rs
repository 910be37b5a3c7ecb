//! The `predictions` artifact EnsembleInfer writes:
//! * `predictions.csv` — `item,group,label,source,fold,score,<member>…`, sorted by item: every
//!   item scored by the models of the fold that held it out; `score` is the ensemble's
//!   P(fake), then one column per member (its calibrated P(fake); empty where a cascade's fast
//!   model decided alone). Probabilities with 9 decimals.
//! * `infer.json` — [`InferDoc`]: members and their temperatures per fold, TTA, aggregation,
//!   cascade, counts.

use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::model::{Aggregate, Tta};

pub use super::PREDICTIONS as PORT;

pub const ROWS: &str = "predictions.csv";
pub const DOC: &str = "infer.json";

/// The fixed columns of `predictions.csv`, before the members'.
pub const COLUMNS: [&str; 6] = ["item", "group", "label", "source", "fold", "score"];

#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    pub item: String,
    pub group: String,
    pub label: u8,
    pub source: String,
    pub fold: u32,
    pub score: f64,
    /// One per member, in column order.
    pub members: Vec<Option<f64>>,
}

/// `predictions.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Member names (column headers after `score`).
    pub members: Vec<String>,
    pub rows: Vec<PredictionRow>,
}

impl Predictions {
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let mut header: Vec<&str> = COLUMNS.to_vec();
        header.extend(self.members.iter().map(String::as_str));
        super::write_records(
            &dir.join(ROWS),
            &header,
            self.rows.iter().map(|r| {
                let mut rec = vec![
                    r.item.clone(),
                    r.group.clone(),
                    r.label.to_string(),
                    r.source.clone(),
                    r.fold.to_string(),
                    format!("{:.9}", r.score),
                ];
                rec.extend(r.members.iter().map(|v| v.map_or(String::new(), |x| format!("{x:.9}"))));
                rec
            }),
        )
    }

    /// Reads `predictions.csv` of `dir`; errors name the file, the row and the column.
    pub fn read(dir: &Path) -> Result<Predictions, String> {
        Predictions::read_file(&dir.join(ROWS))
    }

    /// [`Predictions::read`] of a `predictions.csv` stored elsewhere (a cache object).
    pub fn read_file(path: &Path) -> Result<Predictions, String> {
        let path = path.to_path_buf();
        let err = |e: String| format!("{}: {e}", path.display());
        let mut r = csv::Reader::from_path(&path).map_err(|e| err(e.to_string()))?;
        let head: Vec<String> = r
            .headers()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .map(String::from)
            .collect();
        let col = |name: &str| {
            head.iter()
                .position(|h| h == name)
                .ok_or_else(|| err(format!("no column `{name}` (columns: {})", head.join(","))))
        };
        let (ci, cg, cl, cs, cf, cscore) = (
            col("item")?,
            col("group")?,
            col("label")?,
            col("source")?,
            col("fold")?,
            col("score")?,
        );
        let member_cols: Vec<usize> = (cscore + 1..head.len()).collect();
        let mut p = Predictions {
            members: member_cols.iter().map(|&c| head[c].clone()).collect(),
            rows: Vec::new(),
        };
        for (line, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| err(e.to_string()))?;
            let row = line + 2;
            let num = |c: usize| -> Result<f64, String> {
                rec[c]
                    .parse::<f64>()
                    .map_err(|_| err(format!("row {row}: `{}` is not a number ({})", &rec[c], head[c])))
            };
            let members = member_cols
                .iter()
                .map(|&c| if rec[c].is_empty() { Ok(None) } else { num(c).map(Some) })
                .collect::<Result<Vec<_>, _>>()?;
            p.rows.push(PredictionRow {
                item: rec[ci].to_string(),
                group: rec[cg].to_string(),
                label: match &rec[cl] {
                    "0" => 0,
                    "1" => 1,
                    other => return Err(err(format!("row {row}: label `{other}` is not 0 or 1"))),
                },
                source: rec[cs].to_string(),
                fold: rec[cf].parse().map_err(|_| err(format!("row {row}: bad fold")))?,
                score: num(cscore)?,
                members,
            });
        }
        if p.rows.is_empty() {
            return Err(err("no predictions".into()));
        }
        Ok(p)
    }
}

/// The model and temperature used for one fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldModel {
    pub from: String,
    pub temperature: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    /// By fold (as a string key), in fold order.
    pub folds: IndexMap<String, FoldModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CascadeInfo {
    pub fast: String,
    pub threshold: f64,
    pub folds: IndexMap<String, FoldModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldCounts {
    pub items: usize,
    /// Items the ensemble scored (the rest: the cascade's fast model alone).
    pub ensemble: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub items: usize,
    pub ensemble: usize,
    pub fast_only: usize,
    pub per_fold: IndexMap<String, FoldCounts>,
}

/// `infer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferDoc {
    pub members: Vec<MemberInfo>,
    pub tta: Vec<Tta>,
    pub aggregate: Aggregate,
    pub calibrated: bool,
    pub cascade: Option<CascadeInfo>,
    pub counts: Counts,
    pub device: String,
    pub libtorch: String,
}

impl InferDoc {
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(DOC), self, true)
    }
}
