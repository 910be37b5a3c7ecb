//! `Split`: stratified group k-fold over a dataset manifest.
//!
//! ```ron
//! "split": Split(dataset: "ingest", folds: 5, val_ratio: 0.1),            // seed from defaults
//! "split": Split(dataset: "ingest", holdout: Holdout(sources: ["inpaint"])), // source hold-out
//! "split": Split(dataset: "ingest", subsample: 0.2),                      // 20 % ⊂ 50 % ⊂ 100 %
//! "split": Split(dataset: "ingest", mode: Predefined),                    // the dataset's own train/val/test
//! ```
//! * No group is in two folds; groups already merge identical files (Ingest), so no content
//!   is either. Folds are balanced per stratum (label × source) greedily, largest groups first,
//!   so per-stratum counts per fold are within one item of ideal where groups allow.
//! * Inner validation for outer fold `k` (`val_for = k`): groups carved from fold `k+1`,
//!   stratified, about `val_ratio` of fold `k`'s training items — group-aware by construction.
//! * `holdout` sources are never trained or validated on (`holdout = 1`); their items are
//!   still assigned folds, so every model is evaluated on the held-out source.
//! * `subsample`: groups ranked per stratum by a seeded hash; the first `fraction` are kept,
//!   so a smaller fraction is a subset of a larger one with the same seed.
//! * Output: `folds.csv` — `item,group,label,source,fold,val_for,holdout` — and `split.json`
//!   (counts per fold and stratum, leakage check). Same manifest + params ⇒ identical bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flow_engine::{
    key_params_of, Code, ConfigProblem, Defaults, ExecCtx, Input, PortType, StageConfig, StageError, StageKind,
};
use serde::{Deserialize, Serialize};

use crate::ports::dataset::{read_manifest, Item};
use crate::ports::split::{write_folds, FoldCounts, Leakage, SplitSummary};
pub use crate::ports::split::{FoldRow, Role};
pub use crate::ports::{DATASET, SPLIT};

fn d_folds() -> u32 {
    5
}
fn d_true() -> bool {
    true
}
fn d_val() -> f64 {
    0.1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub dataset: String,
    #[serde(default = "d_folds")]
    pub folds: u32,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "d_true")]
    pub stratify: bool,
    #[serde(default = "d_val")]
    pub val_ratio: f64,
    #[serde(default)]
    pub holdout: Option<Holdout>,
    #[serde(default)]
    pub subsample: Option<f64>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Holdout {
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub enum Mode {
    #[default]
    KFold,
    /// Use the dataset's own `split` column (train/val/test): one fold.
    Predefined,
}

inventory::submit! { crate::Kind(|| StageKind::new::<Split>("Split", 1, "stratified group k-fold with inner validation")) }

impl StageConfig for Split {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("dataset", self.dataset.clone(), &[DATASET])]
    }
    fn output(&self) -> PortType {
        SPLIT
    }
    fn fold_count(&self) -> Option<u32> {
        Some(match self.mode {
            Mode::KFold => self.folds,
            Mode::Predefined => 1,
        })
    }
    fn resolve_defaults(&mut self, d: &Defaults) {
        if self.seed.is_none() {
            self.seed = d.u64("seed");
        }
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["dataset"])
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        let p = |m: String| ConfigProblem {
            code: Code::InvalidValue,
            message: m,
            needle: None,
            help: None,
        };
        if self.mode == Mode::KFold && self.folds < 2 {
            v.push(p("`folds` must be at least 2 (or use `mode: Predefined`)".into()));
        }
        if !(0.0..0.5).contains(&self.val_ratio) {
            v.push(p(format!("`val_ratio` {} must be in [0, 0.5)", self.val_ratio)));
        }
        if self.mode == Mode::KFold && self.folds >= 2 && self.val_ratio > 1.0 / (self.folds as f64 - 1.0) {
            v.push(p(format!(
                "`val_ratio` {} is more than one fold can give ({:.3})",
                self.val_ratio,
                1.0 / (self.folds as f64 - 1.0)
            )));
        }
        if let Some(f) = self.subsample {
            if !(f > 0.0 && f <= 1.0) {
                v.push(p(format!("`subsample` {f} must be in (0, 1]")));
            }
        }
        if let Some(h) = &self.holdout {
            if h.sources.is_empty() {
                v.push(p("`holdout` names no source".into()));
            }
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let input = ctx
            .inputs_of("dataset")
            .next()
            .ok_or_else(|| StageError::msg("no dataset input"))?;
        let items = read_manifest(&input.dir).map_err(StageError::msg)?;
        let (rows, summary) = split(&items, self).map_err(StageError::msg)?;
        write_folds(ctx.out_dir, &rows).map_err(StageError::msg)?;
        summary.write(ctx.out_dir).map_err(StageError::msg)
    }
}

