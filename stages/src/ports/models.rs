//! The `models` artifact Train and Retrain write, one directory per fold:
//! * `model.safetensors` — the best epoch's weights (torchvision names);
//! * `history.csv` — [`HistRow`]: `epoch,train_loss,val_loss,val_auc,lr` (1-based epochs; an
//!   empty cell where a value does not exist, e.g. the val AUC of a one-class validation set);
//! * `scores.csv` — [`ScoreRow`]: `item,role,label,source,logit` for every item of the split,
//!   in `index.csv` order, logits of the best weights (9 decimals);
//! * `meta.json` — [`ModelMeta`], what consumers (Retrain, EnsembleInfer, the report) need to
//!   rebuild and judge the model.
//!
//! Only what the key determines: timings, thread counts and resume history go to the run
//! record's meta.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::split::Role;
use super::tensors::Normalize;
use crate::model::{Model, Train};

pub use super::MODELS as PORT;

pub const WEIGHTS: &str = "model.safetensors";
pub const HISTORY: &str = "history.csv";
pub const SCORES: &str = "scores.csv";
pub const META: &str = "meta.json";

/// One epoch of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistRow {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_auc: Option<f64>,
    pub lr: f64,
    /// RADAR's diagnostics of the epoch (columns only for models that have them).
    #[serde(default)]
    pub val_reasoning_auc: Option<f64>,
    #[serde(default)]
    pub val_convergence_delta: Option<f64>,
    #[serde(default)]
    pub gating_alpha: Option<f64>,
}

/// A model's own validation diagnostics (RADAR, seed 003): the AUC of the reasoning path
/// alone, the mean |σ(last round) − σ(round before)|, and the fusion's gating α.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    pub reasoning_auc: Option<f64>,
    pub convergence_delta: Option<f64>,
    pub gating_alpha: Option<f64>,
}

impl HistRow {
    pub fn diagnostics(&self) -> Option<Diagnostics> {
        let d = Diagnostics {
            reasoning_auc: self.val_reasoning_auc,
            convergence_delta: self.val_convergence_delta,
            gating_alpha: self.gating_alpha,
        };
        (d != Diagnostics::default()).then_some(d)
    }
}

pub fn read_history(dir: &Path) -> Result<Vec<HistRow>, String> {
    super::read_rows(&dir.join(HISTORY), "history file")
}

