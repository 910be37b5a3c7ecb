//! Backbones as feature extractors, with the parameter names of the Python library whose
//! checkpoints they load (torchvision or timm), so a converted `state_dict` loads with zero
//! missing and zero unexpected names (`stages/torch/convert_weights.py`).
//!
//! A [`Backbone`] gives feature maps of increasing depth and a pooled vector; a plain
//! classifier is a backbone plus its library's head (built by `nets::build`), and the
//! forensic models (`crate::forensic`) read the same features.

use tch::Tensor;

/// What a backbone sees in a batch.
pub struct Features {
    /// Feature maps of increasing depth, each `[N, C, H, W]`; the last is the backbone's
    /// final map (for a ViT: the patch tokens laid out as `[N, D, H/16, W/16]`). CNNs give
    /// the outputs of the stages at strides 8, 16 and 32 (fewer when the net has fewer).
    pub maps: Vec<Tensor>,
    /// The vector the library's classifier head reads, `[N, D]`: a CNN's globally averaged
    /// last map (after its final conv, as torchvision pools it), a ViT's normalised CLS token.
    pub pooled: Tensor,
}

/// A feature extractor. Contract: `features` is a pure function of the input and the
/// variables (plus dropout/batch-norm mode from `train`); `channels` is fixed at build time
/// and matches `features`' shapes.
pub trait Backbone: Send {
    /// Features of a normalised batch `[N, 3, H, W]`.
    fn features(&self, xs: &Tensor, train: bool) -> Features;
    /// Channels of each of `features().maps`, in order.
    fn map_channels(&self) -> Vec<i64>;
    /// Width of `features().pooled`.
    fn pooled_dim(&self) -> i64;
    /// [`Backbone::features`] and the activations Grad-CAM targets, in the order of
    /// `Model::cam_layers` (flow-stages): tensors of the very graph that `features` returns,
    /// each `[N, C, h, w]`, so gradients of anything computed from the features reach them.
    /// Default: the maps themselves.
    fn cam_features(&self, xs: &Tensor, train: bool) -> (Features, Vec<Tensor>) {
        let f = self.features(xs, train);
        let taps = f.maps.iter().map(Tensor::shallow_clone).collect();
        (f, taps)
    }
}

/// Where a [`Tapped`] backbone leaves its Grad-CAM activations: armed before a forward pass,
/// read after it (one forward at a time: a net is owned by one worker thread).
#[derive(Clone, Default)]
pub struct TapHandle(std::sync::Arc<std::sync::Mutex<TapState>>);

#[derive(Default)]
struct TapState {
    armed: bool,
    taps: Vec<Tensor>,
}

impl TapHandle {
    /// Makes the next forward pass record its activations.
    pub fn arm(&self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.armed = true;
        g.taps.clear();
    }
    /// The activations of the last armed pass (empty if none ran), disarming.
    pub fn take(&self) -> Vec<Tensor> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.armed = false;
        std::mem::take(&mut g.taps)
    }
}

/// A backbone that records [`Backbone::cam_features`]' activations when its handle is armed;
/// otherwise exactly the backbone it wraps.
pub struct Tapped {
    inner: Box<dyn Backbone>,
    handle: TapHandle,
}

impl Tapped {
    pub fn new(inner: Box<dyn Backbone>) -> (Tapped, TapHandle) {
        let handle = TapHandle::default();
        (
            Tapped {
                inner,
                handle: handle.clone(),
            },
            handle,
        )
    }
}

impl Backbone for Tapped {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        let armed = self.handle.0.lock().unwrap_or_else(|e| e.into_inner()).armed;
        if !armed {
            return self.inner.features(xs, train);
        }
        let (f, taps) = self.inner.cam_features(xs, train);
        self.handle.0.lock().unwrap_or_else(|e| e.into_inner()).taps = taps;
        f
    }
    fn map_channels(&self) -> Vec<i64> {
        self.inner.map_channels()
    }
    fn pooled_dim(&self) -> i64 {
        self.inner.pooled_dim()
    }
}

/// `b` behind a [`Tapped`] wrapper, boxed.
pub fn tapped(b: Box<dyn Backbone>) -> (Box<dyn Backbone>, TapHandle) {
    let (t, h) = Tapped::new(b);
    (Box::new(t), h)
}

