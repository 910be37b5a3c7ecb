//! The `dataset` artifact: the manifest Ingest (or an `Exec` with `produces: "dataset"`) writes
//! and every later data stage reads, and Ingest's `report.json`.
//!
//! `manifest.csv` paths are relative to the dataset: its workspace root (run-record meta
//! `root`) for folder datasets, the producing stage's outputs otherwise.
//!
//! Columns: `item,path,hash,label,source,group,width,height,format,split`
//! * `item`   — stable id: the path relative to the dataset root without extension
//! * `path`   — relative to the dataset root ('/'-separated)
//! * `hash`   — blake3 of the file's bytes (64 hex)
//! * `label`  — 0 real, 1 fake
//! * `source` — e.g. `real`, `gan_upsample`; `real` items may carry their own source name
//! * `group`  — identity group: items of one group never end up in two folds
//! * `width,height,format` — as decoded (`png`, `jpeg`, `webp`, `bmp`, …)
//! * `split`  — `train`/`val`/`test` for pre-split datasets, else empty

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::DATASET as PORT;

pub const MANIFEST: &str = "manifest.csv";
pub const REPORT_JSON: &str = "report.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub item: String,
    pub path: String,
    pub hash: String,
    pub label: u8,
    pub source: String,
    pub group: String,
    pub width: u32,
    pub height: u32,
    pub format: String,
    #[serde(default)]
    pub split: String,
}

/// `manifest.csv` of the dataset in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Vec<Item>, String> {
    super::read_rows(&dir.join(MANIFEST), "manifest")
}

pub fn write_manifest(dir: &Path, items: &[Item]) -> Result<(), String> {
    super::write_rows(&dir.join(MANIFEST), items)
}

/// A bad item: path and what is wrong with it.
#[derive(Debug, Clone, Serialize)]
pub struct BadItem {
    pub path: String,
    pub problem: String,
}

/// `report.json`: what Ingest found.
#[derive(Debug, Default, Serialize)]
pub struct IngestReport {
    pub items: usize,
    pub by_label: BTreeMap<String, usize>,
    pub by_source: BTreeMap<String, usize>,
    pub groups: usize,
    pub skipped: Vec<BadItem>,
    /// Identical files under one label, merged into one group.
    pub duplicates: Vec<Vec<String>>,
}

impl IngestReport {
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(REPORT_JSON), self, false)
    }
}
