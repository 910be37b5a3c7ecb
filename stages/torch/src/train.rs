//! `Train` and `Retrain` (one fold each): the training loop, per-epoch checkpoints for resume,
//! best-epoch selection, and the outputs.
//!
//! Outputs (in the instance's out dir):
//! * `model.safetensors` — the best epoch's weights (torchvision names, see [`crate::nets`]);
//! * `history.csv` — `epoch,train_loss,val_loss,val_auc,lr` (1-based epochs; empty
//!   cells where a value does not exist, e.g. val AUC of a one-class validation set);
//! * `scores.csv` — `item,role,label,source,logit` for every item of the split (roles
//!   train/val/test/excluded), in `index.csv` order, logits of the best weights in eval mode;
//! * `meta.json` — model, params, effective training params, fold, counts per role and class,
//!   best epoch, selection rule, normalisation, device, libtorch version, pretrained tensors
//!   skipped.
//!
//! Outputs hold only what the key determines: no wall-clock facts, thread counts or resume
//! history, so a re-made model is byte-identical and everything downstream stays cached
//! (early cutoff). Those facts go to the run record's meta instead ([`util::meta_event`]):
//! `seconds`, `threads`, `resumed_after_epoch`, and per epoch `seconds` and
//! `train_images_per_s` (the training loop only: what `bench/train` compares with PyTorch).
//!
//! Training details:
//! * Sample weights: Retrain's hard negatives weigh `weight`, every other item 1; the batch
//!   loss is the weighted mean `Σ wᵢ lᵢ / Σ wᵢ`.
//! * `balance: true` is *weighted sampling*: each epoch draws as many items as the training
//!   set has, each draw picking a class with probability ½ and then an item of that class
//!   uniformly (torch's `WeightedRandomSampler` with weights 1/class count, with replacement).
//! * Batches: the epoch's order in chunks of `batch_size`; a last chunk of a single item is
//!   dropped (batch norm cannot train on one item).
//! * Selection: the epoch with the best validation AUC (ties: the earlier); without a
//!   validation set, the lowest training loss; with a one-class validation set, the lowest
//!   validation loss. `meta.json` says which (`selection`). Early stopping after `patience`
//!   epochs without improvement of that metric.
//! * Determinism: libtorch is seeded with `seed*1000 + fold` before the weights are made and
//!   with a hash of (seed, fold, epoch) at each epoch (dropout), the order and augmentations
//!   come from ChaCha8 streams of (seed, fold, epoch). On CPU, same key and same thread count
//!   ⇒ byte-identical `model.safetensors`, also across an interruption and resume.
//! * Checkpoints: after every epoch, into the resume dir: `ckpt-NNNN/` (weights, optimiser
//!   moments, best weights) and then `checkpoint.json` (atomic rename) naming it, with the
//!   epoch, step counters, best-so-far and history. A run that finds one resumes after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flow_stages::model::{Loss, Model, Retrain, Schedule, Train, Tta};
use flow_stages::ports::models::{self, ClassCounts, HistRow, ModelMeta, RoleCounts, ScoreRow};
use flow_stages::ports::split::Role;
use flow_stages::worker::WorkerSpec;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::data::{self, prefetch, BatchReq, Dataset, Item, Norm};
use crate::nets::{self, Net};
use crate::optim::{lr_at, AdamW, Scaler};
use crate::run::{device_name, find_input, pick_device};
use crate::util::{self, log, progress, Context, Res};

/// Test hooks: a way to interrupt a run between epochs, and to poison one batch's loss.
#[derive(Default)]
pub struct Hooks {
    /// Called after each finished (and checkpointed) epoch with its 1-based number; an error
    /// ends the run there.
    pub after_epoch: Option<Box<dyn Fn(u32) -> Res<()>>>,
    /// (epoch, batch), both 1-based: that batch's loss becomes NaN.
    pub poison: Option<(u32, usize)>,
}

/// What a models directory's `meta.json` tells its consumers (Retrain, EnsembleInfer).
pub fn read_model_info(dir: &Path) -> Res<ModelMeta> {
    ModelMeta::read(dir)
}

enum Init {
    Fresh { pretrained: Option<PathBuf> },
    From(PathBuf),
}

struct Job<'a> {
    kind: &'static str,
    spec: &'a WorkerSpec,
    params: Train,
    fold: u32,
    ds: &'a Dataset,
    items: &'a [Item],
    weights: Vec<f32>,
    norm: Norm,
    init: Init,
    device: Device,
    extra_meta: serde_json::Map<String, serde_json::Value>,
}

pub fn run_train(spec: &WorkerSpec, p: &Train, hooks: &Hooks) -> Res<()> {
    let fold = spec
        .fold
        .ok_or("Train runs once per fold, and this instance has no fold")?;
    let device = pick_device(p.device)?;
    let (ds, items) = fold_data(spec, fold)?;
    let norm = data::norm_for_fold(&ds, &items, fold)?;
    let pretrained = match &p.pretrained {
        None => None,
        Some(rel) => Some(
            spec.paths
                .iter()
                .find(|x| x.port == "pretrained")
                .map(|x| x.abs.clone())
                .ok_or_else(|| format!("pretrained weights `{rel}` were not passed to the worker"))?,
        ),
    };
    let weights = vec![1.0; items.len()];
    fit(
        Job {
            kind: "Train",
            spec,
            params: p.clone(),
            fold,
            ds: &ds,
            items: &items,
            weights,
            norm,
            init: Init::Fresh { pretrained },
            device,
            extra_meta: Default::default(),
        },
        hooks,
    )
}

