//! `Preprocess`: decode every item of a dataset, square it (center crop or letterbox), resize
//! to `size` and store compact u8 shards that training memory-maps.
//!
//! ```ron
//! "preprocess": Preprocess(dataset: "ingest", size: 64, normalize: ImageNet),
//! ```
//! Outputs:
//! * `pixels-NNN.u8` — raw `[rows, size, size, 3]` u8 (HWC, RGB), rows in `index.csv` order;
//! * `index.csv` — `row,shard,item,label,source,group,hash,mean_r,mean_g,mean_b,sq_r,sq_g,sq_b`:
//!   per-item channel means of x and x² (x in [0,1]) so per-fold real-only normalisation
//!   statistics cost nothing at training time;
//! * `preprocess.json` — size, crop, filter, normalisation, shard layout.
//!
//! Normalisation is applied when batches are made (ImageNet mean/std, statistics of the
//! *real training items of each fold* — `RealOnly` — or none); it is recorded here so a
//! change reaches every consumer. Reading verifies each file against the manifest's hash.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use flow_engine::{
    key_params_of, Code, ConfigProblem, ExecCtx, Input, PortType, ResolvedInput, Resources, StageConfig, StageError,
    StageKind,
};
use serde::{Deserialize, Serialize};

use super::imageops::{self, Crop, Filter};
use crate::ports::dataset::{read_manifest, Item};
use crate::ports::tensors::{shard_name, write_index, LAYOUT};
pub use crate::ports::tensors::{IndexRow, Normalize, PreprocessInfo};
pub use crate::ports::{DATASET, TENSORS};

/// Largest shard file.
const SHARD_BYTES: u64 = 1 << 30;

fn d_crop() -> Crop {
    Crop::Center
}
fn d_filter() -> Filter {
    Filter::CatmullRom
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub dataset: String,
    pub size: u32,
    #[serde(default = "d_crop")]
    pub crop: Crop,
    #[serde(default = "d_filter")]
    pub filter: Filter,
    #[serde(default)]
    pub normalize: Normalize,
}

inventory::submit! { crate::Kind(|| StageKind::new::<Preprocess>("Preprocess", 1, "decode, square, resize into u8 shards")) }

impl StageConfig for Preprocess {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("dataset", self.dataset.clone(), &[DATASET])]
    }
    fn output(&self) -> PortType {
        TENSORS
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["dataset"])
    }
    fn resources(&self) -> Resources {
        Resources { threads: 0, gpu: false }
    }
    fn output_facts(&self) -> serde_json::Value {
        serde_json::json!({ "image_size": self.size })
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        if !(8..=1024).contains(&self.size) {
            return vec![ConfigProblem {
                code: Code::InvalidValue,
                message: format!("`size` {} must be in 8..=1024", self.size),
                needle: None,
                help: None,
            }];
        }
        vec![]
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let input = ctx
            .inputs_of("dataset")
            .next()
            .ok_or_else(|| StageError::msg("no dataset input"))?;
        let items: Vec<Item> = read_manifest(&input.dir).map_err(StageError::msg)?;
        let source = Source::of(ctx, input, &items)?;
        let n = items.len();
        let shards = Shards::create(ctx.out_dir, n, self.size)?;
        let stats = self.process_all(ctx, &items, &source, &shards)?;
        for f in &shards.files {
            f.sync_all()?;
        }
        let index: Vec<IndexRow> = items
            .iter()
            .zip(&stats)
            .enumerate()
            .map(|(i, (it, st))| IndexRow {
                row: i,
                shard: i / shards.rows_per_shard,
                item: it.item.clone(),
                label: it.label,
                source: it.source.clone(),
                group: it.group.clone(),
                hash: it.hash.clone(),
                mean_r: round6(st[0]),
                mean_g: round6(st[1]),
                mean_b: round6(st[2]),
                sq_r: round6(st[3]),
                sq_g: round6(st[4]),
                sq_b: round6(st[5]),
            })
            .collect();
        write_index(ctx.out_dir, &index).map_err(StageError::msg)?;
        PreprocessInfo {
            size: self.size,
            crop: self.crop,
            filter: self.filter,
            normalize: self.normalize,
            count: n,
            rows_per_shard: shards.rows_per_shard,
            shards: shards.names,
            layout: LAYOUT.into(),
        }
        .write(ctx.out_dir)
        .map_err(StageError::msg)
    }
}