/// Losses and AUCs with 6 decimals, the learning rate in `e` notation; the diagnostics
/// columns (`val_reasoning_auc,val_convergence_delta,gating_alpha`) only when a row has one.
pub fn write_history(dir: &Path, rows: &[HistRow]) -> Result<(), String> {
    let diag = rows.iter().any(|r| r.diagnostics().is_some());
    let mut s = String::from("epoch,train_loss,val_loss,val_auc,lr");
    if diag {
        s.push_str(",val_reasoning_auc,val_convergence_delta,gating_alpha");
    }
    s.push('\n');
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for r in rows {
        s.push_str(&format!(
            "{},{:.6},{},{},{:.6e}",
            r.epoch,
            r.train_loss,
            o(r.val_loss),
            o(r.val_auc),
            r.lr,
        ));
        if diag {
            s.push_str(&format!(
                ",{},{},{}",
                o(r.val_reasoning_auc),
                o(r.val_convergence_delta),
                o(r.gating_alpha)
            ));
        }
        s.push('\n');
    }
    let path = dir.join(HISTORY);
    std::fs::write(&path, s).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One item of `scores.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub item: String,
    pub role: Role,
    pub label: u8,
    pub source: String,
    pub logit: f64,
}

pub fn read_scores(dir: &Path) -> Result<Vec<ScoreRow>, String> {
    super::read_rows(&dir.join(SCORES), "scores")
}

pub fn write_scores(dir: &Path, rows: &[ScoreRow]) -> Result<(), String> {
    super::write_records(
        &dir.join(SCORES),
        &["item", "role", "label", "source", "logit"],
        rows.iter().map(|r| {
            [
                r.item.clone(),
                r.role.name().to_string(),
                r.label.to_string(),
                r.source.clone(),
                format!("{:.9}", r.logit),
            ]
        }),
    )
}

/// Normalisation applied to a model's input: `(x/255 - mean) / std` per channel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Norm {
    pub mode: Normalize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Norm {
    /// Pixels scaled to [0, 1] only.
    pub fn unit() -> Norm {
        Norm {
            mode: Normalize::None,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// ImageNet's mean and std (what pretrained torchvision weights expect).
    pub fn imagenet() -> Norm {
        Norm {
            mode: Normalize::ImageNet,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Per-channel `a`, `b` with `x_norm = u8 * a + b`.
    pub fn affine_u8(&self) -> ([f32; 3], [f32; 3]) {
        let mut a = [0.0; 3];
        let mut b = [0.0; 3];
        for c in 0..3 {
            a[c] = 1.0 / (255.0 * self.std[c]);
            b[c] = -self.mean[c] / self.std[c];
        }
        (a, b)
    }
}

/// Items of one role, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    pub real: usize,
    pub fake: usize,
}

/// Items per [`Role`] of the fold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleCounts {
    pub train: ClassCounts,
    pub val: ClassCounts,
    pub test: ClassCounts,
    pub excluded: ClassCounts,
}

impl RoleCounts {
    pub fn get_mut(&mut self, r: Role) -> &mut ClassCounts {
        match r {
            Role::Train => &mut self.train,
            Role::Val => &mut self.val,
            Role::Test => &mut self.test,
            Role::Excluded => &mut self.excluded,
        }
    }
}

/// What loading pretrained weights did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedReport {
    /// The weights file as the pipeline names it (relative to the workspace).
    pub file: String,
    pub loaded: usize,
    /// Head tensors left at their fresh initialisation (shape differs, or absent).
    pub skipped: Vec<String>,
    /// Tensors of the file the model has no use for.
    pub unused: Vec<String>,
    /// Tensors of the model the file lacks, left at their fresh initialisation (only with
    /// `pretrained_strict: false`; otherwise that is an error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// `meta.json` of one fold's model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    /// `Train` or `Retrain`.
    pub kind: String,
    pub fold: u32,
    pub model: Model,
    pub model_name: String,
    /// The stage's params as given (defaults resolved).
    pub params: serde_json::Value,
    /// The effective training parameters (for Retrain: those it fine-tuned with).
    pub train_params: Train,
    pub image_size: usize,
    pub normalize: Norm,
    pub counts: RoleCounts,
    pub epochs: u32,
    pub epochs_run: u32,
    pub stopped_early: bool,
    pub best_epoch: u32,
    pub best_val_auc: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// The rule that picked the best epoch: `val_auc`, `val_loss` or `train_loss`.
    pub selection: String,
    pub selection_note: Option<String>,
    pub balance: String,
    pub optimizer_steps: i64,
    pub device: String,
    pub mixed_precision: bool,
    pub libtorch: String,
    pub pretrained: Option<PretrainedReport>,
    pub seed: u64,
    /// What a kind adds (Retrain: `hard_negatives`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ModelMeta {
    pub fn read(dir: &Path) -> Result<ModelMeta, String> {
        super::read_json(&dir.join(META))
            .map_err(|e| format!("{e} (is {} the output of a Train or Retrain stage?)", dir.display()))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(META), self, true)
    }
}

/// What PyTorch's `sum(p.numel() for p in model.parameters())` counts for the weights in
/// `dir`: every tensor of `model.safetensors` except batch-norm buffers (`running_mean`,
/// `running_var`, `num_batches_tracked`), which are state, not parameters.
pub fn parameter_count(dir: &Path) -> Result<u64, String> {
    let path = dir.join(WEIGHTS);
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: a published artifact is read-only; nothing writes it while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| format!("{}: {e:?}", path.display()))?;
    let buffer = |n: &str| {
        ["running_mean", "running_var", "num_batches_tracked"]
            .iter()
            .any(|b| n.ends_with(b))
    };
    Ok(st
        .tensors()
        .iter()
        .filter(|(n, _)| !buffer(n))
        .map(|(_, t)| t.shape().iter().product::<usize>() as u64)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_skips_batch_norm_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let f32s = |n: usize| vec![0u8; n * 4];
        let (w, b, rm, rv) = (f32s(6), f32s(2), f32s(2), f32s(2));
        let nbt = vec![0u8; 8];
        let view =
            |dt, shape: Vec<usize>, data: &'static [u8]| safetensors::tensor::TensorView::new(dt, shape, data).unwrap();
        let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
        use safetensors::Dtype::{F32, I64};
        let tensors = vec![
            ("conv.weight", view(F32, vec![2, 3], leak(w))),
            ("bn.weight", view(F32, vec![2], leak(b))),
            ("bn.running_mean", view(F32, vec![2], leak(rm))),
            ("bn.running_var", view(F32, vec![2], leak(rv))),
            ("bn.num_batches_tracked", view(I64, vec![1], leak(nbt))),
        ];
        safetensors::serialize_to_file(tensors, &None, &dir.path().join(WEIGHTS)).unwrap();
        assert_eq!(parameter_count(dir.path()).unwrap(), 8);
        assert!(parameter_count(&dir.path().join("missing")).is_err());
    }
}
