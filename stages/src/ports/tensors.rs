//! The `tensors` artifact Preprocess writes and training memory-maps:
//! * `pixels-NNN.u8` — raw `[rows, size, size, 3]` u8 (HWC, RGB), rows in `index.csv` order,
//!   [`PreprocessInfo::rows_per_shard`] rows per shard;
//! * `index.csv` — [`IndexRow`]: `row,shard,item,label,source,group,hash,mean_r,mean_g,mean_b,
//!   sq_r,sq_g,sq_b`, the per-item channel means of x and x² (x in [0,1], 6 decimals), so per-fold
//!   real-only normalisation costs nothing at training time;
//! * `preprocess.json` — [`PreprocessInfo`]: size, crop, filter, normalisation, shard layout.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::imageops::{Crop, Filter};

pub use super::TENSORS as PORT;

pub const INDEX: &str = "index.csv";
pub const INFO: &str = "preprocess.json";

/// The file name of shard `s`.
pub fn shard_name(s: usize) -> String {
    format!("pixels-{s:03}.u8")
}

/// How batches are normalised (Preprocess's param; applied by the consumer, recorded here so a
/// change reaches every consumer).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub enum Normalize {
    /// ImageNet mean/std (what pretrained torchvision weights expect).
    #[default]
    ImageNet,
    /// Mean/std of the real images of each fold's training set (seed 000's "real_norm").
    RealOnly,
    /// Pixels scaled to [0, 1] only.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexRow {
    pub row: usize,
    pub shard: usize,
    pub item: String,
    pub label: u8,
    pub source: String,
    pub group: String,
    pub hash: String,
    pub mean_r: f64,
    pub mean_g: f64,
    pub mean_b: f64,
    pub sq_r: f64,
    pub sq_g: f64,
    pub sq_b: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreprocessInfo {
    pub size: u32,
    pub crop: Crop,
    pub filter: Filter,
    pub normalize: Normalize,
    pub count: usize,
    pub rows_per_shard: usize,
    pub shards: Vec<String>,
    pub layout: String,
}

/// The layout string `preprocess.json` records.
pub const LAYOUT: &str = "u8 [rows, size, size, 3] (HWC, RGB)";

impl PreprocessInfo {
    pub fn read(dir: &Path) -> Result<PreprocessInfo, String> {
        super::read_json(&dir.join(INFO))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(INFO), self, false)
    }
}

pub fn read_index(dir: &Path) -> Result<Vec<IndexRow>, String> {
    super::read_rows(&dir.join(INDEX), "index file")
}

pub fn write_index(dir: &Path, rows: &[IndexRow]) -> Result<(), String> {
    super::write_rows(&dir.join(INDEX), rows)
}
