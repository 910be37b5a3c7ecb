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
use std::path::PathBuf;
use std::time::Instant;

use flow_stages::model::{Aggregate, EnsembleInfer, Tta};
use flow_stages::ports::calibration::Temperatures;
use flow_stages::ports::predictions::{
    CascadeInfo, Counts, FoldCounts, FoldModel, InferDoc, MemberInfo, PredictionRow, Predictions,
};
use flow_stages::worker::WorkerSpec;
use indexmap::IndexMap;
use tch::Device;

use crate::data::{self, Dataset};
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

fn load_model(dir: &std::path::Path, device: Device, ds: &Dataset, from: &str) -> Res<(Net, ModelInfo)> {
    let info = read_model_info(dir)?;
    if info.image_size != ds.size {
        log(format!(
            "warning: `{from}` was trained on {} px images, the data here is {} px",
            info.image_size, ds.size
        ));
    }
    let net = nets::build(&info.model, device, ds.size)?;
    let src = nets::read_tensors(&dir.join("model.safetensors"))?;
    nets::load_exact(&net.vs, &src, &format!("model file of `{from}`"))?;
    Ok((net, info))
}

pub fn run_infer(spec: &WorkerSpec, p: &EnsembleInfer) -> Res<()> {
    let t0 = Instant::now();
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
    }
    let calib: Option<Temperatures> = match spec.inputs.iter().find(|i| i.port == "calibration") {
        None => None,
        Some(c) => Some(Temperatures::read(&c.dir)?),
    };
    if p.aggregate == Aggregate::CalibratedMean && calib.is_none() {
        return Err("aggregate: CalibratedMean needs a `calibration` input".into());
    }
    let temp = |member: &str, fold: u32| -> Res<f64> {
        match &calib {
            None => Ok(1.0),
            Some(c) => c.temperature(member, fold),
        }
    };

    let n = items.len();
    let mut member_probs: Vec<Vec<Option<f64>>> = vec![vec![None; n]; members.len()];
    let mut fast_probs: Vec<Option<f64>> = vec![None; n];
    let mut passed = vec![true; n];
    let mut member_info: Vec<IndexMap<String, FoldModel>> = vec![Default::default(); members.len()];
    let mut fast_info = IndexMap::new();
    let mut per_fold = IndexMap::new();
    let total_work = (fold_ids.len() * (members.len() + usize::from(fast.is_some()))).max(1);
    let mut done = 0usize;
    for &k in &fold_ids {
        let idx: Vec<usize> = (0..n).filter(|&i| items[i].split.fold == k).collect();
        if let (Some(f), Some(c)) = (&fast, &p.cascade) {
            let (from, dir) = &f.folds[&k];
            let (net, info) = load_model(dir, device, &ds, from)?;
            let t = temp(&f.name, k)?;
            let rows: Vec<usize> = idx.iter().map(|&i| items[i].row).collect();
            let logits = predict(
                &net,
                &ds,
                &info.normalize,
                &rows,
                p.batch_size,
                device,
                &[Tta::Identity],
            )?;
            for (j, &i) in idx.iter().enumerate() {
                let pr = sigmoid(logits[j] / t);
                fast_probs[i] = Some(pr);
                passed[i] = pr >= c.threshold;
            }
            fast_info.insert(
                k.to_string(),
                FoldModel {
                    from: from.clone(),
                    temperature: t,
                },
            );
            done += 1;
            progress(
                done as f64 / total_work as f64,
                format!("fold {k}: fast model `{from}` scored {} items", idx.len()),
            );
        }
        let ens: Vec<usize> = idx.iter().copied().filter(|&i| passed[i]).collect();
        per_fold.insert(
            k.to_string(),
            FoldCounts {
                items: idx.len(),
                ensemble: ens.len(),
            },
        );
        let rows: Vec<usize> = ens.iter().map(|&i| items[i].row).collect();
        for (mi, m) in members.iter().enumerate() {
            let (from, dir) = &m.folds[&k];
            let t = temp(&m.name, k)?;
            member_info[mi].insert(
                k.to_string(),
                FoldModel {
                    from: from.clone(),
                    temperature: t,
                },
            );
            if !rows.is_empty() {
                let (net, info) = load_model(dir, device, &ds, from)?;
                let logits = predict(&net, &ds, &info.normalize, &rows, p.batch_size, device, &p.tta)?;
                for (j, &i) in ens.iter().enumerate() {
                    member_probs[mi][i] = Some(sigmoid(logits[j] / t));
                }
            }
            done += 1;
            progress(
                done as f64 / total_work as f64,
                format!("fold {k}: `{from}` scored {} items", rows.len()),
            );
        }
    }

    // Aggregate and write, sorted by item.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| items[a].item.cmp(&items[b].item));
    let mut fast_only = 0usize;
    let rows = order
        .iter()
        .map(|&i| {
            let it = &items[i];
            let score = if passed[i] {
                let probs: Vec<f64> = member_probs.iter().map(|v| v[i].expect("scored")).collect();
                match p.aggregate {
                    Aggregate::Max => probs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    Aggregate::Mean | Aggregate::CalibratedMean => probs.iter().sum::<f64>() / probs.len() as f64,
                }
            } else {
                fast_only += 1;
                fast_probs[i].expect("fast scored")
            };
            PredictionRow {
                item: it.item.clone(),
                group: it.group.clone(),
                label: it.label,
                source: it.source.clone(),
                fold: it.split.fold,
                score,
                members: member_probs.iter().map(|v| v[i]).collect(),
            }
        })
        .collect();
    Predictions {
        members: members.iter().map(|m| m.name.clone()).collect(),
        rows,
    }
    .write(&spec.out_dir)?;

    let seconds = t0.elapsed().as_secs_f64();
    InferDoc {
        members: members
            .iter()
            .zip(member_info)
            .map(|(m, folds)| MemberInfo {
                name: m.name.clone(),
                folds,
            })
            .collect(),
        tta: p.tta.clone(),
        aggregate: p.aggregate,
        calibrated: calib.is_some(),
        cascade: p.cascade.as_ref().map(|c| CascadeInfo {
            fast: c.fast.clone(),
            threshold: c.threshold,
            folds: fast_info,
        }),
        counts: Counts {
            items: n,
            ensemble: n - fast_only,
            fast_only,
            per_fold,
        },
        device: device_name(device),
        libtorch: crate::libtorch_version().into(),
    }
    .write(&spec.out_dir)?;
    util::meta_event(serde_json::json!({
        "device": device_name(device),
        "threads": tch::get_num_threads(),
        "seconds": seconds,
    }));
    log(format!(
        "EnsembleInfer: {n} items, {} member(s), TTA {:?}, {} by the ensemble, {fast_only} by the fast model only, {seconds:.1} s",
        members.len(),
        p.tta,
        n - fast_only
    ));
    Ok(())
}