/// Where the dataset's files are, and whether to verify them against the manifest.
struct Source {
    base: std::path::PathBuf,
    verify: bool,
}

impl Source {
    fn of(ctx: &ExecCtx<'_>, input: &ResolvedInput, items: &[Item]) -> Result<Source, StageError> {
        // Demo images live in the Ingest output; folder datasets in the workspace.
        // Files of the workspace may change under us: verify them against the manifest.
        // Files of a stage's outputs are immutable store objects, already content-addressed.
        let (base, verify) = match input.meta.get("root").and_then(|r| r.as_str()) {
            Some(root) => (ctx.workspace.join(root), true),
            None => (input.dir.clone(), false),
        };
        // Paths stay inside the dataset. Without a workspace root, each must be one of the
        // producing stage's own outputs (an immutable object, so nothing to verify): a
        // manifest that points elsewhere (`/abs/img.png`, `../x`) would make this stage's
        // cached result depend on files no key sees.
        for it in items {
            let n = flow_cache::normalize_rel(&it.path).map_err(|why| {
                StageError::msg(format!(
                    "manifest of `{}`: path `{}` leaves the dataset ({why}); paths are relative to the dataset",
                    input.from, it.path
                ))
            })?;
            if !verify && !input.tree.entries.contains_key(&n) {
                return Err(StageError::msg(format!(
                    "manifest of `{}`: `{}` is not one of its outputs; a dataset made by a stage lists files it \
                     wrote (relative to its outputs)",
                    input.from, it.path
                )));
            }
        }
        Ok(Source { base, verify })
    }
}

/// The output shard files, created at their final length.
struct Shards {
    files: Vec<std::fs::File>,
    names: Vec<String>,
    rows_per_shard: usize,
    item_bytes: u64,
}

impl Shards {
    fn create(out_dir: &std::path::Path, n: usize, size: u32) -> Result<Shards, StageError> {
        let item_bytes = (size as u64) * (size as u64) * 3;
        let rows_per_shard = (SHARD_BYTES / item_bytes).max(1) as usize;
        let nshards = n.div_ceil(rows_per_shard).max(1);
        let mut files = Vec::new();
        let mut names = Vec::new();
        for s in 0..nshards {
            let name = shard_name(s);
            let rows = rows_per_shard.min(n - s * rows_per_shard);
            let f = std::fs::File::create(out_dir.join(&name))?;
            f.set_len(rows as u64 * item_bytes)?;
            files.push(f);
            names.push(name);
        }
        Ok(Shards {
            files,
            names,
            rows_per_shard,
            item_bytes,
        })
    }
}