pub fn run_retrain(spec: &WorkerSpec, r: &Retrain, hooks: &Hooks) -> Res<()> {
    let fold = spec
        .fold
        .ok_or("Retrain runs once per fold, and this instance has no fold")?;
    let device = pick_device(r.device)?;
    let base = find_input(spec, "models", Some(fold))?;
    if base.fold != Some(fold) {
        return Err(format!("`models` input `{}` has no model for fold {fold}", base.from));
    }
    let info = read_model_info(&base.dir)?;
    let (ds, items) = fold_data(spec, fold)?;
    if info.image_size != ds.size {
        log(format!(
            "warning: the model of `{}` was trained on {} px images, the data here is {} px",
            base.from, info.image_size, ds.size
        ));
    }
    let p = retrain_params(&info.train_params, r);
    let hn = hard_negative_weights(spec, &items, fold, r)?;
    // Which instance's model was fine-tuned, and from where, is a fact of this run (the key
    // holds the model's content): run-record meta, not an output.
    util::meta_event(serde_json::json!({"base_model": {"from": base.from, "dir": base.dir}}));
    let mut extra = serde_json::Map::new();
    extra.insert(
        "hard_negatives".into(),
        serde_json::json!({"weight": r.weight, "up_weighted": hn.used, "not_in_train_set": hn.not_in_train}),
    );
    fit(
        Job {
            kind: "Retrain",
            spec,
            params: p,
            fold,
            ds: &ds,
            items: &items,
            weights: hn.weights,
            norm: info.normalize.clone(),
            init: Init::From(base.dir.join("model.safetensors")),
            device,
            extra_meta: extra,
        },
        hooks,
    )
}

/// The fold's data: the dataset, and its items joined with the split (which must have the fold).
fn fold_data(spec: &WorkerSpec, fold: u32) -> Res<(Dataset, Vec<Item>)> {
    let ds = Dataset::open(&find_input(spec, "data", None)?.dir)?;
    let folds = data::read_folds(&find_input(spec, "split", None)?.dir)?;
    check_fold(&folds, fold)?;
    let items = data::join(&ds, &folds)?;
    Ok((ds, items))
}

/// Retrain's training parameters: the base model's, with Retrain's epochs, lr, seed and device
/// (and batch size and augmentation when given), a constant schedule, no early stopping and
/// no pretrained weights.
fn retrain_params(base: &Train, r: &Retrain) -> Train {
    let mut p = base.clone();
    p.epochs = r.epochs;
    p.lr = r.lr;
    if let Some(b) = r.batch_size {
        p.batch_size = b;
    }
    if let Some(a) = r.augment {
        p.augment = a;
    }
    p.seed = r.seed.or(p.seed);
    p.schedule = Schedule::Constant;
    p.patience = None;
    p.pretrained = None;
    p.device = r.device;
    p
}

/// Retrain's sample weights and what it made of its hard negatives.
struct HardNegatives {
    /// Per item: `weight` for this fold's hard negatives in its training set, else 1.
    weights: Vec<f32>,
    /// Items up-weighted.
    used: usize,
    /// Hard negatives of this fold outside its training set (ignored).
    not_in_train: usize,
}

/// Weighs the hard negatives of this fold: rows whose `fold` (the fold whose model mined them)
/// is ours. Names that are not items of the split are an error; those outside the training
/// set are ignored, with a warning.
fn hard_negative_weights(spec: &WorkerSpec, items: &[Item], fold: u32, r: &Retrain) -> Res<HardNegatives> {
    let hn_in = find_input(spec, "hard_negatives", Some(fold))?;
    let rows = flow_stages::ports::hard_negatives::read_rows(&hn_in.dir)?;
    let pos: HashMap<&str, usize> = items.iter().enumerate().map(|(i, it)| (it.item.as_str(), i)).collect();
    let mut weights = vec![1.0f32; items.len()];
    let (mut used, mut unknown, mut not_train) = (0usize, Vec::new(), Vec::new());
    for h in rows.iter().filter(|h| h.fold == fold) {
        match pos.get(h.item.as_str()) {
            None => unknown.push(h.item.clone()),
            Some(&i) if items[i].split.role(fold) != Role::Train => not_train.push(h.item.clone()),
            Some(&i) => {
                if weights[i] == 1.0 {
                    used += 1;
                }
                weights[i] = r.weight as f32;
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "{} hard negative(s) of fold {fold} are not items of the split: {}",
            unknown.len(),
            util::list_some(&unknown, 5)
        ));
    }
    if !not_train.is_empty() {
        log(format!(
            "warning: {} hard negative(s) of fold {fold} are not in its training set and are ignored: {}",
            not_train.len(),
            util::list_some(&not_train, 5)
        ));
    }
    if used == 0 {
        log(format!(
            "warning: no hard negatives for fold {fold}: fine-tuning with every item weighing 1"
        ));
    }
    log(format!(
        "fold {fold}: {used} hard negative(s) weigh {} in the loss",
        r.weight
    ));
    Ok(HardNegatives {
        weights,
        used,
        not_in_train: not_train.len(),
    })
}

fn check_fold(folds: &[flow_stages::ports::split::FoldRow], fold: u32) -> Res<()> {
    if !folds.iter().any(|f| f.fold == fold) {
        let n = folds.iter().map(|f| f.fold).max().map(|m| m + 1).unwrap_or(0);
        return Err(format!("fold {fold} does not exist in the split (it has folds 0..{n})"));
    }
    Ok(())
}

/// Per-sample loss.
fn per_sample_loss(logits: &Tensor, y: &Tensor, loss: Loss) -> Tensor {
    let bce = logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::None);
    match loss {
        Loss::Bce => bce,
        Loss::Focal { gamma } => {
            let pt = (-&bce).exp();
            (pt * -1.0 + 1.0).pow_tensor_scalar(gamma) * bce
        }
    }
}

/// Mean logit over the TTA views of `rows` (eval mode, no gradients), in order.
pub fn predict(
    net: &Net,
    ds: &Dataset,
    norm: &Norm,
    rows: &[usize],
    bs: usize,
    device: Device,
    tta: &[Tta],
) -> Res<Vec<f64>> {
    Ok(predict_probed(net, ds, norm, rows, bs, device, tta, false)?.0)
}

/// Per-item values of the model's probes (`Detector::probes`), by name, in row order.
pub type Probes = std::collections::BTreeMap<&'static str, Vec<f64>>;

