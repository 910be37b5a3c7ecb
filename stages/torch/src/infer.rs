//! `EnsembleInfer`: out-of-fold ensemble predictions with TTA, temperature calibration and an
//! optional cascade.
//!
//! * Members: the `models` inputs, grouped by stage (`retrain@fold2` → member `retrain`),
//!   columns in the order of the stage's `models` list. Every item is scored by each member's
//!   model of the item's own fold (`folds.csv` `fold`: the fold that held it out), so no item
//!   is ever scored by a model that trained or validated on it.
//! * TTA: a member's logit is the mean of its logits over the TTA views (flips of the batch).
//! * Calibration (`calibration` input, `calibration.json` as Calibrate writes it:
//!   `{"folds": [{"fold": 0, "from": "train@fold0", "temperature": 1.2, …}, …]}`): member `m`
//!   of fold `k` uses the entry of fold `k` whose `from` names `m`; if none does, the fold's
//!   (first) temperature applies to every member. Probability = `sigmoid(logit / T)`.
//! * Aggregate: `Mean` (mean of member probabilities), `Max`, `CalibratedMean` (Mean, and
//!   an error without calibration).
//! * Cascade: the `fast` models (Identity view only, calibrated by the same rule) score every
//!   item first; only items with fast probability ≥ `threshold` are scored by the ensemble,
//!   the others keep the fast probability (their member columns are empty).
//!
//! Outputs: `predictions.csv` — `item,group,label,source,fold,score,<member>…` sorted by item,
//! probabilities with 9 decimals — and `infer.json` (members, temperatures, TTA, aggregate,
//! cascade counts). Seconds and threads go to the run record's meta, not into outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flow_stages::model::{Aggregate, EnsembleInfer, Model, Tta};
use flow_stages::ports::calibration::Temperatures;
use flow_stages::ports::predictions::{
    CascadeInfo, Counts, FoldCounts, FoldModel, InferDoc, MemberInfo, PredictionRow, Predictions,
};
use flow_stages::worker::WorkerSpec;
use indexmap::IndexMap;
use tch::Device;

use crate::data::{self, Dataset, Item};
use crate::nets::{self, Net};
use crate::run::{device_name, find_input, pick_device};
use crate::train::{predict, read_model_info};
use crate::util::{self, log, progress, sigmoid, Res};
use flow_stages::ports::models::ModelMeta as ModelInfo;

struct Member {
    name: String,
    /// fold → (producing instance, its out dir)
    folds: BTreeMap<u32, (String, PathBuf)>,
}

fn members_of(spec: &WorkerSpec, port: &str, order: &[String]) -> Res<Vec<Member>> {
    let mut v: Vec<Member> = Vec::new();
    for i in spec.inputs.iter().filter(|i| i.port == port) {
        let name = i.from.split('@').next().unwrap_or(&i.from).to_string();
        let fold = i.fold.ok_or_else(|| {
            format!(
                "`{}` is not a per-fold model stage (EnsembleInfer needs one model per fold)",
                i.from
            )
        })?;
        let m = match v.iter_mut().position(|m| m.name == name) {
            Some(p) => &mut v[p],
            None => {
                v.push(Member {
                    name: name.clone(),
                    folds: BTreeMap::new(),
                });
                v.last_mut().expect("pushed")
            }
        };
        m.folds.insert(fold, (i.from.clone(), i.dir.clone()));
    }
    v.sort_by_key(|m| order.iter().position(|o| *o == m.name).unwrap_or(usize::MAX));
    Ok(v)
}

pub(crate) fn load_model(dir: &Path, device: Device, ds: &Dataset, from: &str) -> Res<(Net, ModelInfo)> {
    let info = read_model_info(dir)?;
    if info.image_size != ds.size {
        log(format!(
            "warning: `{from}` was trained on {} px images, the data here is {} px",
            info.image_size, ds.size
        ));
    }
    let net = match &info.model {
        Model::TorchScript { .. } => nets::load_torchscript(&dir.join(nets::MODULE_FILE), device, ds.size)?,
        m => nets::build(m, device, ds.size)?,
    };
    let net = nets::with_input_filter(net, info.train_params.input_filter, device);
    let src = nets::read_tensors(&dir.join("model.safetensors"))?;
    nets::load_exact(&net.vs, &src, &format!("model file of `{from}`"))?;
    Ok((net, info))
}

