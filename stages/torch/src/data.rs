//! Reading Preprocess's output (memory-mapped u8 shards, `index.csv`, `preprocess.json`) and
//! Split's `folds.csv`, normalisation statistics, and a prefetching batch builder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use flow_stages::model::Augment;
pub use flow_stages::ports::models::Norm;
use flow_stages::ports::split::{FoldRow, Role};
use flow_stages::ports::tensors::{self, IndexRow, Normalize, PreprocessInfo};
use memmap2::Mmap;

use crate::augment::{self, Scratch};
use crate::util::{Context, Res};

/// A preprocessed dataset: the rows of `index.csv` and their pixels.
pub struct Dataset {
    pub dir: PathBuf,
    pub info: PreprocessInfo,
    pub index: Vec<IndexRow>,
    pub size: usize,
    item_bytes: usize,
    maps: Vec<Mmap>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Res<Dataset> {
        let info = PreprocessInfo::read(dir)?;
        let index_path = dir.join(tensors::INDEX);
        let index = tensors::read_index(dir)?;
        if index.len() != info.count {
            return Err(format!(
                "{} has {} rows but preprocess.json says {} items",
                index_path.display(),
                index.len(),
                info.count
            ));
        }
        let size = info.size as usize;
        let item_bytes = size * size * 3;
        let rps = info.rows_per_shard.max(1);
        let mut maps = Vec::new();
        for (s, name) in info.shards.iter().enumerate() {
            let p = dir.join(name);
            let f = std::fs::File::open(&p).ctx(|| format!("cannot open {}", p.display()))?;
            let rows = rps.min(info.count.saturating_sub(s * rps));
            let want = (rows * item_bytes) as u64;
            let have = f.metadata().ctx(|| format!("cannot stat {}", p.display()))?.len();
            if have != want {
                return Err(format!(
                    "{} has {have} bytes, expected {want} ({rows} rows of {size}×{size}×3): the preprocessed data is damaged",
                    p.display()
                ));
            }
            // SAFETY: the shards are immutable cache objects; nothing writes them while mapped.
            let m = unsafe { Mmap::map(&f) }.ctx(|| format!("cannot map {}", p.display()))?;
            maps.push(m);
        }
        for (i, row) in index.iter().enumerate() {
            if row.row != i || row.shard != i / rps || row.shard >= maps.len() {
                return Err(format!(
                    "{}: row {} is out of order or names a missing shard",
                    index_path.display(),
                    i
                ));
            }
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            info,
            index,
            size,
            item_bytes,
            maps,
        })
    }

    /// u8 HWC pixels of index row `row`.
    pub fn pixels(&self, row: usize) -> &[u8] {
        let rps = self.info.rows_per_shard.max(1);
        let (s, local) = (row / rps, row % rps);
        &self.maps[s][local * self.item_bytes..(local + 1) * self.item_bytes]
    }
}

/// One item of the dataset with its split assignment.
#[derive(Clone, Debug)]
pub struct Item {
    /// Row in `index.csv` (and in the shards).
    pub row: usize,
    pub item: String,
    pub label: u8,
    pub source: String,
    pub group: String,
    pub split: FoldRow,
}

/// Items of `folds.csv`, in `index.csv` order. Items Split left out (subsampling) are not
/// items; an item of `folds.csv` missing from the index is an error.
pub fn join(ds: &Dataset, folds: &[FoldRow]) -> Res<Vec<Item>> {
    let by_item: HashMap<&str, &FoldRow> = folds.iter().map(|f| (f.item.as_str(), f)).collect();
    let in_index: HashMap<&str, usize> = ds.index.iter().map(|r| (r.item.as_str(), r.row)).collect();
    let missing: Vec<String> = folds
        .iter()
        .filter(|f| !in_index.contains_key(f.item.as_str()))
        .map(|f| f.item.clone())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} item(s) of the split are not in the preprocessed data {} (split and data come from different datasets?): {}",
            missing.len(),
            ds.dir.display(),
            crate::util::list_some(&missing, 5)
        ));
    }
    let mut items = Vec::with_capacity(folds.len());
    for r in &ds.index {
        if let Some(f) = by_item.get(r.item.as_str()) {
            if f.label != r.label {
                return Err(format!(
                    "item {} has label {} in the split but {} in the preprocessed data",
                    r.item, f.label, r.label
                ));
            }
            items.push(Item {
                row: r.row,
                item: r.item.clone(),
                label: r.label,
                source: r.source.clone(),
                group: f.group.clone(),
                split: (*f).clone(),
            });
        }
    }
    Ok(items)
}

pub fn read_folds(dir: &Path) -> Res<Vec<FoldRow>> {
    flow_stages::ports::split::read_folds(dir)
}