/// [`predict`], and with `probes` the model's probes of the Identity view as well.
#[allow(clippy::too_many_arguments)]
pub fn predict_probed(
    net: &Net,
    ds: &Dataset,
    norm: &Norm,
    rows: &[usize],
    bs: usize,
    device: Device,
    tta: &[Tta],
    probes: bool,
) -> Res<(Vec<f64>, Probes)> {
    let s = ds.size as i64;
    let per = (3 * s * s) as usize;
    let reqs: Vec<BatchReq> = rows
        .chunks(bs.max(1))
        .map(|c| BatchReq {
            rows: c.to_vec(),
            seeds: None,
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    let mut probed = Probes::new();
    let _guard = tch::no_grad_guard();
    let to_vec = |t: &Tensor| -> Res<Vec<f64>> {
        Vec::<f64>::try_from(&t.view([-1]).to_kind(Kind::Double).to_device(Device::Cpu)).ctx(|| "cannot read logits")
    };
    prefetch(ds, norm, None, reqs, |_, buf, n| {
        let x = data::batch_tensor(&buf[..n * per], n, s, device);
        let mut acc: Option<Tensor> = None;
        for t in tta {
            let v = match t {
                Tta::Identity => x.shallow_clone(),
                Tta::HFlip => x.flip([3]),
                Tta::VFlip => x.flip([2]),
                Tta::HVFlip => x.flip([2, 3]),
            };
            let l = net.forward(&v, false).view([-1]).to_kind(Kind::Double);
            acc = Some(match acc {
                None => l,
                Some(a) => a + l,
            });
        }
        let l = acc.expect("tta is not empty") / tta.len().max(1) as f64;
        out.extend(to_vec(&l)?);
        if probes {
            for (name, t) in net.module.probes(&x) {
                probed.entry(name).or_default().extend(to_vec(&t)?);
            }
        }
        Ok(())
    })?;
    Ok((out, probed))
}

/// One epoch as the checkpoint keeps it: `history.csv`'s row plus the epoch's timings
/// (run-record meta only).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EpochRow {
    epoch: u32,
    train_loss: f64,
    val_loss: Option<f64>,
    val_auc: Option<f64>,
    lr: f64,
    seconds: f64,
    /// Training images per second of the epoch's training loop (batches, forward, backward,
    /// optimiser; no validation): what `bench/train` compares with PyTorch.
    #[serde(default)]
    train_images_per_s: f64,
    /// The model's own validation diagnostics (RADAR's), when it has them.
    #[serde(default)]
    diag: Option<models::Diagnostics>,
}

/// Progress of a run, saved in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    fingerprint: String,
    dir: String,
    epochs_done: u32,
    /// Scheduler steps (also those the loss scaler skipped).
    sched_step: i64,
    opt_step: i64,
    batches_done: i64,
    best_epoch: u32,
    /// f64 bits: exact across the JSON round trip.
    best_metric: Option<u64>,
    best_batches: i64,
    bad_epochs: u32,
    stopped: bool,
    scaler: Scaler,
    history: Vec<EpochRow>,
    /// blake3 of each checkpoint file, checked before resuming: a damaged checkpoint would
    /// otherwise be trusted and its result published.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

const CKPT_POINTER: &str = "checkpoint.json";
/// The best epoch's whole TorchScript module, in the resume dir.
const BEST_MODULE: &str = "best_module.pt";

fn sync_file(p: &Path) {
    if let Ok(f) = std::fs::File::open(p) {
        let _ = f.sync_all();
    }
}

/// The files of one checkpoint directory (all hashed into `checkpoint.json`).
const CKPT_FILES: [&str; 3] = ["weights.safetensors", "optim.safetensors", "best.safetensors"];
/// A TorchScript model's whole module in a checkpoint (parameters and buffers).
const MODULE_CKPT: &str = "module.pt";

fn save_checkpoint(
    root: &Path,
    st: &mut State,
    net: &Net,
    opt: &AdamW,
    best: &HashMap<String, Tensor>,
    best_on_disk: &mut Option<PathBuf>,
) -> Res<()> {
    std::fs::create_dir_all(root).ctx(|| format!("cannot create resume dir {}", root.display()))?;
    let name = format!("ckpt-{:04}", st.epochs_done);
    let d = root.join(&name);
    if d.exists() {
        std::fs::remove_dir_all(&d).ctx(|| format!("cannot clear {}", d.display()))?;
    }
    std::fs::create_dir(&d).ctx(|| format!("cannot create {}", d.display()))?;
    let w = d.join("weights.safetensors");
    nets::save(&net.vs, &w, None)?;
    nets::save_tensors(&opt.state(), &d.join("optim.safetensors"))?;
    let b = d.join("best.safetensors");
    if st.best_epoch == st.epochs_done {
        std::fs::hard_link(&w, &b)
            .or_else(|_| std::fs::copy(&w, &b).map(|_| ()))
            .ctx(|| "cannot write best weights")?;
    } else {
        let linked = best_on_disk
            .as_ref()
            .is_some_and(|prev| std::fs::hard_link(prev, &b).is_ok());
        if !linked {
            let mut v: Vec<(String, Tensor)> = best
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            nets::save_tensors(&v, &b)?;
        }
    }
    st.files.clear();
    let module = net.module.save_module(&d.join(MODULE_CKPT))?;
    for f in CKPT_FILES.iter().chain(module.then_some(&MODULE_CKPT)) {
        sync_file(&d.join(f));
        let h = flow_cache::Hash::of_file(&d.join(f)).map_err(|e| e.to_string())?;
        st.files.insert(f.to_string(), h.to_hex());
    }
    sync_file(&d);
    st.dir = name.clone();
    util::write_atomic(&root.join(CKPT_POINTER), &serde_json::to_vec_pretty(st).expect("json"))?;
    *best_on_disk = Some(b);
    // Older checkpoints are no longer needed.
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("ckpt-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

type Loaded = (
    State,
    HashMap<String, Tensor>,
    HashMap<String, Tensor>,
    HashMap<String, Tensor>,
);

fn load_checkpoint(root: &Path, fingerprint: &str) -> Option<Loaded> {
    let p = root.join(CKPT_POINTER);
    if !p.is_file() {
        return None;
    }
    let st: State = match util::read_json(&p) {
        Ok(s) => s,
        Err(e) => {
            log(format!("ignoring unreadable checkpoint: {e}"));
            return None;
        }
    };
    if st.fingerprint != fingerprint {
        log(format!(
            "ignoring the checkpoint in {}: it belongs to other parameters",
            root.display()
        ));
        return None;
    }
    let d = root.join(&st.dir);
    let listed: Vec<&str> = st.files.keys().map(String::as_str).collect();
    for f in CKPT_FILES
        .iter()
        .copied()
        .chain(listed.into_iter().filter(|f| !CKPT_FILES.contains(f)))
    {
        let got = flow_cache::Hash::of_file(&d.join(f)).map(|h| h.to_hex()).ok();
        if got.is_none() || st.files.get(f) != got.as_ref() {
            log(format!(
                "ignoring damaged checkpoint {}: {f} does not match its recorded hash; training starts over",
                d.display()
            ));
            return None;
        }
    }
    let read = |f: &str| nets::read_tensors(&d.join(f));
    match (
        read("weights.safetensors"),
        read("optim.safetensors"),
        read("best.safetensors"),
    ) {
        (Ok(w), Ok(o), Ok(b)) => Some((st, w, o, b)),
        (w, o, b) => {
            let e = [w.err(), o.err(), b.err()]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_default();
            log(format!("ignoring damaged checkpoint: {e}"));
            None
        }
    }
}

/// One fold's training as it is fixed before the first epoch: the job, the fold's items by
/// role, and the batch and step numbers every epoch shares.
struct Fold<'a> {
    job: Job<'a>,
    hooks: &'a Hooks,
    seed: u64,
    /// Each item's role in this fold (in `index.csv` order).
    roles: Vec<Role>,
    train: Vec<usize>,
    val: Vec<usize>,
    /// The training set by class (what weighted sampling draws from).
    reals: Vec<usize>,
    fakes: Vec<usize>,
    counts: RoleCounts,
    use_amp: bool,
    n_batches: usize,
    accum: usize,
    steps_per_epoch: i64,
    total_steps: i64,
    selection: &'static str,
    selection_note: Option<&'static str>,
}

impl<'a> Fold<'a> {
    /// Splits the items by role, checks the training set and the batch parameters, and works
    /// out the batches per epoch (see the module docs) and the optimiser steps.
    fn new(job: Job<'a>, hooks: &'a Hooks) -> Res<Fold<'a>> {
        let p = &job.params;
        let k = job.fold;
        let items = job.items;
        let roles: Vec<Role> = items.iter().map(|it| it.split.role(k)).collect();
        let of = |r: Role| -> Vec<usize> { (0..items.len()).filter(|&i| roles[i] == r).collect() };
        let (train, val) = (of(Role::Train), of(Role::Val));

        let mut counts = RoleCounts::default();
        for r in [Role::Train, Role::Val, Role::Test, Role::Excluded] {
            let idx = of(r);
            let fake = idx.iter().filter(|&&i| items[i].label == 1).count();
            *counts.get_mut(r) = ClassCounts {
                real: idx.len() - fake,
                fake,
            };
        }
        let tr_fake = train.iter().filter(|&&i| items[i].label == 1).count();
        let tr_real = train.len() - tr_fake;
        if tr_fake == 0 || tr_real == 0 {
            let missing = if tr_fake == 0 { "fake" } else { "real" };
            return Err(format!(
                "fold {k} has no {missing} items in its training set ({tr_real} real, {tr_fake} fake): a detector needs both classes (check the split's holdout and subsample)"
            ));
        }
        if p.batch_size == 0 || p.accumulate == 0 || p.epochs == 0 {
            return Err("`batch_size`, `accumulate` and `epochs` must be at least 1".into());
        }

        let bs = p.batch_size;
        let n_draws = train.len();
        let n_batches = {
            let full = n_draws / bs;
            let rest = n_draws % bs;
            full + usize::from(rest > 1 || (rest == 1 && full == 0))
        };
        let accum = p.accumulate as usize;
        let steps_per_epoch = n_batches.div_ceil(accum) as i64;
        let total_steps = steps_per_epoch * p.epochs as i64;
        let (selection, selection_note) = selection_rule(items, &val);
        let reals: Vec<usize> = train.iter().copied().filter(|&i| items[i].label == 0).collect();
        let fakes: Vec<usize> = train.iter().copied().filter(|&i| items[i].label == 1).collect();
        Ok(Fold {
            seed: p.seed.unwrap_or(0),
            use_amp: p.mixed_precision && job.device.is_cuda(),
            job,
            hooks,
            roles,
            train,
            val,
            reals,
            fakes,
            counts,
            n_batches,
            accum,
            steps_per_epoch,
            total_steps,
            selection,
            selection_note,
        })
    }

    /// Logits of dataset `rows` under `net` (eval mode, Identity view): validation and scores.
    fn logits(&self, net: &Net, rows: &[usize]) -> Res<Vec<f64>> {
        let job = &self.job;
        predict(
            net,
            job.ds,
            &job.norm,
            rows,
            job.params.batch_size * 2,
            job.device,
            &[Tta::Identity],
        )
    }

    fn weight_sum(&self, c: &[usize]) -> f64 {
        c.iter().map(|&i| self.job.weights[i] as f64).sum()
    }

    /// Logs the selection note (if any) and what is about to be trained.
    fn log_start(&self) {
        let (job, p, k) = (&self.job, &self.job.params, self.job.fold);
        if let Some(n) = self.selection_note {
            log(format!("note: fold {k}: {n}"));
        }
        let (tr_real, tr_fake) = (self.counts.train.real, self.counts.train.fake);
        log(format!(
            "{} fold {k}: {} on {:?}, {} train ({tr_real} real, {tr_fake} fake), {} val, {} batches of {}, {} threads",
            job.kind,
            nets::model_name(&p.model),
            job.device,
            self.train.len(),
            self.val.len(),
            self.n_batches,
            p.batch_size,
            tch::get_num_threads()
        ));
    }

    /// The epoch's batches (indices into the items) and their requests, with one
    /// augmentation seed per item: all from the epoch's stream of (seed, fold, epoch).
    fn epoch_batches(&self, epoch: u32) -> (Vec<Vec<usize>>, Vec<BatchReq>) {
        let (p, items, k) = (&self.job.params, self.job.items, self.job.fold);
        let mut rng = util::rng([self.seed, k as u64, epoch as u64, 0x7EA1_0001]);
        let order: Vec<usize> = if p.balance {
            (0..self.train.len())
                .map(|_| {
                    let pool = if rng.gen::<bool>() { &self.fakes } else { &self.reals };
                    pool[rng.gen_range(0..pool.len())]
                })
                .collect()
        } else {
            let mut o = self.train.clone();
            o.shuffle(&mut rng);
            o
        };
        let chunks: Vec<Vec<usize>> = order
            .chunks(p.batch_size)
            .take(self.n_batches)
            .map(|c| c.to_vec())
            .collect();
        let reqs: Vec<BatchReq> = chunks
            .iter()
            .map(|c| BatchReq {
                rows: c.iter().map(|&i| items[i].row).collect(),
                seeds: Some(c.iter().map(|_| rng.gen::<u64>()).collect()),
            })
            .collect();
        (chunks, reqs)
    }
}

/// The rule that picks the best epoch (see the module docs), and the note saying why when
/// it is not the validation AUC.
fn selection_rule(items: &[Item], val: &[usize]) -> (&'static str, Option<&'static str>) {
    let val_fakes = val.iter().filter(|&&i| items[i].label == 1).count();
    let selection = if val.is_empty() {
        "train_loss"
    } else if val_fakes > 0 && val_fakes < val.len() {
        "val_auc"
    } else {
        "val_loss"
    };
    let selection_note = match selection {
        "train_loss" => Some("the validation set is empty: the epoch with the lowest training loss was kept"),
        "val_loss" => {
            Some("the validation set has one class only (no AUC): the epoch with the lowest validation loss was kept")
        }
        _ => None,
    };
    (selection, selection_note)
}

/// The model in training and the run's progress: what a checkpoint keeps.
struct Training {
    net: Net,
    opt: AdamW,
    st: State,
    /// The best epoch's weights so far, and the checkpoint file that holds them.
    best: HashMap<String, Tensor>,
    best_on_disk: Option<PathBuf>,
}

impl State {
    fn fresh(fingerprint: String) -> State {
        State {
            fingerprint,
            dir: String::new(),
            epochs_done: 0,
            sched_step: 0,
            opt_step: 0,
            batches_done: 0,
            best_epoch: 0,
            best_metric: None,
            best_batches: 0,
            bad_epochs: 0,
            stopped: false,
            scaler: Scaler::default(),
            history: Vec::new(),
            files: Default::default(),
        }
    }
}

/// libtorch seeded with `seed*1000 + fold`, the fold's network with its initial weights:
/// fresh (optionally pretrained) for Train, the base model's for Retrain.
fn build_model(f: &Fold) -> Res<(Net, Option<nets::Pretrained>)> {
    let (job, p) = (&f.job, &f.job.params);
    tch::manual_seed((f.seed as i64).wrapping_mul(1000).wrapping_add(job.fold as i64));
    let net = match (&p.model, &job.init) {
        // A TorchScript model starts from the user's module file, or (Retrain) from the
        // trained module of the base model's directory.
        (Model::TorchScript { .. }, Init::Fresh { .. }) => {
            let file = job
                .spec
                .paths
                .iter()
                .find(|x| x.port == "module")
                .map(|x| x.abs.clone())
                .ok_or("the TorchScript module file was not passed to the worker")?;
            nets::load_torchscript(&file, job.device, job.ds.size)?
        }
        (Model::TorchScript { .. }, Init::From(w)) => {
            let dir = w.parent().unwrap_or(Path::new("."));
            nets::load_torchscript(&dir.join(nets::MODULE_FILE), job.device, job.ds.size)?
        }
        _ => nets::build(&p.model, job.device, job.ds.size)?,
    };
    let mut net = nets::with_input_filter(net, p.input_filter, job.device);
    let pretrained = match &job.init {
        Init::Fresh { pretrained: Some(path) } => {
            let mut rep = nets::load_pretrained(&net, path, &p.model, p.pretrained_strict)?;
            log(format!(
                "pretrained {}: {} tensors loaded, skipped {:?}{}{}",
                path.display(),
                rep.loaded,
                rep.skipped,
                if rep.missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} missing (left fresh: pretrained_strict is false)",
                        rep.missing.len()
                    )
                },
                if rep.unused.is_empty() {
                    String::new()
                } else {
                    format!(", {} unused", rep.unused.len())
                }
            ));
            // As the pipeline names it: an absolute path in an output would make it differ
            // between workspaces.
            rep.file = p.pretrained.clone().unwrap_or_default();
            Some(rep)
        }
        Init::Fresh { pretrained: None } => None,
        Init::From(path) => {
            let src = nets::read_tensors(path)?;
            nets::load_exact(&net.vs, &src, &format!("model file {}", path.display()))?;
            None
        }
    };
    if p.freeze_backbone {
        let n = net.freeze_backbone();
        let left = nets::named(&net.vs).iter().filter(|(_, t)| t.requires_grad()).count();
        log(format!("freeze_backbone: {n} backbone tensors frozen, {left} trained"));
        if left == 0 {
            return Err("freeze_backbone leaves no tensor to train".into());
        }
    }
    Ok((net, pretrained))
}