pub fn run_infer(spec: &WorkerSpec, p: &EnsembleInfer) -> Res<()> {
    let t0 = Instant::now();
    let e = Ensemble::open(spec, p)?;
    let mut sc = Scored::new(&e);
    for &k in &e.fold_ids {
        sc.score_fold(&e, k)?;
    }

    // Aggregate and write, sorted by item.
    let (rows, fast_only) = e.prediction_rows(&sc);
    Predictions {
        members: e.members.iter().map(|m| m.name.clone()).collect(),
        rows,
    }
    .write(&spec.out_dir)?;

    let seconds = t0.elapsed().as_secs_f64();
    e.write_doc(&spec.out_dir, sc, fast_only)?;
    util::meta_event(serde_json::json!({
        "device": device_name(e.device),
        "threads": tch::get_num_threads(),
        "seconds": seconds,
    }));
    let n = e.items.len();
    log(format!(
        "EnsembleInfer: {n} items, {} member(s), TTA {:?}, {} by the ensemble, {fast_only} by the fast model only, {seconds:.1} s",
        e.members.len(),
        p.tta,
        n - fast_only
    ));
    Ok(())
}

/// What EnsembleInfer scores with: the items, the members and the fast model (each with a
/// model for every fold of the items), and the temperatures.
struct Ensemble<'a> {
    p: &'a EnsembleInfer,
    device: Device,
    ds: Dataset,
    items: Vec<Item>,
    fold_ids: BTreeSet<u32>,
    members: Vec<Member>,
    fast: Option<Member>,
    calib: Option<Temperatures>,
}

impl<'a> Ensemble<'a> {
    /// Reads the inputs and checks them: TTA views, members, the fast model, one model per
    /// fold, calibration where the aggregate needs it.
    fn open(spec: &WorkerSpec, p: &'a EnsembleInfer) -> Res<Ensemble<'a>> {
        let device = pick_device(p.device)?;
        if p.tta.is_empty() {
            return Err("`tta` is empty (use [Identity])".into());
        }
        let ds = Dataset::open(&find_input(spec, "data", None)?.dir)?;
        let folds = data::read_folds(&find_input(spec, "split", None)?.dir)?;
        let items = data::join(&ds, &folds)?;
        let fold_ids: BTreeSet<u32> = items.iter().map(|it| it.split.fold).collect();

        let members = members_of(spec, "models", &p.models)?;
        if members.is_empty() {
            return Err("EnsembleInfer got no `models` inputs".into());
        }
        let fast = match &p.cascade {
            None => None,
            Some(c) => {
                let f = members_of(spec, "fast", std::slice::from_ref(&c.fast))?;
                Some(
                    f.into_iter()
                        .next()
                        .ok_or_else(|| format!("cascade: the fast model stage `{}` was not passed", c.fast))?,
                )
            }
        };
        for m in members.iter().chain(fast.iter()) {
            check_folds(m, &fold_ids)?;
        }
        let calib: Option<Temperatures> = match spec.inputs.iter().find(|i| i.port == "calibration") {
            None => None,
            Some(c) => Some(Temperatures::read(&c.dir)?),
        };
        if p.aggregate == Aggregate::CalibratedMean && calib.is_none() {
            return Err("aggregate: CalibratedMean needs a `calibration` input".into());
        }
        Ok(Ensemble {
            p,
            device,
            ds,
            items,
            fold_ids,
            members,
            fast,
            calib,
        })
    }

    /// The temperature of `member`'s model of `fold` (1 without calibration).
    fn temp(&self, member: &str, fold: u32) -> Res<f64> {
        match &self.calib {
            None => Ok(1.0),
            Some(c) => c.temperature(member, fold),
        }
    }

    /// The model in `dir` (of instance `from`).
    fn load(&self, from: &str, dir: &Path) -> Res<(Net, ModelInfo)> {
        load_model(dir, self.device, &self.ds, from)
    }

    /// Mean logits of a model over `tta` for dataset `rows`.
    fn logits(&self, (net, info): &(Net, ModelInfo), rows: &[usize], tta: &[Tta]) -> Res<Vec<f64>> {
        predict(
            net,
            &self.ds,
            &info.normalize,
            rows,
            self.p.batch_size,
            self.device,
            tta,
        )
    }

    /// The rows of `predictions.csv` in item order, and how many items kept the fast model's
    /// probability.
    fn prediction_rows(&self, sc: &Scored) -> (Vec<PredictionRow>, usize) {
        let items = &self.items;
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| items[a].item.cmp(&items[b].item));
        let mut fast_only = 0usize;
        let rows = order
            .iter()
            .map(|&i| {
                let it = &items[i];
                let score = if sc.passed[i] {
                    let probs: Vec<f64> = sc.member_probs.iter().map(|v| v[i].expect("scored")).collect();
                    match self.p.aggregate {
                        Aggregate::Max => probs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        Aggregate::Mean | Aggregate::CalibratedMean => probs.iter().sum::<f64>() / probs.len() as f64,
                    }
                } else {
                    fast_only += 1;
                    sc.fast_probs[i].expect("fast scored")
                };
                PredictionRow {
                    item: it.item.clone(),
                    group: it.group.clone(),
                    label: it.label,
                    source: it.source.clone(),
                    fold: it.split.fold,
                    score,
                    members: sc.member_probs.iter().map(|v| v[i]).collect(),
                }
            })
            .collect();
        (rows, fast_only)
    }