/// The normalisation for fold `fold` as `preprocess.json` asks: ImageNet, the statistics of
/// the fold's real training items (from `index.csv`'s per-item moments), or none.
pub fn norm_for_fold(ds: &Dataset, items: &[Item], fold: u32) -> Res<Norm> {
    match ds.info.normalize {
        Normalize::ImageNet => Ok(Norm::imagenet()),
        Normalize::None => Ok(Norm::unit()),
        Normalize::RealOnly => {
            let mut n = 0usize;
            let mut m = [0f64; 3];
            let mut sq = [0f64; 3];
            for it in items
                .iter()
                .filter(|it| it.label == 0 && it.split.role(fold) == Role::Train)
            {
                let r = &ds.index[it.row];
                n += 1;
                for (c, (mv, sv)) in [(r.mean_r, r.sq_r), (r.mean_g, r.sq_g), (r.mean_b, r.sq_b)]
                    .into_iter()
                    .enumerate()
                {
                    m[c] += mv;
                    sq[c] += sv;
                }
            }
            if n == 0 {
                return Err(format!(
                    "normalize: RealOnly needs real training items, and fold {fold} has none in its training set"
                ));
            }
            let mut mean = [0f32; 3];
            let mut std = [0f32; 3];
            for c in 0..3 {
                let mu = m[c] / n as f64;
                let var = (sq[c] / n as f64 - mu * mu).max(0.0);
                if var.sqrt() < 1e-4 {
                    return Err(format!(
                            "normalize: RealOnly: the {n} real training images of fold {fold} have no variation in channel {} (std {:.2e}); use ImageNet or None",
                            ["R", "G", "B"][c],
                            var.sqrt()
                        ));
                }
                mean[c] = mu as f32;
                std[c] = var.sqrt() as f32;
            }
            Ok(Norm {
                mode: Normalize::RealOnly,
                mean,
                std,
            })
        }
    }
}

/// One batch request: dataset rows and, when augmenting, one seed per row.
pub struct BatchReq {
    pub rows: Vec<usize>,
    pub seeds: Option<Vec<u64>>,
}

/// Builds batches (f32 NHWC, normalised, augmented if asked) on a separate thread, one batch
/// ahead of `consume`, which runs on the calling thread with (batch number, pixels, count).
/// Buffers are recycled. Stops early when `consume` fails.
pub fn prefetch<F>(ds: &Dataset, norm: &Norm, aug: Option<&Augment>, reqs: Vec<BatchReq>, mut consume: F) -> Res<()>
where
    F: FnMut(usize, &[f32], usize) -> Res<()>,
{
    let s = ds.size;
    let per = 3 * s * s;
    let (tx, rx) = mpsc::sync_channel::<(usize, Res<Vec<f32>>, usize)>(2);
    let (free_tx, free_rx) = mpsc::channel::<Vec<f32>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut scratch = Scratch::default();
            for (bi, req) in reqs.into_iter().enumerate() {
                let mut buf = free_rx.try_recv().unwrap_or_default();
                let n = req.rows.len();
                buf.resize(n * per, 0.0);
                let mut res = Ok(());
                for (k, &row) in req.rows.iter().enumerate() {
                    let out = &mut buf[k * per..(k + 1) * per];
                    let px = ds.pixels(row);
                    match (aug, &req.seeds) {
                        (Some(a), Some(seeds)) => {
                            if let Err(e) = augment::augmented(px, s, norm, a, seeds[k], &mut scratch, out) {
                                res = Err(e);
                                break;
                            }
                        }
                        _ => augment::plain(px, s, norm, out),
                    }
                }
                let msg = match res {
                    Ok(()) => (bi, Ok(buf), n),
                    Err(e) => (bi, Err(e), n),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let mut result = Ok(());
        for (bi, buf, n) in rx.iter() {
            let buf = match buf {
                Ok(b) => b,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if let Err(e) = consume(bi, &buf, n) {
                result = Err(e);
                break;
            }
            let _ = free_tx.send(buf);
        }
        // Dropping the receiver stops the producer at its next send.
        drop(rx);
        result
    })
}

/// A batch as the models take it: `[n, 3, s, s]` (NCHW) over NHWC memory, i.e. PyTorch's
/// channels-last format (what a Python loop that permutes HWC images feeds its model; oneDNN's
/// convolutions run ~10 % faster on it than on NCHW-contiguous input at 128 px on CPU).
pub fn batch_tensor(buf: &[f32], n: usize, s: i64, device: tch::Device) -> tch::Tensor {
    tch::Tensor::from_slice(buf)
        .view([n as i64, s, s, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
}
