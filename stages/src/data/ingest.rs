//! `Ingest`: a dataset manifest from a folder of images (three layouts) or the embedded
//! demo set.
//!
//! ```ron
//! "ingest": Ingest(source: Demo(count: 480, size: 64, seed: 7)),
//! "ingest": Ingest(source: Demo(count: 480, size: 64, seed: 7, jpeg: (min: 70, max: 95))), // every item JPEG
//! "ingest": Ingest(source: Folder(root: "data", layout: ImageFolder)),  // data/{real,fake}/<source>/…
//! "ingest": Ingest(source: Folder(root: "kaggle", layout: PreSplit)),   // {train,val,test}/{real,fake}/…
//! "ingest": Ingest(source: Folder(root: "data", layout: Manifest("labels.csv"))), // path,label[,source][,group][,split]
//! ```
//! Outputs: `manifest.csv` (see [`crate::ports::dataset`]), `report.json` (counts, skipped items,
//! merged duplicates) and, for the demo set, the images under `images/`. The dataset root is
//! run-record meta, not content: renaming the folder reruns Ingest, which then writes the same
//! manifest, so nothing downstream reruns.
//!
//! Every file is decoded once. Bad data is never dropped silently: zero-byte, truncated or
//! undecodable files, unknown extensions, the same content under both labels (a leak), an
//! empty class. `on_bad_image: Fail` (default) fails with a table of offending paths; `Skip`
//! leaves them out and lists them in `report.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use flow_engine::{
    key_params_of, Code, ConfigProblem, Defaults, ExecCtx, Input, PortType, Resources, StageConfig, StageError,
    StageKind,
};
use serde::{Deserialize, Serialize};

use super::{demo, imageops};
use crate::ports::dataset::{write_manifest, BadItem, IngestReport as Report, Item};

pub use crate::ports::DATASET;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    pub source: Source,
    /// How items are grouped into identities (never split across folds).
    #[serde(default)]
    pub group_by: GroupBy,
    #[serde(default)]
    pub on_bad_image: OnBad,
    /// File extensions taken as images (lower case, without dot).
    #[serde(default = "default_exts")]
    pub extensions: Vec<String>,
}

