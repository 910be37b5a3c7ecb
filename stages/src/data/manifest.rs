//! The dataset manifest Ingest writes (`manifest.csv`) and every later data stage reads.
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

use serde::{Deserialize, Serialize};

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

pub fn write_csv(path: &std::path::Path, items: &[Item]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    for it in items {
        w.serialize(it).map_err(std::io::Error::other)?;
    }
    w.flush()
}

pub fn read_csv(path: &std::path::Path) -> Result<Vec<Item>, String> {
    let mut r = csv::Reader::from_path(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    r.deserialize()
        .collect::<Result<Vec<Item>, _>>()
        .map_err(|e| format!("bad manifest {}: {e}", path.display()))
}