/// The optimiser, and the state of the resume dir's checkpoint when it is this run's (same
/// kind, params, fold and item count), else a fresh start. Also returns the epoch the
/// checkpoint was taken after.
fn start_or_resume(f: &Fold, net: Net) -> Res<(Training, Option<u32>)> {
    let job = &f.job;
    let fingerprint = serde_json::to_string(&serde_json::json!({
        "v": 1, "kind": job.kind, "params": job.spec.params, "fold": job.fold, "items": job.items.len(),
    }))
    .expect("json");
    let ckpt = load_checkpoint(&job.spec.resume_dir, &fingerprint);
    // A TorchScript module resumes from the checkpoint's whole module (its buffers too).
    let net = match ckpt
        .as_ref()
        .map(|c| job.spec.resume_dir.join(&c.0.dir).join(MODULE_CKPT))
    {
        Some(m) if m.is_file() => {
            let n = nets::load_torchscript(&m, job.device, job.ds.size)?;
            nets::with_input_filter(n, job.params.input_filter, job.device)
        }
        _ => net,
    };
    let opt = AdamW::new(&net.vs, job.params.weight_decay);
    let mut tr = Training {
        net,
        opt,
        st: State::fresh(fingerprint.clone()),
        best: HashMap::new(),
        best_on_disk: None,
    };
    let mut resumed_from = None;
    if let Some((s0, w, o, b)) = ckpt {
        nets::load_exact(&tr.net.vs, &w, "checkpoint weights")?;
        tr.opt.load_state(&o, s0.opt_step)?;
        tr.best = b.into_iter().map(|(n, t)| (n, t.to_device(job.device))).collect();
        tr.best_on_disk = Some(job.spec.resume_dir.join(&s0.dir).join("best.safetensors"));
        tr.st = s0;
        resumed_from = Some(tr.st.epochs_done);
        log(format!(
            "resuming from epoch {} (checkpoint after epoch {})",
            tr.st.epochs_done + 1,
            tr.st.epochs_done
        ));
    }
    Ok((tr, resumed_from))
}

