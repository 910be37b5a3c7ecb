//! Building models ([`build`], [`load_torchscript`]), the [`Detector`] seam every model
//! is trained and scored through, weight files and pretrained weights.
//!
//! Every model ends in one logit. Variable names are the library's whose checkpoints the
//! model loads (the table is `docs/models.md`): torchvision's for ResNet (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, …, head `fc.*`), EfficientNet, MobileNetV2/V3 and ConvNeXt
//! (`features.…`, heads `classifier.*`); timm's for ViT-S/16 and MobileNetV4 (`blocks.…`);
//! `backbone.…` plus the modules' own names for Radar and Spotter; a TorchScript module's
//! own. SimpleCnn: `features.<i>.conv.weight`, `features.<i>.bn.*`, head `fc.*`.
//!
//! `model.safetensors` holds every variable (f32, CPU) plus a `num_batches_tracked` (i64
//! scalar) per batch-norm layer, so it loads into the matching torchvision/timm model with
//! `strict=True`, e.g. `torchvision.models.resnet18(num_classes=1)`.
//!
//! # Pretrained weights
//!
//! `Train(pretrained: "weights/resnet18.safetensors")` loads a `.safetensors` file of
//! torchvision-named tensors by name. The classifier head (`fc.*` / `classifier.1.*`) is
//! skipped when its shape differs (ImageNet's 1000 classes vs our 1 logit) and reported in
//! `meta.json` (`pretrained.skipped`); any other missing tensor or shape mismatch is an error
//! listing the names. `num_batches_tracked` entries are ignored; other unused tensors are
//! listed in `meta.json` (`pretrained.unused`).
//!
//! To make such a file from a torchvision or timm checkpoint, run
//! `stages/torch/convert_weights.py` (in any Python with torch and safetensors), e.g.
//! `python stages/torch/convert_weights.py torchvision resnet18 weights/resnet18.safetensors`;
//! at its core it is:
//!
//! ```python
//! import torchvision
//! from safetensors.torch import save_file
//! m = torchvision.models.resnet18(weights="IMAGENET1K_V1")
//! save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "resnet18.safetensors")
//! ```
//!
//! A timm checkpoint fits the timm-named models (VitS16, MobileNetV4ConvSmall) and those
//! whose names timm shares with torchvision (timm's `resnet18` uses torchvision's names).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use flow_stages::model::{GlobalPool, InputFilter, Model};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use crate::util::{list_some, Context, Res};

/// What a training step needs of a model's forward pass.
pub struct TrainOut {
    /// The final logit, `[N]`.
    pub logit: Tensor,
    /// The model's own per-sample objective, `[N]` (RADAR's multi-part loss); `None`: the
    /// stage's `loss` (BCE, focal) applies to `logit`.
    pub loss: Option<Tensor>,
}

/// A binary detector. Contract: every method is a pure function of the input and the
/// variables in the net's `VarStore` (plus dropout/batch-norm mode from `train`); fixed
/// filters (high-pass, SRM, Sobel) are constants, never variables.
pub trait Detector: Send {
    /// Final logits `[N]` of a normalised batch `[N, 3, H, W]`.
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor;
    /// The training forward pass (train mode) with targets `y` (`[N]`, 0/1, f32).
    fn train_forward(&self, xs: &Tensor, _y: &Tensor) -> TrainOut {
        TrainOut {
            logit: self.logit(xs, true),
            loss: None,
        }
    }
    /// Named per-item diagnostics in eval mode, each `[N]` (RADAR: `reasoning_logit`,
    /// `convergence_delta`). Validation reports them; none by default.
    fn probes(&self, _xs: &Tensor) -> Vec<(&'static str, Tensor)> {
        Vec::new()
    }
    /// Named scalars of the model as it stands (RADAR: `gating_alpha`); none by default.
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// Writes the complete module to `path` when the var store does not hold all of its
    /// state (TorchScript: parameters *and* buffers); `Ok(false)` for every other model.
    fn save_module(&self, _path: &Path) -> Res<bool> {
        Ok(false)
    }
    /// The model's own spatial attention in eval mode, `[N, 1, h, w]` in `[0, 1]` (Spotter's
    /// spatial attention), for explanations; `None` for models without one.
    fn attention(&self, _xs: &Tensor) -> Option<Tensor> {
        None
    }
}

