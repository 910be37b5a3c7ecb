//! Model stages' configuration: `Train` (one instance per fold), `Retrain` (fine-tune with
//! hard negatives up-weighted), `EnsembleInfer` (out-of-fold, TTA, calibrated). Their
//! execution needs libtorch and runs in `flow-worker` (crate `stages/torch`); this module is
//! what `flow check` and the planner see.
//!
//! ```ron
//! "train": Train(data: "preprocess", split: "split", model: ResNet18, epochs: 6, lr: 1e-4),
//! "retrain": Retrain(models: "train", hard_negatives: "mine", data: "preprocess", split: "split", weight: 5.0, epochs: 2),
//! "infer": EnsembleInfer(models: ["retrain"], data: "preprocess", split: "split", calibration: "calibrate", tta: [Identity, HFlip]),
//! ```
//! Per-fold outputs of Train/Retrain (`out/<p>/train/foldK/`): `model.safetensors` (PyTorch-
//! loadable), `history.csv` (epoch, train_loss, val_loss, val_auc, lr), `meta.json`,
//! `scores.csv` (`item,role,label,source,logit` for every item of the fold: train/val/test).

use flow_engine::{
    key_params_of, Code, ConfigProblem, Defaults, ExecCtx, FanOut, Input, PortType, Resources, StageConfig, StageError,
    StageKind,
};
use serde::{Deserialize, Serialize};

pub use crate::ports::{CALIBRATION, HARD_NEGATIVES, MODELS, PREDICTIONS};
use crate::ports::{SPLIT, TENSORS};

/// Backbones. All end in one logit (P(fake) = sigmoid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Model {
    /// A small conv net: `depth` conv-BN-ReLU-pool blocks starting at `width` channels
    /// (doubling per block), global pooling, one linear logit.
    SimpleCnn {
        #[serde(default = "d_width")]
        width: i64,
        #[serde(default = "d_depth")]
        depth: i64,
        /// Feed the first conv the image *and* its high-pass residual (a fixed 3×3
        /// second-derivative filter per channel, as forensic detectors' SRM/constrained
        /// first layers do), so noise-level evidence is not drowned by content.
        #[serde(default)]
        highpass: bool,
        /// How the last feature map becomes one vector: `Avg` (whole-image evidence) or
        /// `Max` (the strongest local evidence anywhere, for local manipulations).
        #[serde(default)]
        pool: GlobalPool,
    },
    ResNet18,
    ResNet34,
    ResNet50,
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    MobileNetV2,
    /// torchvision `convnext_tiny` (names `features.…`, head `classifier.2`).
    ConvNeXtTiny,
    /// torchvision `mobilenet_v3_small` / `mobilenet_v3_large` (head `classifier.3`).
    MobileNetV3Small,
    MobileNetV3Large,
    /// timm `vit_small_patch16_224` (names `patch_embed.…`, `blocks.<i>.…`, head `head`);
    /// any size divisible by 16 (position embeddings are made for the stage's image size).
    VitS16,
    /// timm `mobilenetv4_conv_small` (names `conv_stem`, `blocks.…`, head `classifier`).
    MobileNetV4ConvSmall,
    /// Seed 003's RADAR: a backbone with boundary and/or frequency evidence, iterative
    /// evidence refinement and gated fusion, trained with its multi-part loss.
    Radar(Radar),
    /// Seed 001's Spotter: EfficientNet with channel + spatial attention and multi-scale
    /// features.
    Spotter(Spotter),
    /// A TorchScript module the user exported from Python (`torch.jit.script`/`trace`),
    /// taking `[N, 3, H, W]` and giving `[N]` or `[N, 1]` logits; trained by flow. Its
    /// content hash is part of the key (a path input).
    TorchScript {
        path: String,
    },
}