fn fit(job: Job<'_>, hooks: &Hooks) -> Res<()> {
    let t0 = Instant::now();
    let f = Fold::new(job, hooks)?;
    let device = f.job.device;
    if f.job.params.mixed_precision && !device.is_cuda() {
        log("mixed_precision: ignored on CPU (autocast is used on CUDA only)");
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let (net, pretrained) = build_model(&f)?;
    let (mut tr, resumed_from) = start_or_resume(&f, net)?;
    f.log_start();

    let epochs = f.job.params.epochs;
    let mut epoch = tr.st.epochs_done;
    while epoch < epochs && !tr.st.stopped {
        run_epoch(&f, &mut tr, epoch)?;
        epoch += 1;
    }
    write_outputs(&f, &tr)?;
    write_meta(&f, &tr, pretrained)?;
    report_done(&f, &tr, resumed_from, t0);
    Ok(())
}

/// One epoch's training loop as it runs: its batches and running totals.
struct EpochRun<'c> {
    /// The epoch, 1-based.
    e1: u32,
    chunks: &'c [Vec<usize>],
    loss_sum: f64,
    seen: usize,
    /// The learning rate of the last optimiser step (before the first: the scheduler's).
    last_lr: f64,
    started: Instant,
    /// Seconds of the whole loop, once it has run.
    secs: f64,
}