/// The TorchScript module file a models directory holds next to `model.safetensors`.
pub const MODULE_FILE: &str = "module.pt";

/// A user's TorchScript module. libtorch's module object keeps the train/eval mode, so it
/// sits behind a mutex with the mode it is in.
struct Script {
    m: std::sync::Mutex<(tch::CModule, bool)>,
}

impl Detector for Script {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut g = self.m.lock().unwrap_or_else(|e| e.into_inner());
        if g.1 != train {
            if train {
                g.0.set_train()
            } else {
                g.0.set_eval()
            }
            g.1 = train;
        }
        match g.0.forward_ts(&[xs]) {
            Ok(t) => t.view([-1]),
            // Shapes were checked at load; what remains is a bug in the user's module.
            Err(e) => panic!("the TorchScript module failed: {e}"),
        }
    }
    fn save_module(&self, path: &Path) -> Res<bool> {
        let g = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = path.with_extension("tmp.pt");
        g.0.save(&tmp).ctx(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).ctx(|| format!("cannot rename {}", tmp.display()))?;
        Ok(true)
    }
}

/// Loads a TorchScript module (`torch.jit.save` of a scripted or traced `nn.Module`) for
/// training: its parameters become the var store's variables under their PyTorch names
/// (shared storage: the optimiser updates the module itself). The module must map
/// `[N, 3, size, size]` to `[N]` or `[N, 1]`; that is checked here on a small batch.
pub fn load_torchscript(path: &Path, device: Device, size: usize) -> Res<Net> {
    if path.is_dir() {
        return Err(format!(
            "TorchScript path {} is a directory, not a module file",
            path.display()
        ));
    }
    if !path.is_file() {
        return Err(format!("TorchScript file {} does not exist", path.display()));
    }
    let m = tch::CModule::load_on_device(path, device).map_err(|e| {
        format!(
            "cannot load {} as a TorchScript module ({}); make it with torch.jit.save(torch.jit.script(model), path)",
            path.display(),
            first_line(&e.to_string())
        )
    })?;
    let vs = nn::VarStore::new(device);
    let params = m
        .named_parameters()
        .ctx(|| format!("cannot read the parameters of {}", path.display()))?;
    if params.is_empty() {
        return Err(format!(
            "TorchScript module {} has no parameters to train",
            path.display()
        ));
    }
    for (name, t) in params {
        let parts: Vec<&str> = name.split('.').collect();
        let (last, dirs) = parts.split_last().expect("split gives one part");
        let mut q = vs.root();
        for d in dirs {
            q = q / *d;
        }
        let trainable = t.requires_grad();
        let _ = q.add(last, t, trainable);
    }
    let script = Script {
        m: std::sync::Mutex::new((m, false)),
    };
    let probe = Tensor::zeros([2, 3, size as i64, size as i64], (tch::Kind::Float, device));
    let out = tch::no_grad(|| {
        let mut g = script.m.lock().unwrap_or_else(|e| e.into_inner());
        g.0.set_eval();
        g.0.forward_ts(&[&probe])
    })
    .map_err(|e| {
        format!(
            "TorchScript module {} fails on a [2, 3, {size}, {size}] batch: {}",
            path.display(),
            first_line(&e.to_string())
        )
    })?;
    let shape = out.size();
    if !(shape == [2] || shape == [2, 1]) {
        return Err(format!(
            "TorchScript module {} gives {shape:?} for a [2, 3, {size}, {size}] batch; flow needs one logit per image ([2] or [2, 1])",
            path.display()
        ));
    }
    Ok(Net {
        vs,
        module: Box::new(script),
        head: Vec::new(),
        backbone_prefix: None,
        frozen: 0,
        tap: None,
    })
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

/// A tch module ending in `[N, 1]` logits as a [`Detector`].
pub struct Plain<M: ModuleT + Send>(pub M);

impl<M: ModuleT + Send> Detector for Plain<M> {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        self.0.forward_t(xs, train).view([-1])
    }
}

