//! The `split` artifact Split writes:
//! * `folds.csv` — `item,group,label,source,fold,val_for,holdout`, sorted by item: the outer
//!   fold in which an item is a test item, the outer fold whose inner validation set holds it
//!   (empty: none), whether its source is held out (1: never trained or validated on);
//! * `split.json` — [`SplitSummary`]: counts per fold, role and stratum, and the leakage check.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::SPLIT as PORT;

pub const FOLDS: &str = "folds.csv";
pub const SUMMARY: &str = "split.json";

/// One row of `folds.csv`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldRow {
    pub item: String,
    pub group: String,
    pub label: u8,
    pub source: String,
    /// The outer fold in which this item is a test item.
    pub fold: u32,
    /// The outer fold for which this item is in the inner validation set (empty: none).
    pub val_for: Option<u32>,
    pub holdout: u8,
}

impl FoldRow {
    /// Role of the item when training/evaluating outer fold `k`.
    pub fn role(&self, k: u32) -> Role {
        if self.fold == k {
            Role::Test
        } else if self.holdout == 1 {
            Role::Excluded
        } else if self.val_for == Some(k) {
            Role::Val
        } else {
            Role::Train
        }
    }
}

/// What an item is to one fold's model. Written as `train`, `val`, `test`, `excluded`
/// (`scores.csv`, `split.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Val,
    Test,
    Excluded,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
            Role::Test => "test",
            Role::Excluded => "excluded",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `folds.csv` of the split in `dir`.
pub fn read_folds(dir: &Path) -> Result<Vec<FoldRow>, String> {
    super::read_rows(&dir.join(FOLDS), "folds file")
}

pub fn write_folds(dir: &Path, rows: &[FoldRow]) -> Result<(), String> {
    super::write_rows(&dir.join(FOLDS), rows)
}

/// `split.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub items: usize,
    pub groups: usize,
    pub folds: u32,
    /// `KFold` or `Predefined`.
    pub mode: String,
    pub subsample: Option<f64>,
    /// Held-out sources, if any.
    pub holdout: Option<Vec<String>>,
    pub leakage: Leakage,
    pub per_fold: Vec<FoldCounts>,
}

/// What the leakage check found (both must be 0, or Split fails).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leakage {
    pub groups_across_folds: usize,
    pub contents_across_folds: usize,
}

/// Items of one outer fold by stratum (`real:<source>`, `fake:<source>`) and [`Role`] name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldCounts {
    pub fold: u32,
    pub strata: BTreeMap<String, BTreeMap<String, usize>>,
}

impl SplitSummary {
    pub fn read(dir: &Path) -> Result<SplitSummary, String> {
        super::read_json(&dir.join(SUMMARY))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(SUMMARY), self, false)
    }
}