impl EpochRun<'_> {
    fn images_per_s(&self) -> f64 {
        self.seen as f64 / self.secs.max(1e-9)
    }
}

/// Validation loss and AUC of an epoch (none without a validation set; no AUC with one
/// class).
struct Validation {
    loss: Option<f64>,
    auc: Option<f64>,
    diag: Option<models::Diagnostics>,
}

/// Epoch `epoch` (0-based): libtorch seeded for it, its batches, the training loop,
/// validation, best-epoch selection, the checkpoint, its log line and the test hook.
fn run_epoch(f: &Fold, tr: &mut Training, epoch: u32) -> Res<()> {
    let te = Instant::now();
    let e1 = epoch + 1;
    let epochs = f.job.params.epochs;
    tch::manual_seed((util::mix(&[f.seed, f.job.fold as u64, epoch as u64, 1]) >> 1) as i64);
    let (chunks, reqs) = f.epoch_batches(epoch);
    let ep = train_epoch(f, tr, e1, &chunks, reqs)?;
    let train_loss = ep.loss_sum / ep.seen.max(1) as f64;
    let v = validate(f, &tr.net)?;
    let improved = tr.end_epoch(f, e1, train_loss, &v);
    if improved {
        // A TorchScript module's buffers are not in the var store: keep the best epoch's
        // whole module (a no-op for other models).
        let dir = &f.job.spec.resume_dir;
        std::fs::create_dir_all(dir).ctx(|| format!("cannot create {}", dir.display()))?;
        tr.net.module.save_module(&dir.join(BEST_MODULE))?;
    }
    let secs = te.elapsed().as_secs_f64();
    tr.st.history.push(EpochRow {
        epoch: e1,
        train_loss,
        val_loss: v.loss,
        val_auc: v.auc,
        lr: ep.last_lr,
        seconds: secs,
        train_images_per_s: ep.images_per_s(),
        diag: v.diag.clone(),
    });
    tr.st.opt_step = tr.opt.step;
    save_checkpoint(
        &f.job.spec.resume_dir,
        &mut tr.st,
        &tr.net,
        &tr.opt,
        &tr.best,
        &mut tr.best_on_disk,
    )?;
    // What `flow status` shows of a killed run ("resumable … from epoch N").
    let note = serde_json::json!({"done": e1, "of": epochs, "unit": "epoch"});
    util::write_atomic(
        &f.job.spec.resume_dir.join(flow_engine::launch::RESUME_PROGRESS),
        &serde_json::to_vec(&note).expect("json"),
    )?;
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
    let diag = v.diag.as_ref().map_or(String::new(), |d| {
        format!(
            " reasoning AUC {} Δ {} α {}",
            fmt(d.reasoning_auc, 4),
            fmt(d.convergence_delta, 4),
            fmt(d.gating_alpha, 3)
        )
    });
    let msg = format!(
        "epoch {e1}/{epochs} loss {train_loss:.4} val loss {} val AUC {}{diag} lr {:.3e} {secs:.1} s ({:.0} img/s){}",
        fmt(v.loss, 4),
        fmt(v.auc, 4),
        ep.last_lr,
        ep.images_per_s(),
        if improved { " *" } else { "" }
    );
    log(&msg);
    progress(e1 as f64 / epochs as f64, msg);
    if let Some(h) = &f.hooks.after_epoch {
        h(e1)?;
    }
    if tr.st.stopped {
        log(format!(
            "early stopping after epoch {e1}: no {} improvement for {} epoch(s); best epoch {}",
            f.selection, tr.st.bad_epochs, tr.st.best_epoch
        ));
    }
    Ok(())
}

/// The training loop of epoch `e1` over `chunks` (their pixels built one batch ahead by
/// [`prefetch`]).
fn train_epoch<'c>(
    f: &Fold,
    tr: &mut Training,
    e1: u32,
    chunks: &'c [Vec<usize>],
    reqs: Vec<BatchReq>,
) -> Res<EpochRun<'c>> {
    let (job, p) = (&f.job, &f.job.params);
    let s = job.ds.size as i64;
    let per = (3 * s * s) as usize;
    let mut ep = EpochRun {
        e1,
        chunks,
        loss_sum: 0.0,
        seen: 0,
        last_lr: lr_at(p.schedule, p.lr, tr.st.sched_step, f.total_steps, f.steps_per_epoch),
        started: Instant::now(),
        secs: 0.0,
    };
    prefetch(job.ds, &job.norm, Some(&p.augment), reqs, |bi, buf, n| {
        if bi % f.accum == 0 {
            tr.opt.zero_grad();
        }
        let x = data::batch_tensor(&buf[..n * per], n, s, job.device);
        train_batch(f, tr, &mut ep, bi, &x, n)
    })?;
    ep.secs = ep.started.elapsed().as_secs_f64();
    Ok(ep)
}

