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
}

/// A backbone made of a closure (for small nets and tests).
pub struct FnBackbone {
    pub f: Box<dyn Fn(&Tensor, bool) -> Features + Send>,
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

/// A classifier as its library builds it: the detector and the names of its head's variables.
pub struct Classifier {
    pub module: Box<dyn Detector>,
    pub head: Vec<String>,
}

/// `model` as a feature extractor whose variables live under `p` with the library's names
/// (`p / "features" / …` for torchvision nets, `p / "blocks" / …` for timm ones), for
/// `size`-pixel inputs. Err for models that are not plain backbones.
pub fn backbone(p: &nn::Path, model: &Model, size: i64) -> Result<Box<dyn Backbone>, String> {
    let _ = (p, size);
    Err(format!("{model:?} is not available as a feature backbone yet"))
}

/// `model` as its library's one-logit classifier, variables under `p` (for the models
/// `nets::build` does not take from `tch::vision`: ConvNeXtTiny, MobileNetV3*, VitS16,
/// MobileNetV4ConvSmall).
pub fn classifier(p: &nn::Path, model: &Model, size: i64) -> Result<Classifier, String> {
    let _ = (p, size);
    Err(format!("{model:?} is not built yet"))
}

/// A pretrained tensor of another shape that still fits variable `name` (a ViT's
/// `pos_embed` made for another image size, resampled), if there is one.
pub fn adapt(name: &str, t: &Tensor, want: &[i64]) -> Option<Tensor> {
    let _ = (name, t, want);
    None
}