/// A forward function of a batch and the train flag.
pub type FeaturesFn = Box<dyn Fn(&Tensor, bool) -> Features + Send>;

/// A backbone made of a closure (for small nets and tests).
pub struct FnBackbone {
    pub f: FeaturesFn,
    pub maps: Vec<i64>,
    pub pooled: i64,
}

impl Backbone for FnBackbone {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        (self.f)(xs, train)
    }
    fn map_channels(&self) -> Vec<i64> {
        self.maps.clone()
    }
    fn pooled_dim(&self) -> i64 {
        self.pooled
    }
}

/// Global average of a `[N, C, H, W]` map: `[N, C]`.
pub fn global_avg(x: &Tensor) -> Tensor {
    x.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float)
}

pub mod convnext;
pub mod efficientnet;
pub mod mobilenetv3;
pub mod mobilenetv4;
pub mod resnet;
pub mod vit;

use flow_stages::model::Model;
use tch::nn;

use crate::nets::Detector;

/// A classifier as its library builds it: the detector, the names of its head's variables
/// and where its backbone leaves Grad-CAM activations.
pub struct Classifier {
    pub module: Box<dyn Detector>,
    pub head: Vec<String>,
    pub tap: TapHandle,
}

impl Classifier {
    /// A backbone plus `head` reading its pooled vector; `head_names` are the head's variables.
    pub fn with_head(body: Box<dyn Backbone>, head: Layer, head_names: Vec<String>) -> Classifier {
        let (body, tap) = tapped(body);
        Classifier {
            module: Box::new(WithHead { body, head }),
            head: head_names,
            tap,
        }
    }
}

/// `model` as a feature extractor whose variables live under `p` with the library's names
/// (`p / "features" / …` for torchvision nets, `p / "blocks" / …` for timm ones), for
/// `size`-pixel inputs. Err for models that are not plain backbones.
///
/// Maps are the outputs of the last layer at strides 8, 16 and 32 (a ViT: its one patch-token
/// map at stride 16). Besides the trunk, the backbone holds the parts of the library's head
/// that come before the final linear layer, so `pooled` is what that layer reads:
/// ConvNeXt's `classifier.0` (LayerNorm2d of the average), MobileNetV4's `conv_head` /
/// `norm_head`, ViT's `norm`; MobileNetV3's `classifier.*` are all head (not built here).
pub fn backbone(p: &nn::Path, model: &Model, size: i64) -> Result<Box<dyn Backbone>, String> {
    Ok(match model {
        Model::ResNet18 => Box::new(resnet::ResNet::new(p, resnet::Depth::R18)),
        Model::ResNet34 => Box::new(resnet::ResNet::new(p, resnet::Depth::R34)),
        Model::ResNet50 => Box::new(resnet::ResNet::new(p, resnet::Depth::R50)),
        Model::EfficientNetB0 => Box::new(efficientnet::EfficientNet::new(p, efficientnet::Variant::B0)),
        Model::EfficientNetB1 => Box::new(efficientnet::EfficientNet::new(p, efficientnet::Variant::B1)),
        Model::EfficientNetB2 => Box::new(efficientnet::EfficientNet::new(p, efficientnet::Variant::B2)),
        Model::EfficientNetB3 => Box::new(efficientnet::EfficientNet::new(p, efficientnet::Variant::B3)),
        Model::ConvNeXtTiny => Box::new(convnext::ConvNeXt::tiny(p)),
        Model::MobileNetV3Small => Box::new(mobilenetv3::MobileNetV3::new(p, mobilenetv3::Arch::Small)),
        Model::MobileNetV3Large => Box::new(mobilenetv3::MobileNetV3::new(p, mobilenetv3::Arch::Large)),
        Model::VitS16 => Box::new(vit::Vit::small16(p, size)?),
        Model::MobileNetV4ConvSmall => Box::new(mobilenetv4::MobileNetV4::conv_small(p)),
        other => return Err(format!("{other:?} is not available as a feature backbone")),
    })
}