/// RADAR (seed 003). Defaults are the seed's `RADARConfig` and loss config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Radar {
    /// The feature extractor: `VitS16` (the seed's), or any other model of this enum but
    /// Radar, Spotter, TorchScript and MobileNetV2 (a CNN's last feature map stands in for the
    /// patch tokens, its pooled vector for the CLS token).
    pub backbone: Box<Model>,
    /// Boundary evidence (BADM: Sobel edges → CNN, plus pooled patch features).
    pub boundary: bool,
    /// Frequency evidence (AADM: high-passed log spectrum → CNN, plus the CLS vector).
    pub frequency: bool,
    pub evidence_dim: i64,
    /// Evidence-refinement rounds (1 = the seed's "no reasoning" ablation).
    pub iterations: i64,
    pub heads: i64,
    /// Side of the (resized) grayscale image whose spectrum AADM reads.
    pub fft_size: i64,
    pub dropout: f64,
    /// Initial α of `α·reasoning + (1−α)·external` (α = sigmoid of a learnable logit).
    pub gating_init: f64,
    pub label_smoothing: f64,
    pub lambda_branch: f64,
    pub lambda_orthogonal: f64,
    pub orthogonality_margin: f64,
    pub lambda_deep_supervision: f64,
}
impl Default for Radar {
    fn default() -> Self {
        Radar {
            backbone: Box::new(Model::VitS16),
            boundary: true,
            frequency: true,
            evidence_dim: 64,
            iterations: 3,
            heads: 4,
            fft_size: 112,
            dropout: 0.1,
            gating_init: 0.5,
            label_smoothing: 0.1,
            lambda_branch: 0.3,
            lambda_orthogonal: 0.1,
            orthogonality_margin: 0.1,
            lambda_deep_supervision: 0.05,
        }
    }
}

/// Spotter (seed 001): EfficientNet-B0/B3 features, channel and spatial attention (always
/// trainable, also with `freeze_backbone`), features of three depths fused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spotter {
    /// `EfficientNetB0` (seed default, 224 px) or `EfficientNetB3` (300 px).
    pub backbone: Box<Model>,
    pub attention: bool,
    /// Fuse the fine (stride 8), mid (stride 16) and semantic (stride 32) feature maps.
    pub multiscale: bool,
    pub dropout: f64,
}
impl Default for Spotter {
    fn default() -> Self {
        Spotter {
            backbone: Box::new(Model::EfficientNetB0),
            attention: true,
            multiscale: true,
            dropout: 0.3,
        }
    }
}

/// A fixed input transform in front of any backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum InputFilter {
    #[default]
    None,
    /// The three fixed 5×5 SRM noise-residual kernels of Fridrich & Kodovský as used by
    /// RGB-N (Zhou et al. 2018): three residual channels replace RGB, so any 3-channel
    /// backbone (and its pretrained first layer) takes them unchanged.
    Srm,
}
impl Radar {
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if !self.backbone.is_feature_backbone() {
            v.push((
                "backbone",
                format!("Radar `backbone` must be a plain backbone, not {:?}", self.backbone),
            ));
        }
        v.extend(self.backbone.problems());
        if !self.boundary && !self.frequency {
            v.push((
                "frequency",
                "Radar needs at least one evidence module: `boundary` or `frequency` must be true".into(),
            ));
        }
        let int = |v: &mut Vec<_>, f: &'static str, x: i64, lo: i64, hi: i64| {
            if !(lo..=hi).contains(&x) {
                v.push((f, format!("Radar `{f}` {x} must be in {lo}..={hi}")));
            }
        };
        int(&mut v, "evidence_dim", self.evidence_dim, 1, 4096);
        int(&mut v, "iterations", self.iterations, 1, 32);
        int(&mut v, "heads", self.heads, 1, 64);
        int(&mut v, "fft_size", self.fft_size, 8, 1024);
        if self.heads >= 1 && self.evidence_dim >= 1 && self.evidence_dim % self.heads != 0 {
            v.push((
                "heads",
                format!(
                    "Radar `heads` {} must divide `evidence_dim` {} (multi-head attention)",
                    self.heads, self.evidence_dim
                ),
            ));
        }
        let unit = |v: &mut Vec<_>, f: &'static str, x: f64, open: bool| {
            let ok = x.is_finite()
                && if open {
                    x > 0.0 && x < 1.0
                } else {
                    (0.0..1.0).contains(&x)
                };
            if !ok {
                let l = if open { "(" } else { "[" };
                v.push((f, format!("Radar `{f}` {x} must be in {l}0, 1)")));
            }
        };
        unit(&mut v, "dropout", self.dropout, false);
        unit(&mut v, "gating_init", self.gating_init, true);
        unit(&mut v, "label_smoothing", self.label_smoothing, false);
        for (f, x) in [
            ("lambda_branch", self.lambda_branch),
            ("lambda_orthogonal", self.lambda_orthogonal),
            ("orthogonality_margin", self.orthogonality_margin),
            ("lambda_deep_supervision", self.lambda_deep_supervision),
        ] {
            if !(x.is_finite() && (0.0..=100.0).contains(&x)) {
                v.push((f, format!("Radar `{f}` {x} must be in [0, 100]")));
            }
        }
        v
    }
}