/// A built model: its variables and its forward function.
pub struct Net {
    pub vs: nn::VarStore,
    pub module: Box<dyn Detector>,
    /// Names of the final classifier's variables.
    pub head: Vec<String>,
    /// Whether a variable belongs to the backbone (what `freeze_backbone` freezes): for
    /// plain classifiers every variable but the head; for Radar and Spotter those under
    /// `backbone.`.
    pub backbone_prefix: Option<String>,
    /// How many tensors `freeze_backbone` froze.
    pub frozen: usize,
    /// Where the backbone leaves its Grad-CAM activations (`Model::cam_layers`); `None` for
    /// the models that declare none.
    pub tap: Option<crate::backbones::TapHandle>,
}

impl Net {
    /// Final logits `[N, 1]` (eval or train mode).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        self.module.logit(xs, train).view([-1, 1])
    }
    /// The same net with its detector wrapped (an input filter in front of it).
    pub fn wrap(self, f: impl FnOnce(Box<dyn Detector>) -> Box<dyn Detector>) -> Net {
        Net {
            module: f(self.module),
            ..self
        }
    }
    /// Whether variable `name` is part of the backbone.
    pub fn is_backbone(&self, name: &str) -> bool {
        match &self.backbone_prefix {
            Some(p) => name.starts_with(p.as_str()),
            None => !self.head.iter().any(|h| h == name),
        }
    }
    /// Stops gradients to the backbone's variables (the optimiser then skips them).
    /// Returns how many tensors were frozen.
    pub fn freeze_backbone(&mut self) -> usize {
        let mut n = 0;
        for (name, t) in named(&self.vs) {
            if self.is_backbone(&name) {
                let _ = t.set_requires_grad(false);
                n += 1;
            }
        }
        self.frozen = n;
        n
    }
}

pub fn model_name(m: &Model) -> String {
    match m {
        Model::SimpleCnn {
            width,
            depth,
            highpass,
            pool,
        } => format!("SimpleCnn(width: {width}, depth: {depth}, highpass: {highpass}, pool: {pool:?})"),
        other => format!("{other:?}"),
    }
}

/// Builds `model` on `device` for `size`-pixel inputs, with fresh (random) weights from
/// libtorch's current seed. Batch-norm scales start at 1 (torchvision's init; tch's default
/// is uniform(0, 1)).
pub fn build(model: &Model, device: Device, size: usize) -> Res<Net> {
    // The same rules `flow check` applies (one definition, in flow-stages).
    if let Some(p) = model
        .problems()
        .into_iter()
        .map(|(_, m)| m)
        .next()
        .or_else(|| model.size_problem(size as u64))
    {
        return Err(p);
    }
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let size_i = size as i64;
    let backbone_of = |m: &Model| -> Res<(Box<dyn crate::backbones::Backbone>, crate::backbones::TapHandle)> {
        let b: Box<dyn crate::backbones::Backbone> = match m {
            Model::SimpleCnn {
                width, depth, highpass, ..
            } => Box::new(simple_cnn_backbone(
                &(&root / "backbone"),
                *width,
                *depth,
                *highpass,
                device,
            )),
            other => crate::backbones::backbone(&(&root / "backbone"), other, size_i)?,
        };
        Ok(crate::backbones::tapped(b))
    };
    let classified = |c: crate::backbones::Classifier| (c.module, c.head, None, Some(c.tap));
    type Parts = (
        Box<dyn Detector>,
        Vec<String>,
        Option<String>,
        Option<crate::backbones::TapHandle>,
    );
    let (module, head, backbone_prefix, tap): Parts = match model {
        Model::SimpleCnn {
            width,
            depth,
            highpass,
            pool,
        } => classified(simple_cnn(&root, *width, *depth, *highpass, *pool, device)),
        // flow's ResNet (torchvision's names; the same variables, initialisers and creation
        // order as `tch::vision::resnet`, so the same seed gives the same weights), for its taps.
        Model::ResNet18 | Model::ResNet34 | Model::ResNet50 => {
            let depth = match model {
                Model::ResNet18 => crate::backbones::resnet::Depth::R18,
                Model::ResNet34 => crate::backbones::resnet::Depth::R34,
                _ => crate::backbones::resnet::Depth::R50,
            };
            let body = crate::backbones::resnet::ResNet::tch_order(&root, depth);
            let fc = nn::linear(
                &root / "fc",
                crate::backbones::Backbone::pooled_dim(&body),
                1,
                Default::default(),
            );
            classified(crate::backbones::Classifier::with_head(
                Box::new(body),
                Box::new(move |v, _| v.apply(&fc)),
                head_names("fc"),
            ))
        }
        Model::MobileNetV2 => {
            let (m, h, b) = plain(tch::vision::mobilenet::v2(&root, 1), "classifier.1");
            (m, h, b, None)
        }
        // EfficientNets are flow's own (torchvision's padding, batch-norm eps and stochastic
        // depth: tch::vision's differ, so converted weights would not reproduce torchvision).
        Model::EfficientNetB0
        | Model::EfficientNetB1
        | Model::EfficientNetB2
        | Model::EfficientNetB3
        | Model::ConvNeXtTiny
        | Model::MobileNetV3Small
        | Model::MobileNetV3Large
        | Model::VitS16
        | Model::MobileNetV4ConvSmall => classified(crate::backbones::classifier(&root, model, size_i)?),
        Model::Radar(cfg) => {
            let (b, tap) = backbone_of(&cfg.backbone)?;
            let m = crate::forensic::radar(&root, cfg, b, size_i)?;
            (m, Vec::new(), Some("backbone.".to_string()), Some(tap))
        }
        Model::Spotter(cfg) => {
            let (b, tap) = backbone_of(&cfg.backbone)?;
            let m = crate::forensic::spotter(&root, cfg, b, size_i)?;
            (m, Vec::new(), Some("backbone.".to_string()), Some(tap))
        }
        Model::TorchScript { .. } => {
            return Err("a TorchScript model is loaded from its file (nets::load_torchscript), not built".into())
        }
    };
    init_batch_norm(&vs);
    Ok(Net {
        vs,
        module,
        head,
        backbone_prefix,
        frozen: 0,
        tap,
    })
}

