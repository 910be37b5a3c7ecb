//! Every file that passes from one stage to another, defined once: one module per artifact
//! type, each with its [`PortType`], its file names, its row and document types, and the only
//! code that reads and writes them. Producers and consumers — in this crate and in
//! `flow-worker` — use these, so a format change is a compile error wherever it matters.
//!
//! | port type        | module               | files                                              |
//! |------------------|----------------------|----------------------------------------------------|
//! | `dataset`        | [`dataset`]          | `manifest.csv`, `report.json` (+ the images)       |
//! | `split`          | [`split`]            | `folds.csv`, `split.json`                          |
//! | `tensors`        | [`tensors`]          | `index.csv`, `preprocess.json`, `pixels-NNN.u8`    |
//! | `models`         | [`models`]           | `model.safetensors`, `history.csv`, `scores.csv`, `meta.json` |
//! | `calibration`    | [`calibration`]      | `calibration.json`, `reliability.csv`, `scores.csv` |
//! | `hard-negatives` | [`hard_negatives`]   | `hard_negatives.csv`, `mine.json`                  |
//! | `predictions`    | [`predictions`]      | `predictions.csv`, `infer.json`                    |
//! | `report`         | [`report`]           | `metrics.json`, `report.md`, `index.html`, `plots/` |
//! | `spectrum`       | [`spectrum`]         | `spectrum.json`, `mean-*.png`, `diff-*.png`, `azimuthal.svg\|png` |
//! | `explanations`   | [`explanations`]     | `explain.json`, `maps.npy`, `overlays/`, `localisation.csv` |
//! | `study`          | `crate::study`       | `study.json`, `study.md`, `study.tex`, `index.html`, `plots/` |
//!
//! This module is a leaf: it imports no stage kind, so stage modules may all import it. The
//! writers keep each file's exact bytes (number formats, column order, pretty JSON without a
//! trailing newline unless said otherwise): outputs are content-addressed, and a byte that
//! changes for no reason re-runs everything downstream.

use std::path::Path;

use flow_engine::PortType;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod calibration;
pub mod dataset;
pub mod explanations;
pub mod hard_negatives;
pub mod models;
pub mod predictions;
pub mod report;
pub mod spectrum;
pub mod split;
pub mod tensors;

/// Defines the port type constants and [`ALL`] together, so a new type cannot be left out.
macro_rules! port_types {
    ($($(#[$doc:meta])* $name:ident = $s:literal,)*) => {
        $($(#[$doc])* pub const $name: PortType = PortType($s);)*
        /// Every artifact type of this crate (what an `Exec` may declare with `produces`),
        /// and `files`, which any input accepts.
        pub const ALL: &[PortType] = &[PortType::FILES, $($name),*];
    };
}

port_types! {
    /// A dataset manifest (+ the images, for generated ones).
    DATASET = "dataset",
    /// Folds per item.
    SPLIT = "split",
    /// Preprocessed pixels.
    TENSORS = "tensors",
    /// One trained model per fold.
    MODELS = "models",
    /// Temperatures and calibrated scores per fold.
    CALIBRATION = "calibration",
    /// Hard negatives per fold.
    HARD_NEGATIVES = "hard-negatives",
    /// Out-of-fold predictions.
    PREDICTIONS = "predictions",
    /// A report.
    REPORT = "report",
    /// Mean log-magnitude Fourier spectra per class and source.
    SPECTRUM = "spectrum",
    /// A study's comparison of its variants.
    STUDY = "study",
    /// Class-activation maps, overlays and localisation scores per fold.
    EXPLANATIONS = "explanations",
}

/// The rows of the CSV file at `path` (header names select the columns). Errors name the file
/// and say which kind of file it should have been (`what`).
pub fn read_rows<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>, String> {
    let mut r = csv::Reader::from_path(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    r.deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| format!("bad {what} {}: {e}", path.display()))
}

/// Write `rows` as CSV with a header from the field names (serde's number formats).
pub fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), String> {
    let mut w = csv_writer(path)?;
    for r in rows {
        w.serialize(r)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    w.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Write records given as strings (for files whose number formats are fixed by hand).
pub fn write_records<I, R>(path: &Path, header: &[&str], records: I) -> Result<(), String>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut w = csv_writer(path)?;
    let err = |e: csv::Error| format!("cannot write {}: {e}", path.display());
    if !header.is_empty() {
        w.write_record(header).map_err(err)?;
    }
    for r in records {
        w.write_record(r).map_err(err)?;
    }
    w.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn csv_writer(path: &Path) -> Result<csv::Writer<std::fs::File>, String> {
    csv::Writer::from_path(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The JSON document at `path`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("bad JSON in {}: {e}", path.display()))
}

/// Write `doc` as pretty JSON; `newline` adds a final `\n` (the files `flow-worker` writes
/// have one, the others not).
pub fn write_json<T: Serialize>(path: &Path, doc: &T, newline: bool) -> Result<(), String> {
    let mut s = serde_json::to_string_pretty(doc).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    if newline {
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