/// The widest `SimpleCnn` first layer and the most blocks: beyond, a typo, not a model.
pub const SIMPLE_CNN_MAX_WIDTH: i64 = 4096;
pub const SIMPLE_CNN_MAX_DEPTH: i64 = 10;

impl Model {
    /// The layers Grad-CAM can target, shallow to deep, with the library's module names:
    /// the outputs of the last layer at strides 8, 16 and 32 (what `Explain` calls
    /// `layer`; the deepest is the default, and `MultiScale` fuses all three). A ViT has one:
    /// `blocks.11.norm1`, the normalised input of its last block (after the last block only
    /// the CLS token reaches the head, so later patch tokens carry no gradient), its patch
    /// tokens laid out on the 16-px grid. `None`: the model declares none (`MobileNetV2`,
    /// which is `tch::vision`'s closed module, and `TorchScript`, whose layers flow cannot
    /// see). The worker checks its taps against this list, one definition for `flow check`
    /// and the run.
    pub fn cam_layers(&self) -> Option<Vec<String>> {
        let v = |names: &[&str]| Some(names.iter().map(|s| s.to_string()).collect());
        match self {
            Model::SimpleCnn { depth, .. } => {
                let d = (*depth).clamp(1, SIMPLE_CNN_MAX_DEPTH);
                Some(((d - d.min(3))..d).map(|i| format!("features.{i}")).collect())
            }
            Model::ResNet18 | Model::ResNet34 | Model::ResNet50 => v(&["layer2", "layer3", "layer4"]),
            Model::EfficientNetB0 | Model::EfficientNetB1 | Model::EfficientNetB2 | Model::EfficientNetB3 => {
                v(&["features.3", "features.5", "features.8"])
            }
            Model::ConvNeXtTiny => v(&["features.3", "features.5", "features.7"]),
            Model::MobileNetV3Small => v(&["features.3", "features.8", "features.12"]),
            Model::MobileNetV3Large => v(&["features.6", "features.12", "features.16"]),
            Model::MobileNetV4ConvSmall => v(&["blocks.1", "blocks.2", "blocks.4"]),
            Model::VitS16 => v(&["blocks.11.norm1"]),
            Model::Radar(Radar { backbone, .. }) | Model::Spotter(Spotter { backbone, .. }) => backbone
                .cam_layers()
                .map(|l| l.into_iter().map(|n| format!("backbone.{n}")).collect()),
            Model::MobileNetV2 | Model::TorchScript { .. } => None,
        }
    }
}