fn head_names(prefix: &str) -> Vec<String> {
    vec![format!("{prefix}.weight"), format!("{prefix}.bias")]
}

fn plain<M: ModuleT + Send + 'static>(m: M, head: &str) -> (Box<dyn Detector>, Vec<String>, Option<String>) {
    (Box::new(Plain(m)), head_names(head), None)
}

/// Batch-norm scales to 1, as PyTorch initialises them (tch's default is uniform(0, 1)).
pub(crate) fn init_batch_norm(vs: &nn::VarStore) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for name in vars.keys() {
            if let Some(prefix) = name.strip_suffix(".running_mean") {
                if let Some(w) = vars.get(&format!("{prefix}.weight")) {
                    let _ = w.shallow_clone().fill_(1.0);
                }
            }
        }
    });
}

/// A model behind a fixed input transform (`input_filter`).
struct Filtered {
    inner: Box<dyn Detector>,
    filter: InputFilter,
    kernel: Tensor,
}

impl Filtered {
    fn apply(&self, xs: &Tensor) -> Tensor {
        match self.filter {
            InputFilter::None => xs.shallow_clone(),
            InputFilter::Srm => crate::forensic::srm::apply_srm(xs, &self.kernel),
        }
    }
}

impl Detector for Filtered {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        self.inner.logit(&self.apply(xs), train)
    }
    fn train_forward(&self, xs: &Tensor, y: &Tensor) -> TrainOut {
        self.inner.train_forward(&self.apply(xs), y)
    }
    fn probes(&self, xs: &Tensor) -> Vec<(&'static str, Tensor)> {
        self.inner.probes(&self.apply(xs))
    }
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        self.inner.scalars()
    }
    fn save_module(&self, path: &Path) -> Res<bool> {
        self.inner.save_module(path)
    }
    fn attention(&self, xs: &Tensor) -> Option<Tensor> {
        self.inner.attention(&self.apply(xs))
    }
}

/// `net` behind its stage's `input_filter` (unchanged for `None`).
pub fn with_input_filter(net: Net, filter: InputFilter, device: Device) -> Net {
    if filter == InputFilter::None {
        return net;
    }
    let kernel = crate::forensic::srm::srm_kernel(device);
    net.wrap(|inner| Box::new(Filtered { inner, filter, kernel }))
}