/// Batch `bi` (0-based) of the epoch: forward, the weighted loss (which must be finite),
/// backward, an optimiser step at the end of each `accumulate` batches, and progress.
fn train_batch(f: &Fold, tr: &mut Training, ep: &mut EpochRun, bi: usize, x: &Tensor, n: usize) -> Res<()> {
    let (job, p, k) = (&f.job, &f.job.params, f.job.fold);
    let (e1, n_batches, accum) = (ep.e1, f.n_batches, f.accum);
    let chunk = &ep.chunks[bi];
    let yv: Vec<f32> = chunk.iter().map(|&i| job.items[i].label as f32).collect();
    let wv: Vec<f32> = chunk.iter().map(|&i| job.weights[i]).collect();
    let y = Tensor::from_slice(&yv).to_device(job.device);
    let w = Tensor::from_slice(&wv).to_device(job.device);
    let out = if f.use_amp {
        tch::autocast(true, || tr.net.module.train_forward(x, &y))
    } else {
        tr.net.module.train_forward(x, &y)
    };
    let per_sample = match out.loss {
        Some(l) => l.view([-1]).to_kind(Kind::Float),
        None => per_sample_loss(&out.logit.view([-1]).to_kind(Kind::Float), &y, p.loss),
    };
    let mut loss = (per_sample * &w).sum(Kind::Float) / f.weight_sum(chunk);
    if f.hooks.poison == Some((e1, bi + 1)) {
        loss *= f64::NAN;
    }
    let lv = loss.double_value(&[]);
    if !lv.is_finite() {
        return Err(format!(
            "loss became {} at epoch {e1} batch {} of fold {k} (lr {:.3e}: too high? try a lower lr, grad_clip, or check the data)",
            if lv.is_nan() { "NaN" } else { "infinite" },
            bi + 1,
            ep.last_lr
        ));
    }
    let scaled = if f.use_amp {
        loss * (tr.st.scaler.scale / accum as f64)
    } else {
        loss / accum as f64
    };
    tr.opt.backward(&scaled);
    ep.loss_sum += lv * n as f64;
    ep.seen += n;
    tr.st.batches_done += 1;
    if (bi + 1) % accum == 0 || bi + 1 == n_batches {
        ep.last_lr = optimizer_step(f, tr, e1, bi);
    }
    if (bi + 1) % 10 == 0 && bi + 1 < n_batches {
        let ips = ep.seen as f64 / ep.started.elapsed().as_secs_f64().max(1e-9);
        let epochs = p.epochs;
        progress(
            ((e1 - 1) as f64 + (bi + 1) as f64 / n_batches as f64) / epochs as f64,
            format!(
                "epoch {e1}/{epochs} batch {}/{n_batches} loss {:.4} ({ips:.0} img/s)",
                bi + 1,
                ep.loss_sum / ep.seen as f64
            ),
        );
    }
    Ok(())
}

/// The optimiser step closing an accumulation window: with mixed precision the gradients
/// unscaled and checked (an overflow skips the step), gradient clipping, the step, and the
/// scheduler's count. Returns the step's learning rate.
fn optimizer_step(f: &Fold, tr: &mut Training, e1: u32, bi: usize) -> f64 {
    let p = &f.job.params;
    let (opt, st) = (&mut tr.opt, &mut tr.st);
    let lr = lr_at(p.schedule, p.lr, st.sched_step, f.total_steps, f.steps_per_epoch);
    let take = if f.use_amp {
        opt.scale_grads(1.0 / st.scaler.scale);
        let norm = opt.grad_norm();
        let ok = st.scaler.update(norm.is_finite());
        if ok {
            if let Some(c) = p.grad_clip {
                if norm > c {
                    opt.scale_grads(c / (norm + 1e-6));
                }
            }
        } else {
            log(format!(
                "epoch {e1} batch {}: fp16 gradient overflow, step skipped (loss scale now {})",
                bi + 1,
                st.scaler.scale
            ));
        }
        ok
    } else {
        if let Some(c) = p.grad_clip {
            let norm = opt.grad_norm();
            if norm > c {
                opt.scale_grads(c / (norm + 1e-6));
            }
        }
        true
    };
    if take {
        opt.step(lr);
    }
    st.sched_step += 1;
    lr
}

/// Validation loss and AUC of the current weights (eval mode, Identity view).
fn validate(f: &Fold, net: &Net) -> Res<Validation> {
    if f.val.is_empty() {
        return Ok(Validation {
            loss: None,
            auc: None,
            diag: diagnostics(net, &Probes::new(), &[]),
        });
    }
    let (job, items) = (&f.job, f.job.items);
    let rows: Vec<usize> = f.val.iter().map(|&i| items[i].row).collect();
    let (logits, probes) = predict_probed(
        net,
        job.ds,
        &job.norm,
        &rows,
        job.params.batch_size * 2,
        job.device,
        &[Tta::Identity],
        true,
    )?;
    let labels: Vec<u8> = f.val.iter().map(|&i| items[i].label).collect();
    let diag = diagnostics(net, &probes, &labels);
    let lt = Tensor::from_slice(&logits).to_kind(Kind::Float);
    let yt = Tensor::from_slice(&labels.iter().map(|&y| y as f32).collect::<Vec<_>>());
    let vl = per_sample_loss(&lt, &yt, job.params.loss)
        .mean(Kind::Float)
        .double_value(&[]);
    Ok(Validation {
        loss: Some(vl),
        auc: util::auc(&logits, &labels),
        diag,
    })
}

