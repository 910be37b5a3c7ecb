//! The `calibration` artifact Calibrate writes:
//! * `calibration.json` — [`CalibrationDoc`]: per fold the temperature fitted on its
//!   validation items and NLL/ECE/Brier before/after on validation and test items, pooled
//!   test quality, cascade thresholds, reliability bins;
//! * `reliability.csv` — [`ReliabilityRow`]: `which,lo,hi,count,mean_pred,frac_pos` for the
//!   pooled test items, `before`/`after` calibration (6 decimals);
//! * `scores.csv` — [`CalibratedRow`]: `item,fold,role,label,source,logit,prob`, every fold's
//!   scores with its calibrated probability.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::split::Role;
use crate::metrics::{Bin, CascadePoint};

pub use super::CALIBRATION as PORT;

pub const DOC: &str = "calibration.json";
pub const RELIABILITY: &str = "reliability.csv";
pub const SCORES: &str = "scores.csv";

/// NLL, ECE and Brier score of a set of probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub n: usize,
    pub nll: f64,
    pub ece: f64,
    pub brier: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: Quality,
    pub after: Quality,
}

/// One reliability bin as `calibration.json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_pred: f64,
    pub frac_pos: f64,
}

impl From<&Bin> for DocBin {
    fn from(b: &Bin) -> DocBin {
        DocBin {
            lo: b.lo,
            hi: b.hi,
            count: b.count,
            mean_pred: b.mean_p,
            frac_pos: b.frac_pos,
        }
    }
}

/// One fold's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldCalibration {
    pub fold: u32,
    /// The model instance it calibrates (`train@fold2`).
    pub from: String,
    pub temperature: f64,
    /// `val`, or `train` when the fold has no validation items.
    pub fit_on: String,
    pub val: BeforeAfter,
    pub test: BeforeAfter,
    pub thresholds_test: Vec<CascadePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledQuality {
    pub before: Quality,
    pub after: Quality,
    pub ece_reduction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub before: Vec<DocBin>,
    pub after: Vec<DocBin>,
}

/// `calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationDoc {
    /// `temperature`.
    pub method: String,
    pub bins: usize,
    pub folds: Vec<FoldCalibration>,
    pub pooled_test: PooledQuality,
    pub thresholds_test: Vec<CascadePoint>,
    pub reliability_test: Reliability,
}

impl CalibrationDoc {
    pub fn read(dir: &Path) -> Result<CalibrationDoc, String> {
        super::read_json(&dir.join(DOC))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(DOC), self, false)
    }
}

/// What every `calibration` artifact must give its consumers (EnsembleInfer): per fold a
/// temperature, optionally per member. Calibrate's [`CalibrationDoc`] is one; a user's own
/// calibration step (an `Exec` with `produces: "calibration"`) may write just this:
/// `{"folds": [{"fold": 0, "temperature": 1.3, "from": "train@fold0"}, …]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Temperatures {
    pub folds: Vec<FoldTemperature>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FoldTemperature {
    pub fold: u32,
    pub temperature: f64,
    /// The model instance it was fitted for (`train@fold2`): names its member `train`.
    #[serde(default)]
    pub from: Option<String>,
    /// Or the member by name.
    #[serde(default)]
    pub member: Option<String>,
}

impl Temperatures {
    pub fn read(dir: &Path) -> Result<Temperatures, String> {
        super::read_json(&dir.join(DOC))
    }

    /// The temperature for member `member` of fold `fold`: the fold's entry for that member,
    /// else the fold's (first) entry.
    pub fn temperature(&self, member: &str, fold: u32) -> Result<f64, String> {
        let of_fold: Vec<&FoldTemperature> = self.folds.iter().filter(|f| f.fold == fold).collect();
        let named = |f: &&FoldTemperature| {
            f.member.as_deref() == Some(member) || f.from.as_deref().and_then(|s| s.split('@').next()) == Some(member)
        };
        let e = of_fold
            .iter()
            .find(|f| named(f))
            .or_else(|| of_fold.first())
            .ok_or_else(|| format!("{DOC} has no temperature for fold {fold}"))?;
        if !(e.temperature.is_finite() && e.temperature > 0.0) {
            return Err(format!(
                "{DOC}: fold {fold} has temperature {}, which is not positive",
                e.temperature
            ));
        }
        Ok(e.temperature)
    }
}

/// One row of `reliability.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityRow {
    /// `before` or `after`.
    pub which: String,
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_pred: f64,
    pub frac_pos: f64,
}

pub fn read_reliability(dir: &Path) -> Result<Vec<ReliabilityRow>, String> {
    super::read_rows(&dir.join(RELIABILITY), "reliability file")
}

pub fn write_reliability(dir: &Path, rows: &[ReliabilityRow]) -> Result<(), String> {
    super::write_records(
        &dir.join(RELIABILITY),
        &["which", "lo", "hi", "count", "mean_pred", "frac_pos"],
        rows.iter().map(|b| {
            [
                b.which.clone(),
                format!("{:.6}", b.lo),
                format!("{:.6}", b.hi),
                b.count.to_string(),
                format!("{:.6}", b.mean_pred),
                format!("{:.6}", b.frac_pos),
            ]
        }),
    )
}

/// One row of Calibrate's `scores.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedRow {
    pub item: String,
    pub fold: u32,
    pub role: Role,
    pub label: u8,
    pub source: String,
    pub logit: f64,
    pub prob: f64,
}

pub fn read_scores(dir: &Path) -> Result<Vec<CalibratedRow>, String> {
    super::read_rows(&dir.join(SCORES), "calibrated scores")
}

pub fn write_scores(dir: &Path, rows: &[CalibratedRow]) -> Result<(), String> {
    super::write_rows(&dir.join(SCORES), rows)
}