    /// `infer.json`.
    fn write_doc(&self, out: &Path, sc: Scored, fast_only: usize) -> Res<()> {
        let (p, n) = (self.p, self.items.len());
        InferDoc {
            members: self
                .members
                .iter()
                .zip(sc.member_info)
                .map(|(m, folds)| MemberInfo {
                    name: m.name.clone(),
                    folds,
                })
                .collect(),
            tta: p.tta.clone(),
            aggregate: p.aggregate,
            calibrated: self.calib.is_some(),
            cascade: p.cascade.as_ref().map(|c| CascadeInfo {
                fast: c.fast.clone(),
                threshold: c.threshold,
                folds: sc.fast_info,
            }),
            counts: Counts {
                items: n,
                ensemble: n - fast_only,
                fast_only,
                per_fold: sc.per_fold,
            },
            device: device_name(self.device),
            libtorch: crate::libtorch_version().into(),
        }
        .write(out)
    }
}

/// Member `m` must have a model for each of the items' folds.
fn check_folds(m: &Member, fold_ids: &BTreeSet<u32>) -> Res<()> {
    let missing: Vec<String> = fold_ids
        .iter()
        .filter(|k| !m.folds.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "member `{}` has no model for fold(s) {} (the items of those folds cannot be scored out-of-fold)",
            m.name,
            missing.join(", ")
        ));
    }
    Ok(())
}

/// The probabilities so far (per item, in `index.csv` order) and, per fold, which model
/// scored it with which temperature.
struct Scored {
    /// Per member, per item; `None` where the cascade kept the fast probability.
    member_probs: Vec<Vec<Option<f64>>>,
    fast_probs: Vec<Option<f64>>,
    /// Whether the item goes to the ensemble (always, without a cascade).
    passed: Vec<bool>,
    member_info: Vec<IndexMap<String, FoldModel>>,
    fast_info: IndexMap<String, FoldModel>,
    per_fold: IndexMap<String, FoldCounts>,
    /// Models run so far, of `total_work` (progress).
    done: usize,
    total_work: usize,
}

impl Scored {
    fn new(e: &Ensemble) -> Scored {
        let n = e.items.len();
        Scored {
            member_probs: vec![vec![None; n]; e.members.len()],
            fast_probs: vec![None; n],
            passed: vec![true; n],
            member_info: vec![Default::default(); e.members.len()],
            fast_info: IndexMap::new(),
            per_fold: IndexMap::new(),
            done: 0,
            total_work: (e.fold_ids.len() * (e.members.len() + usize::from(e.fast.is_some()))).max(1),
        }
    }

    fn progress(&mut self, msg: String) {
        self.done += 1;
        progress(self.done as f64 / self.total_work as f64, msg);
    }

    /// The items held out by fold `k`: the fast model first (with a cascade), then every
    /// member on the items that passed it, each with its model of fold `k`.
    fn score_fold(&mut self, e: &Ensemble, k: u32) -> Res<()> {
        let items = &e.items;
        let idx: Vec<usize> = (0..items.len()).filter(|&i| items[i].split.fold == k).collect();
        if let (Some(f), Some(c)) = (&e.fast, &e.p.cascade) {
            let (from, dir) = &f.folds[&k];
            let model = e.load(from, dir)?;
            let t = e.temp(&f.name, k)?;
            let rows: Vec<usize> = idx.iter().map(|&i| items[i].row).collect();
            let logits = e.logits(&model, &rows, &[Tta::Identity])?;
            for (j, &i) in idx.iter().enumerate() {
                let pr = sigmoid(logits[j] / t);
                self.fast_probs[i] = Some(pr);
                self.passed[i] = pr >= c.threshold;
            }
            self.fast_info.insert(k.to_string(), fold_model(from, t));
            self.progress(format!("fold {k}: fast model `{from}` scored {} items", idx.len()));
        }
        let ens: Vec<usize> = idx.iter().copied().filter(|&i| self.passed[i]).collect();
        self.per_fold.insert(
            k.to_string(),
            FoldCounts {
                items: idx.len(),
                ensemble: ens.len(),
            },
        );
        let rows: Vec<usize> = ens.iter().map(|&i| items[i].row).collect();
        for (mi, m) in e.members.iter().enumerate() {
            let (from, dir) = &m.folds[&k];
            let t = e.temp(&m.name, k)?;
            self.member_info[mi].insert(k.to_string(), fold_model(from, t));
            if !rows.is_empty() {
                let logits = e.logits(&e.load(from, dir)?, &rows, &e.p.tta)?;
                for (j, &i) in ens.iter().enumerate() {
                    self.member_probs[mi][i] = Some(sigmoid(logits[j] / t));
                }
            }
            self.progress(format!("fold {k}: `{from}` scored {} items", rows.len()));
        }
        Ok(())
    }
}

fn fold_model(from: &str, temperature: f64) -> FoldModel {
    FoldModel {
        from: from.to_string(),
        temperature,
    }
}