fn default_exts() -> Vec<String> {
    ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Source {
    /// The embedded synthetic dataset (docs/demo-data.md).
    Demo {
        count: usize,
        size: u32,
        #[serde(default)]
        seed: Option<u64>,
        #[serde(default)]
        sources: Option<Vec<String>>,
        /// JPEG-encode every item, real and fake, at a quality drawn per item from the range
        /// (`.jpg` files); absent: PNG. Left out of the key when absent, so PNG keys stay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jpeg: Option<Jpeg>,
    },
    /// A folder of the workspace.
    Folder { root: String, layout: Layout },
}

/// `jpeg: (min: 70, max: 95)` (or `Jpeg(min: 70, max: 95)`): the quality range of a JPEG demo
/// set, both ends in 1..=100.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Jpeg {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Layout {
    /// `root/{real,fake}/[<source>/]…`
    ImageFolder,
    /// `root/{train,val,test}/{real,fake}/[<source>/]…`
    PreSplit,
    /// A CSV under the root: `path,label[,source][,group][,split]`; label 0/1 or real/fake.
    Manifest(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub enum GroupBy {
    /// The file stem up to and including its first run of digits: `img_001.png`,
    /// `img_001_aug2.png` and `img_001_faceswap.jpg` are one group. Stems without digits
    /// are their own group.
    #[default]
    Basename,
    /// The whole file stem.
    Stem,
    /// The parent directory (e.g. one folder per video or identity).
    Parent,
    /// The first capture group of a regex applied to the path relative to the root.
    Regex(String),
    /// The manifest's `group` column (layout `Manifest`).
    Column,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub enum OnBad {
    #[default]
    Fail,
    Skip,
}

inventory::submit! { crate::Kind(|| StageKind::new::<Ingest>("Ingest", 1, "a dataset manifest from a folder of images or the embedded demo set")) }

impl StageConfig for Ingest {
    fn inputs(&self) -> Vec<Input> {
        match &self.source {
            Source::Folder { root, .. } => vec![Input::path("root", root.clone())],
            Source::Demo { .. } => vec![],
        }
    }
    fn output(&self) -> PortType {
        DATASET
    }
    fn resolve_defaults(&mut self, d: &Defaults) {
        if let Source::Demo { seed: seed @ None, .. } = &mut self.source {
            *seed = d.u64("seed");
        }
    }
    fn key_params(&self) -> serde_json::Value {
        // The root enters as a workspace path (relative path + content digest); the file
        // listing is what matters, so a renamed root with the same content keeps the manifest.
        key_params_of(self, &[])
    }
    fn resources(&self) -> Resources {
        Resources { threads: 0, gpu: false }
    }
    fn env_facts(&self) -> Vec<(String, String)> {
        match &self.source {
            // A generator change must invalidate generated data.
            Source::Demo { .. } => vec![("demo_generator".into(), demo::GENERATOR_VERSION.to_string())],
            Source::Folder { .. } => vec![],
        }
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        match &self.source {
            Source::Folder { layout, .. } => {
                // The root is a workspace-path input: the engine checks it.
                if let Layout::Manifest(csv) = layout {
                    if flow_cache::normalize_rel(csv).is_err() {
                        v.push(ConfigProblem {
                            code: Code::PathEscape,
                            message: format!("manifest `{csv}` is outside the dataset root"),
                            needle: Some(csv.clone()),
                            help: None,
                        });
                    }
                }
                if self.group_by == GroupBy::Column && !matches!(layout, Layout::Manifest(_)) {
                    v.push(ConfigProblem {
                        code: Code::InvalidValue,
                        message: "`group_by: Column` needs `layout: Manifest(...)`".into(),
                        needle: None,
                        help: None,
                    });
                }
            }
            Source::Demo {
                count,
                size,
                sources,
                jpeg,
                ..
            } => {
                if let Some(j) = jpeg {
                    if let Err((field, m)) = demo::validate_jpeg(j.min, j.max) {
                        v.push(ConfigProblem {
                            code: Code::InvalidValue,
                            message: m,
                            needle: Some(format!("{field}:")),
                            help: Some("e.g. `jpeg: (min: 70, max: 95)`".into()),
                        });
                    }
                }
                if *count < 4 {
                    v.push(ConfigProblem {
                        code: Code::InvalidValue,
                        message: "Demo `count` must be at least 4".into(),
                        needle: Some("count:".into()),
                        help: None,
                    });
                }
                for s in sources.iter().flatten() {
                    if !demo::KNOWN_SOURCES.contains(&s.as_str()) {
                        v.push(ConfigProblem {
                            code: Code::InvalidValue,
                            message: format!("unknown demo source `{s}`"),
                            needle: Some(s.clone()),
                            help: Some(format!("known sources: {}", demo::KNOWN_SOURCES.join(", "))),
                        });
                    }
                }
                let names: Vec<String> = match sources {
                    Some(s) => s.clone(),
                    None => demo::DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect(),
                };
                // The generator's own rules (size and count bounds), when the sources are fine.
                if *count >= 4 && names.iter().all(|s| demo::KNOWN_SOURCES.contains(&s.as_str())) {
                    if let Err((field, m)) = demo::validate(*count, *size, &names) {
                        v.push(ConfigProblem {
                            code: Code::InvalidValue,
                            message: m,
                            needle: Some(format!("{field}:")),
                            help: None,
                        });
                    }
                }
            }
        }
        if let GroupBy::Regex(r) = &self.group_by {
            match regex::Regex::new(r) {
                Err(e) => v.push(ConfigProblem {
                    code: Code::InvalidValue,
                    message: format!("bad group_by regex: {e}"),
                    needle: Some(r.clone()),
                    help: None,
                }),
                Ok(re) if re.captures_len() < 2 => v.push(ConfigProblem {
                    code: Code::InvalidValue,
                    message: "group_by regex needs a capture group, e.g. `^(.*?)_\\d+`".into(),
                    needle: Some(r.clone()),
                    help: None,
                }),
                _ => {}
            }
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        match &self.source {
            Source::Demo {
                count,
                size,
                seed,
                sources,
                jpeg,
            } => ingest_demo(self, ctx, *count, *size, seed.unwrap_or(0), sources.as_deref(), *jpeg),
            Source::Folder { root, layout } => ingest_folder(self, ctx, root, layout),
        }
    }
}

/// One candidate file before checks.
struct Candidate {
    rel: String,
    abs: PathBuf,
    label: u8,
    source: String,
    group: Option<String>,
    split: String,
}

/// What decoding found of one candidate: width, height, format and content hash, or the
/// problem.
type Decoded = Result<(u32, u32, String, String), String>;

fn label_name(l: u8) -> &'static str {
    if l == 0 {
        "real"
    } else {
        "fake"
    }
}

fn parse_label(s: &str) -> Option<u8> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "real" => Some(0),
        "1" | "fake" => Some(1),
        _ => None,
    }
}

/// Group id of a path by the rule.
pub fn group_of(rule: &GroupBy, re: Option<&regex::Regex>, rel: &str) -> Option<String> {
    let p = Path::new(rel);
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    match rule {
        GroupBy::Basename => {
            let b = stem.as_bytes();
            match b.iter().position(|c| c.is_ascii_digit()) {
                Some(i) => {
                    let end = b[i..]
                        .iter()
                        .position(|c| !c.is_ascii_digit())
                        .map_or(b.len(), |k| i + k);
                    Some(stem[..end].to_string())
                }
                None => Some(stem),
            }
        }
        GroupBy::Stem => Some(stem),
        GroupBy::Parent => Some(p.parent().map(|x| x.to_string_lossy().to_string()).unwrap_or_default()),
        GroupBy::Regex(_) => re
            .and_then(|re| re.captures(rel))
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string()),
        GroupBy::Column => None,
    }
}

