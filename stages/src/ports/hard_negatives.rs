//! The `hard-negatives` artifact MineHardNegatives writes:
//! * `hard_negatives.csv` — [`HardNegative`]: `item,fold,score`, the real *training* items of
//!   each fold that fold's calibrated model scores most fake (score: calibrated P(fake), 9
//!   decimals), most fake first;
//! * `mine.json` — [`MineSummary`]: per fold how many real training items there were and how
//!   many were taken.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::HARD_NEGATIVES as PORT;

pub const ROWS: &str = "hard_negatives.csv";
pub const SUMMARY: &str = "mine.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardNegative {
    pub item: String,
    /// The fold whose model mined it (and whose training set holds it).
    pub fold: u32,
    pub score: f64,
}

pub fn read_rows(dir: &Path) -> Result<Vec<HardNegative>, String> {
    super::read_rows(&dir.join(ROWS), "hard negatives file")
}

pub fn write_rows(dir: &Path, rows: &[HardNegative]) -> Result<(), String> {
    super::write_records(
        &dir.join(ROWS),
        &["item", "fold", "score"],
        rows.iter()
            .map(|r| [r.item.clone(), r.fold.to_string(), format!("{:.9}", r.score)]),
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldMined {
    pub fold: u32,
    pub real_train_items: usize,
    pub hard_negatives: usize,
    /// The lowest score taken (none taken: null).
    pub min_score: Option<f64>,
}

/// `mine.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MineSummary {
    pub folds: Vec<FoldMined>,
}

impl MineSummary {
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(SUMMARY), self, false)
    }
}