/// `model` as its library's one-logit classifier, variables under `p` (for the models
/// `nets::build` does not take from `tch::vision`: ConvNeXtTiny, MobileNetV3*, VitS16,
/// MobileNetV4ConvSmall).
pub fn classifier(p: &nn::Path, model: &Model, size: i64) -> Result<Classifier, String> {
    match model {
        Model::ConvNeXtTiny => Ok(convnext::classifier(p)),
        Model::MobileNetV3Small => Ok(mobilenetv3::classifier(p, mobilenetv3::Arch::Small)),
        Model::MobileNetV3Large => Ok(mobilenetv3::classifier(p, mobilenetv3::Arch::Large)),
        Model::VitS16 => vit::classifier(p, size),
        Model::MobileNetV4ConvSmall => Ok(mobilenetv4::classifier(p)),
        Model::EfficientNetB0 => Ok(efficientnet::classifier(p, efficientnet::Variant::B0)),
        Model::EfficientNetB1 => Ok(efficientnet::classifier(p, efficientnet::Variant::B1)),
        Model::EfficientNetB2 => Ok(efficientnet::classifier(p, efficientnet::Variant::B2)),
        Model::EfficientNetB3 => Ok(efficientnet::classifier(p, efficientnet::Variant::B3)),
        other => Err(format!("{other:?} is not built by backbones::classifier")),
    }
}

/// A backbone plus a head reading its pooled vector: a one-logit classifier.
pub struct WithHead {
    pub body: Box<dyn Backbone>,
    pub head: Layer,
}

impl Detector for WithHead {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        (self.head)(&self.body.features(xs, train).pooled, train).view([-1])
    }
}

// ---- building blocks shared by the nets ----

/// A layer (a function of a batch and the train flag).
pub type Layer = Box<dyn Fn(&Tensor, bool) -> Tensor + Send>;

/// A batch-norm layer with PyTorch's `eps` and `momentum`.
pub(crate) fn bn(p: nn::Path, c: i64, eps: f64, momentum: f64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps,
            momentum,
            ..Default::default()
        },
    )
}

/// A `k`×`k` convolution with PyTorch's symmetric padding `(k - 1) / 2`.
pub(crate) fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            stride,
            padding: (k - 1) / 2,
            groups,
            bias,
            ..Default::default()
        },
    )
}

/// torchvision's `Conv2dNormActivation` / timm's `ConvNormAct` without the activation:
/// a bias-free conv (`<p>.<conv>`) and a batch norm (`<p>.<norm>`).
#[derive(Debug)]
pub(crate) struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
}

/// Batch-norm settings: `(eps, momentum)`.
pub(crate) type BnCfg = (f64, f64);

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &nn::Path,
        names: (&str, &str),
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        groups: i64,
        bn_cfg: BnCfg,
    ) -> Self {
        ConvBn {
            conv: conv(p / names.0, c_in, c_out, k, stride, groups, false),
            bn: bn(p / names.1, c_out, bn_cfg.0, bn_cfg.1),
        }
    }
    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// Stochastic depth ("row" mode, torchvision's `stochastic_depth`): in training, zeroes each
/// item's residual branch with probability `p` and scales the survivors by `1 / (1 - p)`.
pub(crate) fn stochastic_depth(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let survival = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let noise = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(survival);
    let noise = if survival > 0.0 { noise / survival } else { noise };
    x * noise
}

/// A LayerNorm over the channels of a `[N, C, H, W]` map (torchvision's `LayerNorm2d`).
pub(crate) fn layer_norm2d(x: &Tensor, ln: &nn::LayerNorm) -> Tensor {
    x.permute([0, 2, 3, 1]).apply(ln).permute([0, 3, 1, 2])
}