fn ingest_demo(
    cfg: &Ingest,
    ctx: &ExecCtx<'_>,
    count: usize,
    size: u32,
    seed: u64,
    sources: Option<&[String]>,
    jpeg: Option<Jpeg>,
) -> Result<(), StageError> {
    // Checked by `validate`; a range outside u8 is refused there.
    let jpeg = match jpeg {
        None => None,
        Some(j) => Some(demo::JpegRange {
            min: u8::try_from(j.min).map_err(|_| StageError::msg("demo data: jpeg `min` out of range"))?,
            max: u8::try_from(j.max).map_err(|_| StageError::msg("demo data: jpeg `max` out of range"))?,
        }),
    };
    let sources: Vec<String> = match sources {
        Some(s) => s.to_vec(),
        None => demo::DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect(),
    };
    (ctx.progress)(-1.0, "generating demo images");
    let items =
        demo::generate_with_threads(count, size, seed, &sources, jpeg, ctx.threads.max(1)).map_err(StageError::msg)?;
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let item = format!("images/{}/{}", it.source, it.name);
        let rel = format!("{item}.{}", it.ext);
        let dest = ctx.out_dir.join(&rel);
        std::fs::create_dir_all(dest.parent().expect("parent"))?;
        std::fs::write(&dest, &it.bytes)?;
        out.push(Item {
            item,
            path: rel,
            hash: blake3::hash(&it.bytes).to_hex().to_string(),
            label: it.label,
            source: it.source,
            group: it.group,
            width: size,
            height: size,
            format: it.format.into(),
            split: String::new(),
        });
    }
    let _ = cfg;
    finish(ctx, out, Report::default(), serde_json::json!({"root": null}))
}

fn list_files(root: &Path) -> Result<Vec<(String, PathBuf)>, StageError> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let p = e.path();
            if p.is_dir() {
                walk(&p, &r, out)?;
            } else {
                out.push((r, p));
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(root, "", &mut v).map_err(|e| StageError::msg(format!("cannot list {}: {e}", root.display())))?;
    Ok(v)
}

fn ingest_folder(cfg: &Ingest, ctx: &ExecCtx<'_>, root: &str, layout: &Layout) -> Result<(), StageError> {
    let rp = ctx
        .paths
        .iter()
        .find(|p| p.port == "root")
        .ok_or_else(|| StageError::msg("dataset root missing"))?;
    if !rp.abs.is_dir() {
        return Err(StageError::msg(format!("dataset root `{root}` is not a directory")));
    }
    let mut scan = FolderScan {
        cfg,
        root,
        root_abs: &rp.abs,
        bad: Vec::new(),
        cands: Vec::new(),
    };
    match layout {
        Layout::ImageFolder | Layout::PreSplit => scan.scan_tree(*layout == Layout::PreSplit)?,
        Layout::Manifest(csv_rel) => scan.scan_manifest(csv_rel)?,
    }
    let FolderScan { mut bad, cands, .. } = scan;
    let known_hash = |rel: &str| {
        rp.tree
            .as_ref()
            .and_then(|t| t.entries.get(rel))
            .map(|e| e.hash.to_hex())
    };
    let results = decode_all(ctx, &cands, &known_hash)?;
    let items = checked_items(cfg, cands, results, &mut bad)?;
    let (items, mut report) = resolve_duplicates(items, &mut bad);
    if !bad.is_empty() && cfg.on_bad_image == OnBad::Fail {
        return Err(bad_files_error(root, bad));
    }
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    report.skipped = bad;
    finish(ctx, items, report, serde_json::json!({"root": root}))
}