/// The fixed high-pass filter of `SimpleCnn(highpass: true)`: a 3×3 second-derivative
/// kernel (SRM's "square 3×3"), applied per channel; zero response to constant and linear
/// ramps, strongest at the Nyquist frequencies where up-sampling fingerprints live.
fn highpass_kernel(device: Device) -> Tensor {
    let k: [f32; 9] = [-1.0, 2.0, -1.0, 2.0, -4.0, 2.0, -1.0, 2.0, -1.0];
    let k: Vec<f32> = k.iter().map(|v| v / 4.0).collect();
    Tensor::from_slice(&k)
        .view([1, 1, 3, 3])
        .repeat([3, 1, 1, 1])
        .to_device(device)
}

/// SimpleCnn's conv blocks under `p / "features"`: `depth` conv-BN-ReLU-maxpool blocks from
/// `width` channels, doubling. Returns the blocks' forward (every block's output) and the
/// channels of each.
fn simple_cnn_blocks(
    p: &nn::Path,
    width: i64,
    depth: i64,
    highpass: bool,
    device: Device,
) -> (impl Fn(&Tensor, bool) -> Vec<Tensor> + Send, Vec<i64>) {
    let mut layers = Vec::new();
    let mut chans = Vec::new();
    let hp = highpass.then(|| highpass_kernel(device));
    let (mut c_in, mut c) = (if highpass { 6 } else { 3 }, width);
    for i in 0..depth {
        let q = p / "features" / i;
        let conv = nn::conv2d(
            &q / "conv",
            c_in,
            c,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(&q / "bn", c, Default::default());
        layers.push((conv, bn));
        chans.push(c);
        c_in = c;
        c *= 2;
    }
    let f = move |xs: &Tensor, train: bool| {
        let mut x = match &hp {
            Some(k) => {
                let r = xs.conv2d(k, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 3);
                Tensor::cat(&[xs.shallow_clone(), r], 1)
            }
            None => xs.shallow_clone(),
        };
        let mut maps = Vec::with_capacity(layers.len());
        for (conv, bn) in &layers {
            x = x.apply(conv).apply_t(bn, train).relu().max_pool2d_default(2);
            maps.push(x.shallow_clone());
        }
        maps
    };
    (f, chans)
}

/// SimpleCnn's classifier: its blocks, `pool` over the last map, `fc`. The backbone's maps
/// (its Grad-CAM taps) are the last three blocks' outputs.
fn simple_cnn(
    p: &nn::Path,
    width: i64,
    depth: i64,
    highpass: bool,
    pool: GlobalPool,
    device: Device,
) -> crate::backbones::Classifier {
    let (blocks, chans) = simple_cnn_blocks(p, width, depth, highpass, device);
    let last = *chans.last().expect("depth >= 1");
    let fc = nn::linear(p / "fc", last, 1, Default::default());
    let keep = chans.len().min(3);
    let body = crate::backbones::FnBackbone {
        f: Box::new(move |xs, train| {
            let mut m = blocks(xs, train);
            let m = m.split_off(m.len() - keep);
            let x = m.last().expect("depth >= 1");
            let pooled = match pool {
                GlobalPool::Avg => x.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float),
                GlobalPool::Max => x.amax([2i64, 3].as_slice(), false),
            };
            crate::backbones::Features { maps: m, pooled }
        }),
        maps: chans[chans.len() - keep..].to_vec(),
        pooled: last,
    };
    crate::backbones::Classifier::with_head(Box::new(body), Box::new(move |v, _| v.apply(&fc)), head_names("fc"))
}

/// SimpleCnn as a feature backbone (a light Radar/Spotter backbone for small images): its
/// blocks' maps (the last three), pooled by global average.
fn simple_cnn_backbone(
    p: &nn::Path,
    width: i64,
    depth: i64,
    highpass: bool,
    device: Device,
) -> crate::backbones::FnBackbone {
    let (blocks, chans) = simple_cnn_blocks(p, width, depth, highpass, device);
    let keep = chans.len().min(3);
    let maps = chans[chans.len() - keep..].to_vec();
    let pooled = *chans.last().expect("depth >= 1");
    crate::backbones::FnBackbone {
        f: Box::new(move |xs, train| {
            let mut m = blocks(xs, train);
            let m = m.split_off(m.len() - keep);
            let pooled = crate::backbones::global_avg(m.last().expect("depth >= 1"));
            crate::backbones::Features { maps: m, pooled }
        }),
        maps,
        pooled,
    }
}