/// RADAR's validation diagnostics from its probes and scalars (`None` for models without).
fn diagnostics(net: &Net, probes: &Probes, labels: &[u8]) -> Option<models::Diagnostics> {
    let scalars = net.module.scalars();
    if probes.is_empty() && scalars.is_empty() {
        return None;
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Some(models::Diagnostics {
        reasoning_auc: probes.get("reasoning_logit").and_then(|l| util::auc(l, labels)),
        convergence_delta: probes.get("convergence_delta").map(mean),
        gating_alpha: scalars.iter().find(|(n, _)| *n == "gating_alpha").map(|(_, v)| *v),
    })
}

impl Training {
    /// Counts epoch `e1` as done and judges it by the selection metric: a better one becomes
    /// the best (its weights kept), a worse one brings early stopping nearer. Returns
    /// whether it improved.
    fn end_epoch(&mut self, f: &Fold, e1: u32, train_loss: f64, v: &Validation) -> bool {
        let (p, st) = (&f.job.params, &mut self.st);
        let (metric, higher) = match f.selection {
            "val_auc" => (v.auc.unwrap_or(f64::NAN), true),
            "val_loss" => (v.loss.unwrap_or(f64::NAN), false),
            _ => (train_loss, false),
        };
        let improved = match st.best_metric.map(f64::from_bits) {
            None => true,
            Some(b) => {
                if higher {
                    metric > b
                } else {
                    metric < b
                }
            }
        };
        st.epochs_done = e1;
        if improved {
            st.best_metric = Some(metric.to_bits());
            st.best_epoch = e1;
            st.best_batches = st.batches_done;
            st.bad_epochs = 0;
            self.best = nets::snapshot(&self.net.vs);
        } else {
            st.bad_epochs += 1;
        }
        if let Some(pat) = p.patience {
            if st.bad_epochs >= pat.max(1) && e1 < p.epochs {
                st.stopped = true;
            }
        }
        improved
    }
}

/// The best epoch's weights (restored into the net), `history.csv`, and `scores.csv` with
/// every item's logit under those weights.
fn write_outputs(f: &Fold, tr: &Training) -> Res<()> {
    let (job, items, st) = (&f.job, f.job.items, &tr.st);
    nets::restore(&tr.net.vs, &tr.best);
    let out = &job.spec.out_dir;
    std::fs::create_dir_all(out).ctx(|| format!("cannot create {}", out.display()))?;
    nets::save(&tr.net.vs, &out.join(models::WEIGHTS), Some(st.best_batches))?;
    // TorchScript: `module.pt`, the trained module of the best epoch (parameters and buffers).
    let module = out.join(nets::MODULE_FILE);
    if tr.net.module.save_module(&module)? {
        let best = job.spec.resume_dir.join(BEST_MODULE);
        if best.is_file() {
            std::fs::copy(&best, &module).ctx(|| format!("cannot copy {}", best.display()))?;
        }
    }
    let history: Vec<HistRow> = st
        .history
        .iter()
        .map(|h| HistRow {
            epoch: h.epoch,
            train_loss: h.train_loss,
            val_loss: h.val_loss,
            val_auc: h.val_auc,
            lr: h.lr,
            val_reasoning_auc: h.diag.as_ref().and_then(|d| d.reasoning_auc),
            val_convergence_delta: h.diag.as_ref().and_then(|d| d.convergence_delta),
            gating_alpha: h.diag.as_ref().and_then(|d| d.gating_alpha),
        })
        .collect();
    models::write_history(out, &history)?;

    progress(
        1.0,
        format!(
            "scoring {} items with the weights of epoch {}",
            items.len(),
            st.best_epoch
        ),
    );
    let rows: Vec<usize> = items.iter().map(|it| it.row).collect();
    let logits = f.logits(&tr.net, &rows)?;
    let scores: Vec<ScoreRow> = items
        .iter()
        .enumerate()
        .map(|(i, it)| ScoreRow {
            item: it.item.clone(),
            role: f.roles[i],
            label: it.label,
            source: it.source.clone(),
            logit: logits[i],
        })
        .collect();
    models::write_scores(out, &scores)
}

/// `meta.json`.
fn write_meta(f: &Fold, tr: &Training, pretrained: Option<nets::Pretrained>) -> Res<()> {
    let (job, p, st) = (&f.job, &f.job.params, &tr.st);
    let best_row = st.history.iter().find(|h| h.epoch == st.best_epoch);
    let mut extra = job.extra_meta.clone();
    if let Some(d) = best_row.and_then(|h| h.diag.as_ref()) {
        // RADAR's diagnostics at the best epoch (seed 003's `val_reasoning_auc`, …).
        extra.insert("diagnostics".into(), serde_json::to_value(d).expect("json"));
    }
    if p.freeze_backbone {
        extra.insert("frozen_tensors".into(), serde_json::json!(tr.net.frozen));
    }
    ModelMeta {
        kind: job.kind.into(),
        fold: job.fold,
        model: p.model.clone(),
        model_name: nets::model_name(&p.model),
        params: job.spec.params.clone(),
        train_params: p.clone(),
        image_size: job.ds.size,
        normalize: job.norm.clone(),
        counts: f.counts,
        epochs: p.epochs,
        epochs_run: st.epochs_done,
        stopped_early: st.stopped,
        best_epoch: st.best_epoch,
        best_val_auc: best_row.and_then(|h| h.val_auc),
        best_val_loss: best_row.and_then(|h| h.val_loss),
        selection: f.selection.into(),
        selection_note: f.selection_note.map(String::from),
        balance: if p.balance {
            "weighted sampling (classes drawn equally often, with replacement)"
        } else {
            "none"
        }
        .into(),
        optimizer_steps: tr.opt.step,
        device: device_name(job.device),
        mixed_precision: f.use_amp,
        libtorch: crate::libtorch_version().into(),
        pretrained,
        seed: f.seed,
        extra,
    }
    .write(&job.spec.out_dir)
}

/// The run record's meta (timings, threads, resume) and the closing log line.
fn report_done(f: &Fold, tr: &Training, resumed_from: Option<u32>, t0: Instant) {
    let (job, st) = (&f.job, &tr.st);
    let best_row = st.history.iter().find(|h| h.epoch == st.best_epoch);
    let seconds = t0.elapsed().as_secs_f64();
    util::meta_event(serde_json::json!({
        "best_epoch": st.best_epoch,
        "best_val_auc": best_row.and_then(|h| h.val_auc),
        "device": device_name(job.device),
        "threads": tch::get_num_threads(),
        "seconds": seconds,
        "resumed_after_epoch": resumed_from,
        "epochs": st.history.iter().map(|h| serde_json::json!({
            "epoch": h.epoch,
            "seconds": h.seconds,
            "train_images_per_s": h.train_images_per_s,
        })).collect::<Vec<_>>(),
    }));
    log(format!(
        "{} fold {} done in {seconds:.1} s: best epoch {} ({} {})",
        job.kind,
        job.fold,
        st.best_epoch,
        f.selection,
        st.best_metric
            .map(f64::from_bits)
            .map_or("-".into(), |m| format!("{m:.4}"))
    ));
}