/// The candidates of a dataset root, one builder per layout, and the files they left out.
struct FolderScan<'a> {
    cfg: &'a Ingest,
    /// As written in the pipeline (for messages).
    root: &'a str,
    root_abs: &'a Path,
    bad: Vec<BadItem>,
    cands: Vec<Candidate>,
}

impl FolderScan<'_> {
    fn is_image(&self, rel: &str) -> bool {
        Path::new(rel)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| self.cfg.extensions.contains(&e))
    }

    fn reject(&mut self, path: String, problem: impl Into<String>) {
        self.bad.push(BadItem {
            path,
            problem: problem.into(),
        });
    }

    /// Layouts `ImageFolder` and `PreSplit`: the label (and split) from the directories.
    fn scan_tree(&mut self, presplit: bool) -> Result<(), StageError> {
        for (rel, abs) in list_files(self.root_abs)? {
            let parts: Vec<&str> = rel.split('/').collect();
            let (split, rest) = if presplit {
                match parts.first().map(|s| s.to_ascii_lowercase()) {
                    Some(s)
                        if ["train", "val", "valid", "validation", "test"].contains(&s.as_str()) && parts.len() > 1 =>
                    {
                        let s = if s.starts_with("val") { "val".to_string() } else { s };
                        (s, &parts[1..])
                    }
                    _ => {
                        self.reject(rel.clone(), "not under train/, val/ or test/");
                        continue;
                    }
                }
            } else {
                (String::new(), &parts[..])
            };
            if rest.len() < 2 {
                self.reject(rel.clone(), "not under real/ or fake/");
                continue;
            }
            let Some(label) = parse_label(rest[0]) else {
                self.reject(rel.clone(), format!("`{}/` is neither real/ nor fake/", rest[0]));
                continue;
            };
            if !self.is_image(&rel) {
                self.reject(rel.clone(), "unknown extension (not an image)");
                continue;
            }
            let source = if rest.len() > 2 {
                rest[1].to_string()
            } else {
                label_name(label).to_string()
            };
            self.cands.push(Candidate {
                rel,
                abs,
                label,
                source,
                group: None,
                split,
            });
        }
        Ok(())
    }

    /// Layout `Manifest`: one row per file, `path,label[,source][,group][,split]`.
    fn scan_manifest(&mut self, csv_rel: &str) -> Result<(), StageError> {
        let root = self.root;
        let csv_path = self.root_abs.join(csv_rel);
        let mut r = csv::Reader::from_path(&csv_path)
            .map_err(|e| StageError::msg(format!("cannot read manifest {}/{csv_rel}: {e}", root)))?;
        let headers = r.headers().map_err(|e| StageError::msg(e.to_string()))?.clone();
        let col = |n: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(n));
        let (Some(pc), Some(lc)) = (col("path"), col("label")) else {
            return Err(StageError::msg(format!(
                "manifest {root}/{csv_rel} needs `path` and `label` columns (has: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            )));
        };
        let (sc, gc, spc) = (col("source"), col("group"), col("split"));
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| StageError::msg(format!("manifest {root}/{csv_rel} line {}: {e}", i + 2)))?;
            let rel = rec.get(pc).unwrap_or("").trim().to_string();
            if flow_cache::normalize_rel(&rel).is_err() {
                self.reject(format!("{csv_rel}:{}", i + 2), format!("bad path `{rel}`"));
                continue;
            }
            let Some(label) = rec.get(lc).and_then(parse_label) else {
                let problem = format!("bad label `{}` (0/1 or real/fake)", rec.get(lc).unwrap_or(""));
                self.reject(rel, problem);
                continue;
            };
            if !self.is_image(&rel) {
                self.reject(rel, "unknown extension (not an image)");
                continue;
            }
            let source = sc
                .and_then(|c| rec.get(c))
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| label_name(label).to_string());
            let group = gc
                .and_then(|c| rec.get(c))
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string());
            let split = spc
                .and_then(|c| rec.get(c))
                .map(|s| s.trim().to_ascii_lowercase())
                .unwrap_or_default();
            let abs = self.root_abs.join(&rel);
            if !abs.is_file() {
                self.reject(rel, "listed in the manifest but missing");
                continue;
            }
            self.cands.push(Candidate {
                rel,
                abs,
                label,
                source,
                group,
                split,
            });
        }
        Ok(())
    }
}