impl Model {
    /// What is wrong with the model's own params (the worker builds only models without
    /// problems; `flow check` reports the same).
    /// Each names the param (`width`) and says what is wrong.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        match self {
            Model::SimpleCnn { width, depth, .. } => {
                let mut v = Vec::new();
                if !(1..=SIMPLE_CNN_MAX_WIDTH).contains(width) {
                    v.push((
                        "width",
                        format!("SimpleCnn `width` {width} must be in 1..={SIMPLE_CNN_MAX_WIDTH}"),
                    ));
                }
                if !(1..=SIMPLE_CNN_MAX_DEPTH).contains(depth) {
                    v.push((
                        "depth",
                        format!("SimpleCnn `depth` {depth} must be in 1..={SIMPLE_CNN_MAX_DEPTH}"),
                    ));
                }
                v
            }
            Model::Radar(r) => r.problems(),
            Model::Spotter(s) => {
                let mut v = Vec::new();
                if !matches!(
                    *s.backbone,
                    Model::EfficientNetB0 | Model::EfficientNetB1 | Model::EfficientNetB2 | Model::EfficientNetB3
                ) {
                    v.push((
                        "backbone",
                        format!("Spotter `backbone` must be EfficientNetB0..B3, not {:?}", s.backbone),
                    ));
                }
                if !(0.0..1.0).contains(&s.dropout) {
                    v.push(("dropout", format!("Spotter `dropout` {} must be in [0, 1)", s.dropout)));
                }
                v
            }
            Model::TorchScript { path } if path.trim().is_empty() => {
                vec![("path", "TorchScript `path` is empty".to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// Whether the model can be a Radar backbone (flow builds it as a feature extractor).
    pub fn is_feature_backbone(&self) -> bool {
        !matches!(
            self,
            Model::Radar(_) | Model::Spotter(_) | Model::TorchScript { .. } | Model::MobileNetV2
        )
    }

    /// The workspace file the model itself is (a TorchScript module), if any.
    pub fn module_file(&self) -> Option<&str> {
        match self {
            Model::TorchScript { path } => Some(path),
            _ => None,
        }
    }

    /// Why the model cannot take `size`-pixel images, if it cannot.
    pub fn size_problem(&self, size: u64) -> Option<String> {
        match self {
            // Stem ÷4, then three ÷2 downsampling layers with 2×2 kernels.
            Model::ConvNeXtTiny if size < 32 => Some(format!(
                "ConvNeXtTiny downsamples by 32 (a 4-pixel stem, three 2×2 stride-2 layers): {size}-pixel images are too small, use 32 or more"
            )),
            Model::VitS16 if size % 16 != 0 || size == 0 => Some(format!(
                "VitS16 cuts images into 16-pixel patches: {size} is not a multiple of 16"
            )),
            Model::Radar(r) => r.backbone.size_problem(size).or_else(|| {
                (r.frequency && size < 8)
                    .then(|| format!("Radar frequency evidence needs images of 8 px or more, not {size}"))
            }),
            Model::Spotter(s) if s.multiscale && size < 32 => Some(format!(
                "Spotter's multi-scale features need images of 32 px or more (stride 32), not {size}"
            )),
            Model::SimpleCnn { depth, .. } if (1..=SIMPLE_CNN_MAX_DEPTH).contains(depth) && size >> depth == 0 => {
                Some(format!(
                    "SimpleCnn depth {depth} halves {size}-pixel images {depth} times, below 1 pixel: use depth ≤ {}",
                    (size.max(1) as f64).log2().floor()
                ))
            }
            _ => None,
        }
    }
}

/// Training batches beyond this are a typo (and an allocation failure).
pub const MAX_BATCH_SIZE: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum GlobalPool {
    #[default]
    Avg,
    Max,
}

fn d_width() -> i64 {
    16
}
fn d_depth() -> i64 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Schedule {
    /// Linear warm-up then cosine decay to 0.
    Cosine {
        warmup_epochs: f64,
    },
    /// One-cycle: up to `lr` over `pct_start` of the steps, then cosine down.
    OneCycle {
        pct_start: f64,
    },
    Constant,
}
impl Default for Schedule {
    fn default() -> Self {
        Schedule::Cosine { warmup_epochs: 0.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub enum Loss {
    /// Binary cross-entropy on the logit.
    #[default]
    Bce,
    /// Focal loss.
    Focal { gamma: f64 },
}

/// On-the-fly augmentations: each a probability (0 = off) plus strength.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    pub hflip: f64,
    pub vflip: f64,
    /// Probability of a rotation up to ±`rotation_degrees`.
    pub rotation: f64,
    pub rotation_degrees: f64,
    /// Probability of brightness/contrast/saturation jitter of ±`jitter_strength`.
    pub color_jitter: f64,
    pub jitter_strength: f64,
    pub grayscale: f64,
    /// Probability of a 3×3 Gaussian blur.
    pub blur: f64,
    /// Probability of additive Gaussian noise of std `noise_std` (in [0,1] pixel units).
    pub noise: f64,
    pub noise_std: f64,
    /// Probability of JPEG re-compression at quality `jpeg_quality`.
    pub jpeg: f64,
    pub jpeg_quality: u8,
    /// Probability of erasing a random rectangle (random erasing).
    pub erase: f64,
}
impl Default for Augment {
    fn default() -> Self {
        Augment {
            hflip: 0.5,
            vflip: 0.0,
            rotation: 0.0,
            rotation_degrees: 10.0,
            color_jitter: 0.0,
            jitter_strength: 0.2,
            grayscale: 0.0,
            blur: 0.0,
            noise: 0.0,
            noise_std: 0.04,
            jpeg: 0.0,
            jpeg_quality: 75,
            erase: 0.0,
        }
    }
}

/// Where training runs. Not part of the key (same result on any device up to float noise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

fn d_lr() -> f64 {
    1e-3
}
fn d_wd() -> f64 {
    1e-4
}
fn d_bs() -> usize {
    32
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}
fn is_none_filter(f: &InputFilter) -> bool {
    *f == InputFilter::None
}
fn d_one() -> u32 {
    1
}

/// Training hyper-parameters shared by Train and Retrain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub data: String,
    pub split: String,
    pub model: Model,
    pub epochs: u32,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_bs")]
    pub batch_size: usize,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Gradient accumulation steps.
    #[serde(default = "d_one")]
    pub accumulate: u32,
    /// Early stopping on validation AUC after this many epochs without improvement.
    #[serde(default)]
    pub patience: Option<u32>,
    #[serde(default)]
    pub loss: Loss,
    /// Sample classes equally often (weighted sampling).
    #[serde(default)]
    pub balance: bool,
    #[serde(default)]
    pub augment: Augment,
    /// Initial weights: a `.safetensors` file of the workspace with torchvision names.
    #[serde(default)]
    pub pretrained: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// bf16/f16 autocast on CUDA.
    #[serde(default)]
    pub mixed_precision: bool,
    /// Train only the heads (and Radar's evidence/reasoning, Spotter's attention modules):
    /// the backbone's weights stay as loaded (its batch-norm running statistics still update
    /// in training mode, as with PyTorch's `requires_grad_(False)`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze_backbone: bool,
    /// `false`: `pretrained` weights may miss or add tensors (PyTorch's `strict=False`);
    /// what was missing and unused is listed in `meta.json`. Shapes must still agree.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pretrained_strict: bool,
    /// A fixed transform of the (normalised) input in front of the model.
    #[serde(default, skip_serializing_if = "is_none_filter")]
    pub input_filter: InputFilter,
    #[serde(default)]
    pub device: Device,
}

// 2: no timings or thread counts in history.csv / meta.json / infer.json.
// 3: EfficientNets built as torchvision builds them (padding, batch-norm eps, stochastic depth).
inventory::submit! { crate::Kind(|| StageKind::new::<Train>("Train", 3, "train a binary detector per fold (libtorch)")) }

pub(crate) fn torch_env() -> Vec<(String, String)> {
    let info = crate::worker::worker_info();
    vec![(
        "libtorch".into(),
        info.libtorch_version.clone().unwrap_or_else(|| "unavailable".into()),
    )]
}

/// A libtorch stage's resources: the threads it is given, and a GPU unless it runs on the CPU.
pub(crate) fn torch_resources(device: Device) -> Resources {
    Resources {
        threads: 0,
        gpu: device != Device::Cpu,
    }
}

/// Train and Retrain: one instance per fold of the `split` stage.
pub(crate) fn per_fold(split: &str) -> FanOut {
    FanOut::PerFold {
        split: split.to_string(),
    }
}

/// The most epochs a training stage may ask for, and the most accumulation steps.
pub const MAX_EPOCHS: u32 = 100_000;
pub const MAX_ACCUMULATE: u32 = 65_536;

/// Range checks for params, each pointing at its field. Floats must be finite: NaN and
/// infinity have no JSON form (they would reach the worker, and the key, as `null`).
pub(crate) struct Checks(pub Vec<ConfigProblem>);

impl Checks {
    pub fn new() -> Checks {
        Checks(Vec::new())
    }
    fn push(&mut self, field: &str, message: String) {
        self.0.push(ConfigProblem {
            code: Code::InvalidValue,
            message,
            needle: Some(format!("{field}:")),
            help: None,
        });
    }
    /// `lo <= v <= hi` (`open_lo`: `lo < v`), and finite.
    pub fn float(&mut self, field: &str, v: f64, lo: f64, hi: f64, open_lo: bool) {
        let ok = v.is_finite() && (if open_lo { v > lo } else { v >= lo }) && v <= hi;
        if !ok {
            let l = if open_lo { "(" } else { "[" };
            self.push(field, format!("`{field}` {v} must be a number in {l}{lo}, {hi}]"));
        }
    }
    pub fn prob(&mut self, field: &str, v: f64) {
        self.float(field, v, 0.0, 1.0, false);
    }
    pub fn int(&mut self, field: &str, v: u64, lo: u64, hi: u64) {
        if !(lo..=hi).contains(&v) {
            self.push(field, format!("`{field}` {v} must be in {lo}..={hi}"));
        }
    }
}

impl Augment {
    fn check(&self, c: &mut Checks) {
        for (f, v) in [
            ("hflip", self.hflip),
            ("vflip", self.vflip),
            ("rotation", self.rotation),
            ("color_jitter", self.color_jitter),
            ("grayscale", self.grayscale),
            ("blur", self.blur),
            ("noise", self.noise),
            ("jpeg", self.jpeg),
            ("erase", self.erase),
        ] {
            c.prob(f, v);
        }
        c.float("rotation_degrees", self.rotation_degrees, 0.0, 180.0, false);
        c.float("jitter_strength", self.jitter_strength, 0.0, 1.0, false);
        c.float("noise_std", self.noise_std, 0.0, 1.0, false);
        c.int("jpeg_quality", u64::from(self.jpeg_quality), 1, 100);
    }
}

fn train_problems(t: &Train) -> Vec<ConfigProblem> {
    let mut c = Checks::new();
    c.int("epochs", u64::from(t.epochs), 1, u64::from(MAX_EPOCHS));
    c.float("lr", t.lr, 0.0, 10.0, true);
    c.float("weight_decay", t.weight_decay, 0.0, 10.0, false);
    c.int("batch_size", t.batch_size as u64, 1, MAX_BATCH_SIZE as u64);
    c.int("accumulate", u64::from(t.accumulate), 1, u64::from(MAX_ACCUMULATE));
    match t.schedule {
        Schedule::Cosine { warmup_epochs } => c.float("warmup_epochs", warmup_epochs, 0.0, f64::from(t.epochs), false),
        Schedule::OneCycle { pct_start } => c.float("pct_start", pct_start, 0.0, 1.0, true),
        Schedule::Constant => {}
    }
    if let Some(g) = t.grad_clip {
        c.float("grad_clip", g, 0.0, 1e6, true);
    }
    if let Loss::Focal { gamma } = t.loss {
        c.float("gamma", gamma, 0.0, 100.0, false);
    }
    t.augment.check(&mut c);
    for (field, m) in t.model.problems() {
        c.push(field, m);
    }
    if matches!(t.model, Model::Radar(_)) && t.loss != Loss::Bce {
        c.push(
            "loss",
            "Radar trains with its own multi-part loss (label-smoothed BCE + branch, orthogonality and deep supervision terms): leave `loss` at Bce".into(),
        );
    }
    if t.freeze_backbone && matches!(t.model, Model::TorchScript { .. }) {
        c.push(
            "freeze_backbone",
            "`freeze_backbone` needs a model whose backbone flow knows, and a TorchScript module is opaque to flow: not supported for TorchScript".into(),
        );
    }
    c.0
}

impl StageConfig for Train {
    fn inputs(&self) -> Vec<Input> {
        let mut v = vec![
            Input::stage("data", self.data.clone(), &[TENSORS]),
            Input::stage("split", self.split.clone(), &[SPLIT]),
        ];
        if let Some(w) = &self.pretrained {
            v.push(Input::path("pretrained", w.clone()));
        }
        if let Some(m) = self.model.module_file() {
            v.push(Input::path("module", m.to_string()));
        }
        v
    }
    fn output(&self) -> PortType {
        MODELS
    }
    fn fan_out(&self) -> FanOut {
        per_fold(&self.split)
    }
    /// The model, for consumers that depend on its kind (Explain's Grad-CAM layers).
    fn output_facts(&self) -> serde_json::Value {
        serde_json::json!({ "model": self.model })
    }
    fn resolve_defaults(&mut self, d: &Defaults) {
        if self.seed.is_none() {
            self.seed = d.u64("seed");
        }
    }
    fn seed_param(&self) -> Option<&'static str> {
        Some("seed")
    }
    fn key_params(&self) -> serde_json::Value {
        // A TorchScript `path` is a path input (its content is in the key), not a param.
        let mut v = key_params_of(self, &["data", "split", "pretrained", "device"]);
        if let Some(ts) = v.pointer_mut("/model/TorchScript") {
            *ts = serde_json::json!({});
        }
        v
    }
    fn env_facts(&self) -> Vec<(String, String)> {
        torch_env()
    }
    fn resources(&self) -> Resources {
        torch_resources(self.device)
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        train_problems(self)
    }
    fn validate_inputs(&self, inputs: &[(String, serde_json::Value)]) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        for (_, facts) in inputs.iter().filter(|(port, _)| port == "data") {
            let Some(size) = facts["image_size"].as_u64() else {
                continue;
            };
            if let Some(m) = self.model.size_problem(size) {
                let needle = match &self.model {
                    Model::SimpleCnn { .. } => "depth:",
                    _ => "model:",
                };
                v.push(ConfigProblem {
                    code: Code::InvalidValue,
                    message: format!("{m} (`{}` makes {size}-pixel images)", self.data),
                    needle: Some(needle.into()),
                    help: None,
                });
            }
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        crate::worker::run_in_worker("Train", self, ctx)
    }
}

fn d_weight() -> f64 {
    5.0
}
fn d_re_epochs() -> u32 {
    2
}
fn d_re_lr() -> f64 {
    1e-4
}

/// Fine-tune each fold's model with the mined hard negatives up-weighted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retrain {
    pub models: String,
    pub hard_negatives: String,
    pub data: String,
    pub split: String,
    /// Sample weight of a hard negative (others: 1).
    #[serde(default = "d_weight")]
    pub weight: f64,
    #[serde(default = "d_re_epochs")]
    pub epochs: u32,
    #[serde(default = "d_re_lr")]
    pub lr: f64,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub augment: Option<Augment>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub device: Device,
}

// 2: no timings or thread counts in history.csv / meta.json / infer.json.
// 3: EfficientNets built as torchvision builds them (padding, batch-norm eps, stochastic depth).
inventory::submit! { crate::Kind(|| StageKind::new::<Retrain>("Retrain", 3, "fine-tune per fold with hard negatives up-weighted (libtorch)")) }

impl StageConfig for Retrain {
    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("models", self.models.clone(), &[MODELS]),
            Input::stage("hard_negatives", self.hard_negatives.clone(), &[HARD_NEGATIVES]),
            Input::stage("data", self.data.clone(), &[TENSORS]),
            Input::stage("split", self.split.clone(), &[SPLIT]),
        ]
    }
    fn output(&self) -> PortType {
        MODELS
    }
    fn fan_out(&self) -> FanOut {
        per_fold(&self.split)
    }
    fn resolve_defaults(&mut self, d: &Defaults) {
        if self.seed.is_none() {
            self.seed = d.u64("seed");
        }
    }
    fn seed_param(&self) -> Option<&'static str> {
        Some("seed")
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["models", "hard_negatives", "data", "split", "device"])
    }
    fn env_facts(&self) -> Vec<(String, String)> {
        torch_env()
    }
    fn resources(&self) -> Resources {
        torch_resources(self.device)
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut c = Checks::new();
        c.int("epochs", u64::from(self.epochs), 1, u64::from(MAX_EPOCHS));
        c.float("weight", self.weight, 0.0, 1e6, true);
        c.float("lr", self.lr, 0.0, 10.0, true);
        if let Some(b) = self.batch_size {
            c.int("batch_size", b as u64, 1, MAX_BATCH_SIZE as u64);
        }
        if let Some(a) = &self.augment {
            a.check(&mut c);
        }
        c.0
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        crate::worker::run_in_worker("Retrain", self, ctx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Tta {
    Identity,
    HFlip,
    VFlip,
    HVFlip,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Aggregate {
    /// Mean of member probabilities.
    #[default]
    Mean,
    Max,
    /// Mean of temperature-scaled probabilities (needs `calibration`).
    CalibratedMean,
}

/// A fast model first; the ensemble only scores items it puts above `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cascade {
    pub fast: String,
    pub threshold: f64,
}

fn d_tta() -> Vec<Tta> {
    vec![Tta::Identity]
}

/// Out-of-fold ensemble predictions: each item scored by the models of the fold that held it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleInfer {
    /// Per-fold model stages (Train/Retrain), each a member of the ensemble.
    pub models: Vec<String>,
    pub data: String,
    pub split: String,
    #[serde(default)]
    pub calibration: Option<String>,
    #[serde(default = "d_tta")]
    pub tta: Vec<Tta>,
    #[serde(default)]
    pub aggregate: Aggregate,
    #[serde(default)]
    pub cascade: Option<Cascade>,
    #[serde(default = "d_bs")]
    pub batch_size: usize,
    #[serde(default)]
    pub device: Device,
}

// 2: no timings or thread counts in history.csv / meta.json / infer.json.
// 3: EfficientNets built as torchvision builds them (padding, batch-norm eps, stochastic depth).
inventory::submit! { crate::Kind(|| StageKind::new::<EnsembleInfer>("EnsembleInfer", 3, "out-of-fold ensemble predictions with TTA (libtorch)")) }

impl StageConfig for EnsembleInfer {
    fn inputs(&self) -> Vec<Input> {
        let mut v: Vec<Input> = self
            .models
            .iter()
            .map(|m| Input::stage("models", m.clone(), &[MODELS]))
            .collect();
        v.push(Input::stage("data", self.data.clone(), &[TENSORS]));
        v.push(Input::stage("split", self.split.clone(), &[SPLIT]));
        if let Some(c) = &self.calibration {
            v.push(Input::stage("calibration", c.clone(), &[CALIBRATION]));
        }
        if let Some(c) = &self.cascade {
            v.push(Input::stage("fast", c.fast.clone(), &[MODELS]));
        }
        v
    }
    fn output(&self) -> PortType {
        PREDICTIONS
    }
    fn key_params(&self) -> serde_json::Value {
        // `models` stays: member names are the prediction columns' names (output content).
        key_params_of(self, &["data", "split", "calibration", "device"])
    }
    fn env_facts(&self) -> Vec<(String, String)> {
        torch_env()
    }
    fn resources(&self) -> Resources {
        torch_resources(self.device)
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        if self.models.is_empty() {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`models` names no stage".into(),
                needle: None,
                help: None,
            });
        }
        if self.tta.is_empty() {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`tta` is empty (use [Identity])".into(),
                needle: None,
                help: None,
            });
        }
        let mut c = Checks::new();
        c.int("batch_size", self.batch_size as u64, 1, MAX_BATCH_SIZE as u64);
        if let Some(k) = &self.cascade {
            c.prob("threshold", k.threshold);
        }
        v.extend(c.0);
        if self.aggregate == Aggregate::CalibratedMean && self.calibration.is_none() {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`aggregate: CalibratedMean` needs `calibration`".into(),
                needle: None,
                help: Some("add calibration: \"calibrate\"".into()),
            });
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        crate::worker::run_in_worker("EnsembleInfer", self, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(model: &str) -> Train {
        ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES)
            .from_str(&format!("(data: \"p\", split: \"s\", model: {model}, epochs: 1)"))
            .unwrap()
    }

    #[test]
    fn a_torchscript_module_is_a_path_input_and_not_a_key_param() {
        let a = train("TorchScript(path: \"models/a.pt\")");
        let b = train("TorchScript(path: \"elsewhere/b.pt\")");
        assert_eq!(a.key_params(), b.key_params());
        let module: Vec<_> = a.inputs().into_iter().filter(|i| i.port == "module").collect();
        assert_eq!(module.len(), 1, "the module file is an input: its content is hashed");
        // Other models keep their params in the key.
        assert_ne!(
            train("Radar(iterations: 1)").key_params(),
            train("Radar()").key_params()
        );
    }

    #[test]
    fn new_train_fields_leave_existing_keys_alone() {
        let k = train("ResNet18").key_params();
        for f in ["freeze_backbone", "pretrained_strict", "input_filter"] {
            assert!(k.get(f).is_none(), "{f} at its default must not enter the key: {k}");
        }
        let mut t = train("ResNet18");
        t.freeze_backbone = true;
        assert_eq!(t.key_params()["freeze_backbone"], true);
    }

    #[test]
    fn radar_ablation_switches_are_checked() {
        let bad = |m: &str| {
            train(m)
                .model
                .problems()
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(bad("Radar(boundary: false, frequency: false)"), ["frequency"]);
        assert_eq!(bad("Radar(heads: 3)"), ["heads"]);
        assert_eq!(bad("Radar(backbone: Spotter())"), ["backbone"]);
        assert_eq!(bad("Radar(backbone: MobileNetV2)"), ["backbone"]);
        assert_eq!(bad("Radar(gating_init: 1.0)"), ["gating_init"]);
        assert!(bad("Radar(backbone: SimpleCnn(width: 4, depth: 2), iterations: 5)").is_empty());
        assert!(Model::VitS16.size_problem(64).is_none() && Model::VitS16.size_problem(60).is_some());
        assert!(Model::ConvNeXtTiny.size_problem(24).is_some() && Model::ConvNeXtTiny.size_problem(32).is_none());
        assert!(bad("Radar(backbone: ConvNeXtTiny)").is_empty());
        assert!(train("Radar(backbone: ConvNeXtTiny)").model.size_problem(16).is_some());
    }
}