/// A linear layer initialised as timm and torchvision's transformers do: weights
/// trunc_normal(std 0.02) (truncated at ±2, i.e. ±100 std: a plain normal), biases zero.
pub(crate) fn linear02(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

/// Runs a sequential trunk whose layer `i` leaves the input at cumulative stride
/// `strides[i]`: the outputs of the last layer at strides 8, 16 and 32 (those the net
/// reaches), and the final output.
pub(crate) fn run_staged(layers: &[Layer], strides: &[i64], xs: &Tensor, train: bool) -> (Vec<Tensor>, Tensor) {
    let taps = stage_taps(strides);
    let mut x = xs.shallow_clone();
    let mut maps = Vec::with_capacity(taps.len());
    for (i, l) in layers.iter().enumerate() {
        x = l(&x, train);
        if taps.contains(&i) {
            maps.push(x.shallow_clone());
        }
    }
    (maps, x)
}

/// Indices of the last layer at cumulative strides 8, 16 and 32.
pub(crate) fn stage_taps(strides: &[i64]) -> Vec<usize> {
    [8, 16, 32]
        .iter()
        .filter_map(|s| strides.iter().rposition(|v| v == s))
        .collect()
}

/// A pretrained tensor of another shape that still fits variable `name` (a ViT's
/// `pos_embed` made for another image size, resampled), if there is one.
pub fn adapt(name: &str, t: &Tensor, want: &[i64]) -> Option<Tensor> {
    let have = t.size();
    let square = |n: i64| {
        let g = ((n - 1) as f64).sqrt().round() as i64;
        (n > 1 && g * g == n - 1).then_some(g)
    };
    if !(name == "pos_embed" || name.ends_with(".pos_embed")) || have.len() != 3 || want.len() != 3 {
        return None;
    }
    if have[0] != 1 || want[0] != 1 || have[2] != want[2] {
        return None;
    }
    let (Some(_), Some(grid)) = (square(have[1]), square(want[1])) else {
        return None;
    };
    Some(vit::resize_pos_embed(&t.to_kind(tch::Kind::Float), grid))
}

/// Test helpers: reference outputs from torchvision/timm (`stages/torch/tests/backbone_reference.py`).
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    use tch::{nn, Kind, Tensor};

    const SETUP: &str = "run `scripts/setup --test-deps` (or set FLOW_PYTHON to a Python with torch, torchvision, timm and safetensors)";

    /// The Python with torch/torchvision/timm (one definition: `testdata::python`).
    pub fn python() -> PathBuf {
        crate::testdata::python()
    }

    /// What the reference script wrote: the state_dict (no `__` names) and the references.
    pub struct Reference {
        pub weights: HashMap<String, Tensor>,
        pub refs: HashMap<String, Tensor>,
    }

    impl Reference {
        pub fn get(&self, k: &str) -> &Tensor {
            self.refs.get(k).unwrap_or_else(|| panic!("no reference {k}"))
        }
    }

    /// Runs `backbone_reference.py SOURCE NAME OUT SIZE ARGS…` and reads what it wrote.
    pub fn reference(source: &str, name: &str, size: i64, args: &[&str]) -> Reference {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ref.safetensors");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/backbone_reference.py");
        let r = std::process::Command::new(python())
            .arg(&script)
            .args([source, name])
            .arg(&out)
            .arg(size.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP}", python().display()));
        assert!(
            r.status.success(),
            "{} {source} {name} failed ({SETUP}):\n{}",
            script.display(),
            String::from_utf8_lossy(&r.stderr)
        );
        let all = crate::nets::read_tensors(&out).unwrap();
        let (refs, weights) = all.into_iter().partition(|(k, _)| k.starts_with("__"));
        Reference { weights, refs }
    }

    /// Zero missing and zero unexpected names (but `num_batches_tracked` and names `skip`
    /// accepts), equal shapes.
    pub fn assert_same_names(vs: &nn::VarStore, file: &HashMap<String, Tensor>, skip: impl Fn(&str) -> bool) {
        let ours: BTreeMap<String, Vec<i64>> = vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect();
        let theirs: BTreeMap<String, Vec<i64>> = file
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked") && !skip(k))
            .map(|(k, v)| (k.clone(), v.size()))
            .collect();
        let missing: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        let unexpected: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{} missing from flow's model: {missing:?}\n{} unexpected in flow's model: {unexpected:?}",
            missing.len(),
            unexpected.len()
        );
        let wrong: Vec<String> = ours
            .iter()
            .filter(|(k, s)| theirs[*k] != **s)
            .map(|(k, s)| format!("{k}: flow {s:?}, library {:?}", theirs[k]))
            .collect();
        assert!(wrong.is_empty(), "shapes differ: {wrong:?}");
    }

    /// Largest absolute difference relative to the reference's largest magnitude (at least 1).
    pub fn rel_diff(ours: &Tensor, theirs: &Tensor) -> f64 {
        assert_eq!(ours.size(), theirs.size());
        let d = (ours - theirs).abs().max().double_value(&[]);
        let m = theirs.abs().max().double_value(&[]).max(1.0);
        d / m
    }

    pub fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor, tol: f64) -> f64 {
        let theirs = theirs.view(ours.size().as_slice());
        let d = rel_diff(ours, &theirs);
        let (m, s) = (theirs.abs().max().double_value(&[]), theirs.std(true).double_value(&[]));
        eprintln!(
            "{what}: max |flow - library| / max(1, max |library|) = {d:.2e} (library: max |.| {m:.3}, std {s:.3})"
        );
        assert!(
            d <= tol,
            "{what}: flow differs from the library by {d:.2e} (> {tol:.0e})"
        );
        d
    }

    /// One backward pass of a random projection of `outs`: every trainable variable gets a
    /// finite, nonzero gradient.
    /// `b`'s maps and pooled vector on the reference input equal PyTorch's (`__map.<i>`,
    /// `__pooled`) to 1e-4.
    pub fn assert_features_match(b: &dyn super::Backbone, r: &Reference, name: &str) {
        let f = tch::no_grad(|| b.features(r.get("__input"), false));
        for (i, m) in f.maps.iter().enumerate() {
            assert_close(&format!("{name} map {i}"), m, r.get(&format!("__map.{i}")), 1e-4);
        }
        assert_close(&format!("{name} pooled"), &f.pooled, r.get("__pooled"), 1e-4);
    }

    pub fn assert_grads(vs: &nn::VarStore, outs: &[Tensor]) {
        let loss = outs
            .iter()
            .map(|t| (t * Tensor::randn_like(t)).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        let mut bad = Vec::new();
        for (name, v) in crate::nets::named(vs) {
            if !v.requires_grad() {
                continue;
            }
            let g = v.grad();
            if !g.defined() {
                bad.push(format!("{name}: no gradient"));
                continue;
            }
            let finite = bool::try_from(g.isfinite().all()).unwrap();
            let nonzero = g.abs().sum(Kind::Float).double_value(&[]) > 0.0;
            if !finite || !nonzero {
                bad.push(format!("{name}: finite {finite}, nonzero {nonzero}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{} variable(s) without a useful gradient: {bad:?}",
            bad.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Same seed, same input: the same logits and the same gradients, dropout and stochastic
    /// depth included (training mode), for every classifier built here.
    #[test]
    fn classifiers_are_deterministic_in_training_mode() {
        let _g = crate::torch_serial();
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0.0f32, 1.0]);
        for m in [
            Model::ConvNeXtTiny,
            Model::MobileNetV3Small,
            Model::MobileNetV3Large,
            Model::VitS16,
            Model::MobileNetV4ConvSmall,
            Model::EfficientNetB0,
        ] {
            let run = || {
                tch::manual_seed(11);
                let net = crate::nets::build(&m, Device::Cpu, 32).unwrap();
                let z = net.module.logit(&x, true);
                let loss = z.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean);
                loss.backward();
                let grads: Vec<Tensor> = crate::nets::named(&net.vs)
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad())
                    .map(|(_, t)| t.grad().copy())
                    .collect();
                (z.detach(), grads)
            };
            let (z1, g1) = run();
            let (z2, g2) = run();
            assert!(z1.equal(&z2), "{m:?}: logits differ between two seeded runs");
            assert_eq!(g1.len(), g2.len());
            assert!(g1.iter().zip(&g2).all(|(a, b)| a.equal(b)), "{m:?}: gradients differ");
        }
    }

    #[test]
    fn every_plain_model_is_a_backbone_under_its_path() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let models = [
            (Model::ResNet18, 512),
            (Model::ResNet34, 512),
            (Model::ResNet50, 2048),
            (Model::EfficientNetB0, 1280),
            (Model::EfficientNetB1, 1280),
            (Model::EfficientNetB2, 1408),
            (Model::EfficientNetB3, 1536),
            (Model::ConvNeXtTiny, 768),
            (Model::MobileNetV3Small, 576),
            (Model::MobileNetV3Large, 960),
            (Model::VitS16, 384),
            (Model::MobileNetV4ConvSmall, 1280),
        ];
        for (m, pooled) in models {
            let vs = nn::VarStore::new(Device::Cpu);
            let b = backbone(&(vs.root() / "backbone"), &m, 32).unwrap();
            let vars = vs.variables();
            assert!(vars.keys().all(|k| k.starts_with("backbone.")), "{m:?}");
            assert_eq!(b.pooled_dim(), pooled, "{m:?}");
            let f = tch::no_grad(|| b.features(&x, false));
            let chans: Vec<i64> = f.maps.iter().map(|t| t.size()[1]).collect();
            assert_eq!(chans, b.map_channels(), "{m:?}");
            let sides: Vec<i64> = f.maps.iter().map(|t| t.size()[2]).collect();
            let want: &[i64] = if m == Model::VitS16 { &[2] } else { &[4, 2, 1] };
            assert_eq!(sides, want, "{m:?}");
            assert_eq!(f.pooled.size(), [2, pooled], "{m:?}");
            // Torchvision nets under `features.`, timm's under `blocks.` (ResNets: `layer<i>.`).
            let trunk = match m {
                Model::VitS16 | Model::MobileNetV4ConvSmall => "backbone.blocks.",
                Model::ResNet18 | Model::ResNet34 | Model::ResNet50 => "backbone.layer1.",
                _ => "backbone.features.",
            };
            assert!(vars.keys().any(|k| k.starts_with(trunk)), "{m:?}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(backbone(&vs.root(), &Model::MobileNetV2, 32).is_err());
        assert!(backbone(&vs.root(), &Model::VitS16, 40).is_err());
    }

    #[test]
    fn classifiers_build_through_nets() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        for (m, head) in [
            (Model::ConvNeXtTiny, "classifier.2.weight"),
            (Model::MobileNetV3Small, "classifier.3.weight"),
            (Model::MobileNetV3Large, "classifier.3.weight"),
            (Model::VitS16, "head.weight"),
            (Model::MobileNetV4ConvSmall, "classifier.weight"),
        ] {
            let net = crate::nets::build(&m, Device::Cpu, 32).unwrap();
            let vars = net.vs.variables();
            assert!(net.head.iter().all(|h| vars.contains_key(h)), "{m:?}: {:?}", net.head);
            assert!(net.head.iter().any(|h| h == head), "{m:?}: {:?}", net.head);
            assert_eq!(vars[head].size()[0], 1, "{m:?}");
            let y = tch::no_grad(|| net.forward(&x, false));
            assert_eq!(y.size(), [2, 1], "{m:?}");
            assert!(bool::try_from(y.isfinite().all()).unwrap(), "{m:?}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(classifier(&vs.root(), &Model::ResNet18, 32).is_err());
    }

    /// `convert_weights.py` itself (the command line users run) writes a file that loads
    /// with zero missing and zero unexpected names.
    #[test]
    fn convert_weights_random_loads_exactly() {
        let _g = crate::torch_serial();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.safetensors");
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("convert_weights.py");
        let r = std::process::Command::new(testutil::python())
            .arg(&script)
            .args(["torchvision", "mobilenet_v3_small"])
            .arg(&out)
            .args(["--random", "--num-classes", "1"])
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "convert_weights.py failed (run `scripts/setup --test-deps`):\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let file = crate::nets::read_tensors(&out).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _c = classifier(&vs.root(), &Model::MobileNetV3Small, 64).unwrap();
        testutil::assert_same_names(&vs, &file, |_| false);
        crate::nets::load_exact(&vs, &file, "mobilenet_v3_small").unwrap();
    }

    #[test]
    fn stochastic_depth_drops_whole_items_in_training_only() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let x = Tensor::ones([4000, 2, 3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(stochastic_depth(&x, 0.25, false), x);
        assert_eq!(stochastic_depth(&x, 0.0, true), x);
        let y = stochastic_depth(&x, 0.25, true);
        // Per item all zeros or all 1/0.75.
        let per = y.flatten(1, -1);
        let (lo, hi) = (per.amin([1i64].as_slice(), false), per.amax([1i64].as_slice(), false));
        assert_eq!(lo, hi);
        let kept = hi.gt(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((kept - 0.75).abs() < 0.03, "{kept}");
        assert!((hi.max().double_value(&[]) - 1.0 / 0.75).abs() < 1e-5);
    }
}