/// Decodes every candidate (in parallel) to catch empty, truncated and corrupt files; the
/// content hash comes from the stat cache where it knows the file.
fn decode_all(
    ctx: &ExecCtx<'_>,
    cands: &[Candidate],
    known_hash: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Vec<Decoded>, StageError> {
    let total = cands.len();
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Decoded>>> = Mutex::new(vec![None; total]);
    let next = AtomicUsize::new(0);
    let threads = ctx.threads.max(1).min(total.max(1));
    crossbeam::scope(|s| {
        for _ in 0..threads {
            s.spawn(|_| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || ctx.cancelled() {
                    break;
                }
                let c = &cands[i];
                let r = std::fs::read(&c.abs)
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|bytes| {
                        if bytes.is_empty() {
                            return Err("empty file (0 bytes)".to_string());
                        }
                        let hash = known_hash(&c.rel).unwrap_or_else(|| blake3::hash(&bytes).to_hex().to_string());
                        let d = imageops::decode(&bytes).map_err(|e| e.to_string())?;
                        Ok((d.width, d.height, d.format.to_string(), hash))
                    });
                results.lock().expect("lock")[i] = Some(r);
                let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                if k % 256 == 0 || k == total {
                    (ctx.progress)(k as f64 / total as f64, &format!("{k}/{total} images checked"));
                }
            });
        }
    })
    .map_err(|_| StageError::msg("a decoding thread panicked"))?;
    if ctx.cancelled() {
        return Err(StageError::Cancelled);
    }
    let results = results.into_inner().expect("lock");
    Ok(results.into_iter().map(|r| r.expect("every item processed")).collect())
}

/// The items of the candidates that decoded and have a group; the others go to `bad`.
fn checked_items(
    cfg: &Ingest,
    cands: Vec<Candidate>,
    results: Vec<Decoded>,
    bad: &mut Vec<BadItem>,
) -> Result<Vec<Item>, StageError> {
    let re = match &cfg.group_by {
        GroupBy::Regex(r) => Some(regex::Regex::new(r).map_err(|e| StageError::msg(e.to_string()))?),
        _ => None,
    };
    let mut items = Vec::new();
    for (c, r) in cands.into_iter().zip(results) {
        match r {
            Err(problem) => bad.push(BadItem { path: c.rel, problem }),
            Ok((w, h, fmt, hash)) => {
                let group = match (&cfg.group_by, c.group) {
                    (GroupBy::Column, Some(g)) => g,
                    (GroupBy::Column, None) => {
                        bad.push(BadItem {
                            path: c.rel,
                            problem: "empty `group` column".into(),
                        });
                        continue;
                    }
                    (rule, _) => match group_of(rule, re.as_ref(), &c.rel) {
                        Some(g) => g,
                        None => {
                            bad.push(BadItem {
                                path: c.rel,
                                problem: "group_by regex does not match".into(),
                            });
                            continue;
                        }
                    },
                };
                let item = match c.rel.rsplit_once('.') {
                    Some((stem, _)) => stem.to_string(),
                    None => c.rel.clone(),
                };
                items.push(Item {
                    item,
                    path: c.rel,
                    hash,
                    label: c.label,
                    source: c.source,
                    group,
                    width: w,
                    height: h,
                    format: fmt,
                    split: c.split,
                });
            }
        }
    }
    Ok(items)
}

/// The same content under both labels is a leak (its items go to `bad`); under one label,
/// one identity (their groups are merged and listed in the report).
fn resolve_duplicates(mut items: Vec<Item>, bad: &mut Vec<BadItem>) -> (Vec<Item>, Report) {
    let mut by_hash: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        by_hash.entry(it.hash.as_str()).or_default().push(i);
    }
    let mut leak: Vec<usize> = Vec::new();
    let mut merge: Vec<Vec<usize>> = Vec::new();
    for idx in by_hash.values().filter(|v| v.len() > 1) {
        let labels: std::collections::BTreeSet<u8> = idx.iter().map(|&i| items[i].label).collect();
        if labels.len() > 1 {
            leak.extend(idx);
        } else {
            merge.push(idx.clone());
        }
    }
    leak.sort();
    for &i in &leak {
        let others: Vec<String> = by_hash[items[i].hash.as_str()]
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| items[j].path.clone())
            .collect();
        bad.push(BadItem {
            path: items[i].path.clone(),
            problem: format!("same content as {} under the other label (a leak)", others.join(", ")),
        });
    }
    let mut report = Report::default();
    merge.sort();
    merge_groups(&mut items, &merge, &mut report);
    let leak_set: std::collections::HashSet<usize> = leak.into_iter().collect();
    let items: Vec<Item> = items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !leak_set.contains(i))
        .map(|(_, it)| it)
        .collect();
    (items, report)
}