/// Sorted (name, tensor) pairs of a var store.
pub fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes every variable (as f32 CPU tensors) to a `.safetensors` file, plus a
/// `num_batches_tracked` per batch-norm layer (`batches`), for torchvision's state dicts.
pub fn save(vs: &nn::VarStore, path: &Path, batches: Option<i64>) -> Res<()> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in named(vs) {
        if let (Some(prefix), Some(n)) = (name.strip_suffix(".running_mean"), batches) {
            out.push((format!("{prefix}.num_batches_tracked"), Tensor::from(n)));
        }
        out.push((name, t.detach().to_device(Device::Cpu).contiguous()));
    }
    save_tensors(&out, path)
}

pub fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Res<()> {
    let tmp = path.with_extension("tmp.safetensors");
    Tensor::write_safetensors(tensors, &tmp).ctx(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("cannot rename {}", tmp.display()))
}

pub fn read_tensors(path: &Path) -> Res<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(format!("weights file {} does not exist", path.display()));
    }
    let v = Tensor::read_safetensors(path).ctx(|| {
        format!(
            "cannot read {} as a .safetensors weights file (make one with stages/torch/convert_weights.py)",
            path.display()
        )
    })?;
    Ok(v.into_iter().collect())
}

/// Copies `src` into the var store by name; every variable must be there with its shape.
pub fn load_exact(vs: &nn::VarStore, src: &HashMap<String, Tensor>, what: &str) -> Res<()> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (name, var) in named(vs) {
        match src.get(&name) {
            None => missing.push(name),
            Some(t) if t.size() != var.size() => wrong.push(format!("{name} {:?} vs {:?}", t.size(), var.size())),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !wrong.is_empty() {
        return Err(format!(
            "{what} does not fit the model: {} missing ({}), {} of the wrong shape ({})",
            missing.len(),
            list_some(&missing, 10),
            wrong.len(),
            list_some(&wrong, 10)
        ));
    }
    copy_in(vs, src);
    Ok(())
}

fn copy_in(vs: &nn::VarStore, src: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, mut var) in named(vs) {
            if let Some(t) = src.get(&name) {
                var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
            }
        }
    });
}

/// Copies of every variable, on the same device (the best epoch's weights, kept in memory).
pub fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    tch::no_grad(|| {
        vs.variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    })
}

pub fn restore(vs: &nn::VarStore, snap: &HashMap<String, Tensor>) {
    copy_in(vs, snap);
}

/// What loading pretrained weights did (`file` is the path as given; callers put the
/// workspace-relative name in outputs).
pub use flow_stages::ports::models::PretrainedReport as Pretrained;

