//! The `explanations` artifact Explain writes, one directory per fold:
//! * `explain.json` — [`ExplainDoc`]: the model and layers, the methods, every explained item
//!   (why it was chosen, its outcome at the threshold, its overlays, its localisation), and
//!   the localisation summary per method × source;
//! * `maps.npy` — the explained items' maps, NumPy `.npy` (`np.load`), `uint8`
//!   `[items, methods, size, size]` (value / 255 = the map in `[0, 1]`), rows in
//!   `explain.json` `items` order, methods in `methods` order;
//! * `overlays/<method>/<n>.png` — item `n`: the image, the map over it, the map alone, side
//!   by side (colour map: viridis);
//! * `localisation.csv` — [`LocRow`] for every held-out item with a mask (not only the
//!   gallery): `item,label,source,score,method,energy,hit,area,chance_hit`.
//!
//! Localisation (items with a manipulation mask, `ports::tensors` masks): `energy`, the share
//! of the map's mass inside the mask (mask-weighted); `hit`, whether the map's maximum falls
//! where the mask is ≥ 0.5 (the pointing game). Their chance levels: `area` (the energy a
//! uniform map puts inside) and `chance_hit` (the share of pixels with mask ≥ 0.5).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::explain::{CamMethod, CamTarget};

pub use super::EXPLANATIONS as PORT;

pub const DOC: &str = "explain.json";
pub const MAPS: &str = "maps.npy";
pub const OVERLAYS: &str = "overlays";
pub const LOCALISATION: &str = "localisation.csv";

/// A prediction's outcome at the threshold (fake is positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    TP,
    FP,
    FN,
    TN,
}

impl Outcome {
    pub fn of(label: u8, score: f64, threshold: f64) -> Outcome {
        match (label == 1, score >= threshold) {
            (true, true) => Outcome::TP,
            (false, true) => Outcome::FP,
            (true, false) => Outcome::FN,
            (false, false) => Outcome::TN,
        }
    }
    pub fn is_mistake(self) -> bool {
        matches!(self, Outcome::FP | Outcome::FN)
    }
}

/// One method's localisation of one item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Loc {
    pub energy: f64,
    pub hit: bool,
}

/// One explained item of `explain.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedItem {
    pub item: String,
    pub label: u8,
    pub source: String,
    /// The fold model's P(fake).
    pub score: f64,
    pub outcome: Outcome,
    /// Chosen for its outcome × source cell.
    pub cell: bool,
    /// Among the most confident mistakes.
    pub hard: bool,
    /// Named in the stage's `items`.
    pub requested: bool,
    /// Mean mask value in `[0, 1]`; `None`: no mask.
    pub mask_area: Option<f64>,
    /// Overlay paths relative to the fold directory, one per method.
    pub overlays: Vec<String>,
    /// One per method where the item has a mask.
    pub localisation: Vec<Loc>,
}

/// Localisation of one method over one source's masked items (`source` "all": pooled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocSummary {
    pub method: CamMethod,
    pub source: String,
    pub n: usize,
    pub energy: f64,
    pub hit_rate: f64,
    pub area: f64,
    pub chance_hit: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainDoc {
    pub fold: u32,
    /// The model instance (`train@fold0`) and its model.
    pub from: String,
    pub model: String,
    /// The layer of Grad-CAM and Grad-CAM++, and every layer the model declares.
    pub layer: String,
    pub layers: Vec<String>,
    pub methods: Vec<CamMethod>,
    pub target: CamTarget,
    pub threshold: f64,
    pub size: u32,
    /// Held-out items of the fold, and those with a mask.
    pub held_out: usize,
    pub masked: usize,
    pub items: Vec<ExplainedItem>,
    pub localisation: Vec<LocSummary>,
}

impl ExplainDoc {
    pub fn read(dir: &Path) -> Result<ExplainDoc, String> {
        super::read_json(&dir.join(DOC))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(DOC), self, true)
    }
}

/// One row of `localisation.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocRow {
    pub item: String,
    pub label: u8,
    pub source: String,
    pub score: f64,
    pub method: CamMethod,
    pub energy: f64,
    pub hit: u8,
    pub area: f64,
    pub chance_hit: f64,
}

pub fn write_localisation(dir: &Path, rows: &[LocRow]) -> Result<(), String> {
    super::write_records(
        &dir.join(LOCALISATION),
        &[
            "item",
            "label",
            "source",
            "score",
            "method",
            "energy",
            "hit",
            "area",
            "chance_hit",
        ],
        rows.iter().map(|r| {
            [
                r.item.clone(),
                r.label.to_string(),
                r.source.clone(),
                format!("{:.6}", r.score),
                format!("{:?}", r.method),
                format!("{:.6}", r.energy),
                r.hit.to_string(),
                format!("{:.6}", r.area),
                format!("{:.6}", r.chance_hit),
            ]
        }),
    )
}

pub fn read_localisation(dir: &Path) -> Result<Vec<LocRow>, String> {
    super::read_rows(&dir.join(LOCALISATION), "localisation file")
}

/// Writes a C-order `uint8` array of `shape` as NumPy's `.npy` (format 1.0): the magic, a
/// header dict padded with spaces to a multiple of 64 bytes ending in `\n`, the data.
pub fn write_npy_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<(), String> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy shape and data disagree"
    );
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({dims}), }}");
    let used = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - used % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads what [`write_npy_u8`] wrote: the shape and the data.
pub fn read_npy_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>), String> {
    let b = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = || format!("{} is not a uint8 .npy file", path.display());
    if b.len() < 10 || &b[..8] != b"\x93NUMPY\x01\x00" {
        return Err(bad());
    }
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(b.get(10..10 + hl).ok_or_else(bad)?).map_err(|_| bad())?;
    if !header.contains("'|u1'") {
        return Err(bad());
    }
    let inner = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(bad)?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let data = b[10 + hl..].to_vec();
    if shape.iter().product::<usize>() != data.len() {
        return Err(bad());
    }
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_pads_its_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.npy");
        let data: Vec<u8> = (0..24).collect();
        write_npy_u8(&p, &[2, 3, 4], &data).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!((b.len() - data.len()) % 64, 0);
        assert_eq!(read_npy_u8(&p).unwrap(), (vec![2, 3, 4], data));
    }

    #[test]
    fn outcomes_follow_the_threshold() {
        assert_eq!(Outcome::of(1, 0.5, 0.5), Outcome::TP);
        assert_eq!(Outcome::of(0, 0.7, 0.5), Outcome::FP);
        assert_eq!(Outcome::of(1, 0.2, 0.5), Outcome::FN);
        assert_eq!(Outcome::of(0, 0.1, 0.5), Outcome::TN);
    }
}