/// Unions the groups of identical files (same label), sets (sorted), and lists each set in
/// the report's duplicates.
fn merge_groups(items: &mut [Item], merge: &[Vec<usize>], report: &mut Report) {
    let mut parent: HashMap<String, String> = HashMap::new();
    fn find(p: &mut HashMap<String, String>, g: &str) -> String {
        let mut cur = g.to_string();
        while let Some(n) = p.get(&cur) {
            if *n == cur {
                break;
            }
            cur = n.clone();
        }
        cur
    }
    for idx in merge {
        let mut gs: Vec<String> = idx.iter().map(|&i| find(&mut parent, &items[i].group)).collect();
        gs.sort();
        gs.dedup();
        for g in &gs[1..] {
            parent.insert(g.clone(), gs[0].clone());
        }
        report
            .duplicates
            .push(idx.iter().map(|&i| items[i].path.clone()).collect());
    }
    for it in items.iter_mut() {
        it.group = find(&mut parent, &it.group);
    }
}

/// `on_bad_image: Fail`: the error with a table of (at most 50) offending paths.
fn bad_files_error(root: &str, mut bad: Vec<BadItem>) -> StageError {
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    let width = bad.iter().map(|b| b.path.len()).max().unwrap_or(0).min(70);
    let mut table = String::new();
    for b in bad.iter().take(50) {
        table.push_str(&format!(
            "\n  {:width$}  {}",
            format!("{root}/{}", b.path),
            b.problem,
            width = width + root.len() + 1
        ));
    }
    if bad.len() > 50 {
        table.push_str(&format!("\n  … and {} more", bad.len() - 50));
    }
    StageError::msg(format!(
        "{} bad file{} in dataset `{root}` (set `on_bad_image: Skip` to leave them out and list them in report.json):{table}",
        bad.len(),
        if bad.len() == 1 { "" } else { "s" }
    ))
}

fn finish(
    ctx: &ExecCtx<'_>,
    mut items: Vec<Item>,
    mut report: Report,
    meta: serde_json::Value,
) -> Result<(), StageError> {
    items.sort_by(|a, b| a.path.cmp(&b.path));
    for l in [0u8, 1] {
        if !items.iter().any(|i| i.label == l) {
            return Err(StageError::msg(format!(
                "the dataset has no {} images{}",
                label_name(l),
                if report.skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} files were skipped as bad)", report.skipped.len())
                }
            )));
        }
    }
    report.items = items.len();
    for it in &items {
        *report.by_label.entry(label_name(it.label).to_string()).or_default() += 1;
        *report.by_source.entry(it.source.clone()).or_default() += 1;
    }
    report.groups = items
        .iter()
        .map(|i| i.group.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    write_manifest(ctx.out_dir, &items).map_err(StageError::msg)?;
    report.write(ctx.out_dir).map_err(StageError::msg)?;
    *ctx.meta.lock().expect("meta") = meta;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn basename_groups() {
        let g = |p| group_of(&GroupBy::Basename, None, p).unwrap();
        assert_eq!(g("real/img_001.png"), "img_001");
        assert_eq!(g("fake/x/img_001_aug2.png"), "img_001");
        assert_eq!(g("fake/img_0007_gan_upsample.png"), "img_0007");
        assert_eq!(g("0042.jpg"), "0042");
        assert_eq!(g("photo.jpg"), "photo");
        assert_eq!(
            group_of(&GroupBy::Parent, None, "real/vid3/f1.png").unwrap(),
            "real/vid3"
        );
        let re = regex::Regex::new(r"(id\d+)").unwrap();
        assert_eq!(
            group_of(&GroupBy::Regex(String::new()), Some(&re), "a/id17_x.png").unwrap(),
            "id17"
        );
    }
}