/// Loads a user's pretrained `.safetensors` by name (see the module docs). With `strict`
/// false, model tensors the file lacks are listed (`missing`) instead of failing.
pub fn load_pretrained(net: &Net, path: &Path, model: &Model, strict: bool) -> Res<Pretrained> {
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let src = read_tensors(path)?;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut skipped = Vec::new();
    let mut used_names = std::collections::HashSet::new();
    let vars = named(&net.vs);
    let mut use_: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, var) in &vars {
        // A plain classifier's head, or a Radar/Spotter module around the backbone: fresh
        // unless the file has it with the right shape.
        let is_head = net.head.contains(name) || !net.is_backbone(name);
        // A backbone checkpoint (timm's `blocks.0…`) fits a model's `backbone.blocks.0…`.
        let found = src.get_key_value(name.as_str()).or_else(|| {
            name.strip_prefix(net.backbone_prefix.as_deref().unwrap_or("\0"))
                .and_then(|n| src.get_key_value(n))
        });
        match found {
            None if is_head => skipped.push(name.clone()),
            None => missing.push(name.clone()),
            Some((k, t)) if t.size() != var.size() => {
                if is_head {
                    skipped.push(format!("{name} {:?} (model {:?})", t.size(), var.size()));
                } else if let Some(r) = crate::backbones::adapt(name, t, &var.size()) {
                    // A ViT's position embeddings for another image size: resampled.
                    used_names.insert(k.clone());
                    use_.insert(name.clone(), r);
                } else {
                    wrong.push(format!("{name} {:?} vs {:?}", t.size(), var.size()));
                }
            }
            Some((_, t)) if !t.is_floating_point() => wrong.push(format!("{name} has dtype {:?}", t.kind())),
            Some((k, t)) => {
                used_names.insert(k.clone());
                use_.insert(name.clone(), t.shallow_clone());
            }
        }
    }
    if use_.is_empty() && wrong.is_empty() {
        // Nothing fits: not a partial checkpoint of this model but another model's weights.
        return Err(format!(
            "weights file {file_name}: none of its {} tensors is a tensor of {} (another model's checkpoint? see stages/torch/convert_weights.py)",
            src.len(),
            model_name(model)
        ));
    }
    if !strict {
        // PyTorch's strict=False: what the file lacks stays fresh (listed); shapes must agree.
        skipped.extend(
            std::mem::take(&mut missing)
                .into_iter()
                .map(|m| format!("{m} (missing)")),
        );
    }
    if !wrong.is_empty() || !missing.is_empty() {
        let mut parts = Vec::new();
        if !wrong.is_empty() {
            parts.push(format!(
                "{} tensor(s) have the wrong shape (file vs {}): {}",
                wrong.len(),
                model_name(model),
                list_some(&wrong, 10)
            ));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "{} tensor(s) of the model are missing: {} (`pretrained_strict: false` loads what is there)",
                missing.len(),
                list_some(&missing, 10)
            ));
        }
        return Err(format!(
            "weights file {file_name}: {} (is it a torchvision/timm-named {} checkpoint? see stages/torch/convert_weights.py)",
            parts.join("; "),
            model_name(model)
        ));
    }
    let mut unused: Vec<String> = src
        .keys()
        .filter(|k| !used_names.contains(*k) && !k.ends_with("num_batches_tracked"))
        .filter(|k| !vars.iter().any(|(n, _)| n == *k))
        .cloned()
        .collect();
    unused.sort();
    let (fresh, missing): (Vec<String>, Vec<String>) = skipped.into_iter().partition(|s| !s.ends_with("(missing)"));
    let loaded = use_.len();
    let map: HashMap<String, Tensor> = use_.into_iter().collect();
    copy_in(&net.vs, &map);
    Ok(Pretrained {
        file: path.display().to_string(),
        loaded,
        skipped: fresh,
        unused,
        missing: missing
            .into_iter()
            .map(|m| m.trim_end_matches(" (missing)").to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highpass_ignores_flat_and_ramps_and_sees_period_two() {
        let k = highpass_kernel(Device::Cpu);
        let s = 8i64;
        let resp = |img: Vec<f32>| -> Vec<f32> {
            let x = Tensor::from_slice(&img).view([1, 1, s, s]).repeat([1, 3, 1, 1]);
            let r = x.conv2d(&k, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 3);
            Vec::<f32>::try_from(r.flatten(0, -1)).unwrap()
        };
        let flat = resp(vec![0.7; (s * s) as usize]);
        let ramp = resp(
            (0..s * s)
                .map(|i| 0.1 * (i % s) as f32 + 0.05 * (i / s) as f32)
                .collect(),
        );
        assert!(flat.iter().chain(&ramp).all(|v| v.abs() < 1e-5), "{flat:?} {ramp:?}");
        // A checkerboard (both Nyquist frequencies) gives the strongest response: ±2 per unit.
        let checker = resp((0..s * s).map(|i| ((i % s + i / s) % 2) as f32).collect());
        assert!(checker.iter().all(|v| (v.abs() - 2.0).abs() < 1e-5), "{checker:?}");
    }

    #[test]
    fn simple_cnn_variants_give_one_logit_per_item() {
        let _g = crate::torch_serial();
        for (highpass, pool) in [(false, GlobalPool::Avg), (true, GlobalPool::Max)] {
            let m = Model::SimpleCnn {
                width: 4,
                depth: 2,
                highpass,
                pool,
            };
            let net = build(&m, Device::Cpu, 16).unwrap();
            let y = net.forward(&Tensor::rand([3, 3, 16, 16], (tch::Kind::Float, Device::Cpu)), false);
            assert_eq!(y.size(), vec![3, 1], "{m:?}");
            // The high-pass filter is fixed: it is not a variable (not trained, not saved).
            assert_eq!(named(&net.vs).len(), 2 * 5 + 2, "{m:?}");
        }
    }
}