impl Preprocess {
    /// Processes every item (in parallel) into its shard row; the channel statistics per item.
    fn process_all(
        &self,
        ctx: &ExecCtx<'_>,
        items: &[Item],
        source: &Source,
        shards: &Shards,
    ) -> Result<Vec<[f64; 6]>, StageError> {
        let n = items.len();
        let (rows_per_shard, item_bytes) = (shards.rows_per_shard, shards.item_bytes);
        let stats: Mutex<Vec<[f64; 6]>> = Mutex::new(vec![[0.0; 6]; n]);
        let errors: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        // A failure to write the output (a full disk) is not the image's fault: the first one
        // stops every thread and is reported once, not once per remaining image.
        let fatal: Mutex<Option<String>> = Mutex::new(None);
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let threads = ctx.threads.max(1).min(n.max(1));
        crossbeam::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|_| {
                    // One output buffer per thread, reused for every item.
                    let mut px = vec![0u8; item_bytes as usize];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n || ctx.cancelled() || fatal.lock().expect("lock").is_some() {
                            break;
                        }
                        let it = &items[i];
                        let path = source.base.join(&it.path);
                        match self.process_one(&path, it, source.verify, &mut px) {
                            Ok(st) => {
                                let (shard, row) = (i / rows_per_shard, i % rows_per_shard);
                                match shards.files[shard].write_all_at(&px, row as u64 * item_bytes) {
                                    Ok(()) => stats.lock().expect("lock")[i] = st,
                                    Err(e) => {
                                        let mut f = fatal.lock().expect("lock");
                                        f.get_or_insert_with(|| {
                                            let shard_path = ctx.out_dir.join(&shards.names[shard]);
                                            format!("cannot write {}: {e}", shard_path.display())
                                        });
                                    }
                                }
                            }
                            Err(e) => errors.lock().expect("lock").push((path.display().to_string(), e)),
                        }
                        let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if k % 256 == 0 || k == n {
                            (ctx.progress)(k as f64 / n as f64, &format!("{k}/{n} images"));
                        }
                    }
                });
            }
        })
        .map_err(|_| StageError::msg("a preprocessing thread panicked"))?;
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        if let Some(e) = fatal.into_inner().expect("lock") {
            return Err(StageError::msg(e));
        }
        let errors = errors.into_inner().expect("lock");
        if !errors.is_empty() {
            return Err(StageError::msg(format!(
                "{} image(s) could not be preprocessed:{}",
                errors.len(),
                summarize_errors(errors)
            )));
        }
        Ok(stats.into_inner().expect("lock"))
    }

    /// One item: read (and verify), decode, square and resize into `px`; its channel statistics.
    fn process_one(&self, path: &std::path::Path, it: &Item, verify: bool, px: &mut [u8]) -> Result<[f64; 6], String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        if verify && blake3::hash(&bytes).to_hex().as_str() != it.hash {
            return Err("content changed since Ingest read it (run again)".into());
        }
        imageops::process_into(&bytes, self.size, self.crop, self.filter, px).map_err(|e| e.to_string())?;
        Ok(channel_stats(px))
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Means of x and x² per channel, x = pixel / 255.
pub fn channel_stats(px: &[u8]) -> [f64; 6] {
    let mut s = [0u64; 6];
    for p in px.chunks_exact(3) {
        for c in 0..3 {
            let v = p[c] as u64;
            s[c] += v;
            s[3 + c] += v * v;
        }
    }
    let n = (px.len() / 3).max(1) as f64;
    [
        s[0] as f64 / n / 255.0,
        s[1] as f64 / n / 255.0,
        s[2] as f64 / n / 255.0,
        s[3] as f64 / n / 65025.0,
        s[4] as f64 / n / 65025.0,
        s[5] as f64 / n / 65025.0,
    ]
}

/// Per-item errors, grouped by message (a whole dataset failing the same way is one line,
/// with its count and a few of the paths), the most frequent first, at most 10 groups.
fn summarize_errors(mut errors: Vec<(String, String)>) -> String {
    errors.sort();
    let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (path, e) in &errors {
        groups.entry(e.as_str()).or_default().push(path.as_str());
    }
    let mut groups: Vec<(&str, Vec<&str>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut out = String::new();
    for (e, paths) in groups.iter().take(10) {
        if paths.len() == 1 {
            out.push_str(&format!("\n  {}: {e}", paths[0]));
        } else {
            let more = if paths.len() > 3 {
                format!(", … {} more", paths.len() - 3)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "\n  {} images: {e} ({}{more})",
                paths.len(),
                paths.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if groups.len() > 10 {
        out.push_str(&format!("\n  … and {} other kinds of error", groups.len() - 10));
    }
    out
}