/// Deterministic 64-bit hash of (seed, text).
fn rank(seed: u64, s: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(s.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

struct Group {
    id: String,
    items: Vec<usize>,
    /// Items per stratum.
    counts: BTreeMap<String, usize>,
}

/// Assign folds. Errors are user-facing.
pub fn split(items: &[Item], cfg: &Split) -> Result<(Vec<FoldRow>, SplitSummary), String> {
    let seed = cfg.seed.unwrap_or(0);
    let held = held_sources(items, cfg)?;
    let mut groups = groups_of(items, cfg.stratify);
    if let Some(f) = cfg.subsample.filter(|f| *f < 1.0) {
        subsample(&mut groups, f, seed);
    }
    let (mut rows, k) = match cfg.mode {
        // Only fold 0 exists as an outer fold; training items carry fold 1 as "not test".
        Mode::Predefined => (predefined_rows(items, &groups, &held)?, 1),
        Mode::KFold => (kfold_rows(items, &groups, &held, cfg, seed)?, cfg.folds as usize),
    };
    rows.sort_by(|a, b| a.item.cmp(&b.item));
    let summary = summarize(&rows, items, k as u32, cfg)?;
    Ok((rows, summary))
}

/// The `holdout` sources, each of which must exist in the dataset.
fn held_sources(items: &[Item], cfg: &Split) -> Result<BTreeSet<String>, String> {
    let sources: BTreeSet<&str> = items.iter().map(|i| i.source.as_str()).collect();
    let held: BTreeSet<String> = cfg
        .holdout
        .as_ref()
        .map(|h| h.sources.iter().cloned().collect())
        .unwrap_or_default();
    for s in &held {
        if !sources.contains(s.as_str()) {
            return Err(format!(
                "holdout source `{s}` does not exist in the dataset (sources: {})",
                sources.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(held)
}

/// The groups in id order, with their items per stratum (label × source, or one stratum).
fn groups_of(items: &[Item], stratify: bool) -> Vec<Group> {
    let stratum = |it: &Item| {
        if stratify {
            format!("{}:{}", it.label, it.source)
        } else {
            "all".to_string()
        }
    };
    let mut gmap: BTreeMap<&str, Group> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let g = gmap.entry(it.group.as_str()).or_insert_with(|| Group {
            id: it.group.clone(),
            items: vec![],
            counts: BTreeMap::new(),
        });
        g.items.push(i);
        *g.counts.entry(stratum(it)).or_default() += 1;
    }
    gmap.into_values().collect()
}

/// Keeps a fraction `f` of whole groups, per stratum of the group's composition, nested by rank.
fn subsample(groups: &mut Vec<Group>, f: f64, seed: u64) {
    let mut by_comp: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        let comp: Vec<String> = g.counts.keys().cloned().collect();
        by_comp.entry(comp.join("+")).or_default().push(gi);
    }
    let mut keep = vec![false; groups.len()];
    for (_, mut gis) in by_comp {
        gis.sort_by_key(|&gi| (rank(seed ^ 0x5eed_5ab5, &groups[gi].id), gi));
        let n = ((gis.len() as f64) * f).round().max(1.0) as usize;
        for &gi in gis.iter().take(n) {
            keep[gi] = true;
        }
    }
    let mut k = keep.into_iter();
    groups.retain(|_| k.next().expect("same length"));
}

fn fold_row(it: &Item, fold: u32, val_for: Option<u32>, held: &BTreeSet<String>) -> FoldRow {
    FoldRow {
        item: it.item.clone(),
        group: it.group.clone(),
        label: it.label,
        source: it.source.clone(),
        fold,
        val_for,
        holdout: held.contains(&it.source) as u8,
    }
}

/// `mode: Predefined`: fold 0 = test; val_for 0 = val; the rest trains (fold 1).
fn predefined_rows(items: &[Item], groups: &[Group], held: &BTreeSet<String>) -> Result<Vec<FoldRow>, String> {
    let mut rows: Vec<FoldRow> = Vec::new();
    for g in groups {
        let splits: BTreeSet<&str> = g.items.iter().map(|&i| items[i].split.as_str()).collect();
        if splits.len() > 1 {
            return Err(format!(
                "group `{}` has items in several predefined splits ({}): that is a leak",
                g.id,
                splits.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        for &i in &g.items {
            let it = &items[i];
            let (fold, val_for) = match it.split.as_str() {
                "test" => (0, None),
                "val" => (1, Some(0)),
                "train" => (1, None),
                other => {
                    return Err(format!(
                        "item `{}` has split `{other}`; `mode: Predefined` needs train/val/test for every item",
                        it.item
                    ))
                }
            };
            rows.push(fold_row(it, fold, val_for, held));
        }
    }
    Ok(rows)
}

/// `mode: KFold`: groups assigned to folds, inner validation carved, both classes checked.
fn kfold_rows(
    items: &[Item],
    groups: &[Group],
    held: &BTreeSet<String>,
    cfg: &Split,
    seed: u64,
) -> Result<Vec<FoldRow>, String> {
    let k = cfg.folds as usize;
    if groups.len() < k {
        return Err(format!(
            "{} groups cannot fill {k} folds: use fewer folds or more data",
            groups.len()
        ));
    }
    let assign = assign_folds(groups, k, seed);
    let mut per_fold_rows: Vec<Vec<FoldRow>> = vec![Vec::new(); k];
    for (gi, g) in groups.iter().enumerate() {
        let rows = g.items.iter().map(|&i| fold_row(&items[i], assign[gi], None, held));
        per_fold_rows[assign[gi] as usize].extend(rows);
    }
    // Inner validation for outer fold f: groups from fold f+1 (never held-out ones).
    if cfg.val_ratio > 0.0 {
        for f in 0..k {
            carve_validation(&mut per_fold_rows, f, cfg.val_ratio, seed);
        }
    }
    let rows: Vec<FoldRow> = per_fold_rows.into_iter().flatten().collect();
    // Every fold needs both classes to be evaluated.
    for f in 0..k as u32 {
        for l in [0u8, 1] {
            if !rows.iter().any(|r| r.fold == f && r.label == l) {
                return Err(format!(
                    "fold {f} has no {} items: the dataset is too small or too unbalanced for {k} folds",
                    if l == 0 { "real" } else { "fake" }
                ));
            }
        }
    }
    Ok(rows)
}

/// Greedy stratified assignment: largest / most uneven groups first, seeded order among
/// equals; each group to the fold where it leaves per-stratum counts closest to ideal
/// (ties: fewer items, then lower index). The fold of each group.
fn assign_folds(groups: &[Group], k: usize, seed: u64) -> Vec<u32> {
    let total: BTreeMap<String, usize> = groups.iter().fold(BTreeMap::new(), |mut acc, g| {
        for (s, c) in &g.counts {
            *acc.entry(s.clone()).or_default() += c;
        }
        acc
    });
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&gi| {
        (
            std::cmp::Reverse(groups[gi].items.len()),
            rank(seed, &groups[gi].id),
            gi,
        )
    });
    let mut fold_counts: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); k];
    let mut fold_size = vec![0usize; k];
    let mut assign = vec![0u32; groups.len()];
    for gi in order {
        let g = &groups[gi];
        // How much adding the group to fold f increases the squared deviation from
        // the ideal per-stratum counts (normalised by the ideal).
        let cost = |f: usize| -> i64 {
            let mut c = 0.0;
            for (s, n) in &g.counts {
                let ideal = total[s] as f64 / k as f64;
                let cur = *fold_counts[f].get(s).unwrap_or(&0) as f64;
                let after = cur + *n as f64;
                c += ((after - ideal).powi(2) - (cur - ideal).powi(2)) / ideal.max(1.0);
            }
            (c * 1e9).round() as i64
        };
        let f = (0..k).min_by_key(|&f| (cost(f), fold_size[f], f)).expect("k >= 1");
        assign[gi] = f as u32;
        fold_size[f] += g.items.len();
        for (s, c) in &g.counts {
            *fold_counts[f].entry(s.clone()).or_default() += c;
        }
    }
    assign
}

/// Marks the groups of fold `f+1` that validate outer fold `f`: stratified, about
/// `val_ratio` of fold `f`'s training items, never held-out ones.
fn carve_validation(per_fold_rows: &mut [Vec<FoldRow>], f: usize, val_ratio: f64, seed: u64) {
    let donor = (f + 1) % per_fold_rows.len();
    let train_pool: BTreeMap<String, usize> = per_fold_rows
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != f)
        .flat_map(|(_, r)| r.iter())
        .filter(|r| r.holdout == 0)
        .fold(BTreeMap::new(), |mut acc, r| {
            *acc.entry(format!("{}:{}", r.label, r.source)).or_default() += 1;
            acc
        });
    let target: BTreeMap<&String, f64> = train_pool.iter().map(|(s, c)| (s, *c as f64 * val_ratio)).collect();
    let mut donor_groups: Vec<&str> = per_fold_rows[donor]
        .iter()
        .filter(|r| r.holdout == 0)
        .map(|r| r.group.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    donor_groups.sort_by_key(|g| (rank(seed.wrapping_add(f as u64 + 1), g), g.to_string()));
    let mut got: BTreeMap<String, f64> = BTreeMap::new();
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    for g in donor_groups {
        let mut gc: BTreeMap<String, f64> = BTreeMap::new();
        for r in per_fold_rows[donor].iter().filter(|r| r.group == g && r.holdout == 0) {
            *gc.entry(format!("{}:{}", r.label, r.source)).or_default() += 1.0;
        }
        // Take the group if every stratum it adds stays within half a group of target.
        let fits = gc
            .iter()
            .all(|(s, c)| got.get(s).copied().unwrap_or(0.0) + c <= target.get(s).copied().unwrap_or(0.0) + c / 2.0);
        if fits {
            for (s, c) in gc {
                *got.entry(s).or_default() += c;
            }
            chosen.insert(g.to_string());
        }
    }
    for r in per_fold_rows[donor].iter_mut() {
        if r.holdout == 0 && chosen.contains(&r.group) {
            r.val_for = Some(f as u32);
        }
    }
}

/// Per-fold counts and the leakage check (which must find nothing).
fn summarize(rows: &[FoldRow], items: &[Item], k: u32, cfg: &Split) -> Result<SplitSummary, String> {
    let hash_of: HashMap<&str, &str> = items.iter().map(|i| (i.item.as_str(), i.hash.as_str())).collect();
    let mut group_folds: HashMap<&str, BTreeSet<u32>> = HashMap::new();
    let mut hash_folds: HashMap<&str, BTreeSet<u32>> = HashMap::new();
    for r in rows {
        group_folds.entry(r.group.as_str()).or_default().insert(r.fold);
        if let Some(h) = hash_of.get(r.item.as_str()).filter(|h| !h.is_empty()) {
            hash_folds.entry(h).or_default().insert(r.fold);
        }
    }
    let groups_across = group_folds.values().filter(|s| s.len() > 1).count();
    let content_across = hash_folds.values().filter(|s| s.len() > 1).count();
    if groups_across > 0 || content_across > 0 {
        return Err(format!(
            "leakage check failed: {groups_across} groups and {content_across} contents in several folds"
        ));
    }
    let per_fold = (0..k)
        .map(|f| {
            let mut strata: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
            for r in rows {
                let stratum = format!("{}:{}", if r.label == 0 { "real" } else { "fake" }, r.source);
                *strata
                    .entry(stratum)
                    .or_default()
                    .entry(r.role(f).name().to_string())
                    .or_default() += 1;
            }
            FoldCounts { fold: f, strata }
        })
        .collect();
    Ok(SplitSummary {
        items: rows.len(),
        groups: group_folds.len(),
        folds: k,
        mode: format!("{:?}", cfg.mode),
        subsample: cfg.subsample,
        holdout: cfg.holdout.as_ref().map(|h| h.sources.clone()),
        leakage: Leakage {
            groups_across_folds: groups_across,
            contents_across_folds: content_across,
        },
        per_fold,
    })
}
