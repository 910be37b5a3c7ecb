//! Spotter (seed 001): a backbone's features with CBAM-style channel + spatial attention on
//! the last (stride-32, "semantic") map and, with `multiscale`, the fine (stride 8), mid
//! (stride 16) and semantic maps fused.
//!
//! Forward: the backbone's maps; with `attention`, the last map `x` (`[N, C, h, w]`) becomes
//! `x' = s ⊙ (a ⊙ x)` with the channel attention `a = σ(mlp(avg(x)) + mlp(max(x)))` (`[N, C]`,
//! one MLP C→max(C/16, 8)→C on both global poolings) and the spatial attention
//! `s = σ(conv7×7([mean_c, max_c] of a ⊙ x))` (`[N, 1, h, w]`). Then
//!
//! - `multiscale: true`: the last three maps (the third refined as above) are each projected to
//!   256 channels by a 1×1 conv + ReLU, globally averaged and concatenated (`[N, 768]`) →
//!   dropout → `classifier` (768→1). (The seed fuses *heatmaps* of the three scales for its
//!   Grad-CAM; for the logit this takes the cheap route of pooling each scale.)
//! - `multiscale: false`: the last map alone, globally averaged → dropout → `classifier` (C→1).
//!
//! Variables under `p` (the backbone's are the caller's, under `p / "backbone"`):
//! `attention.channel.fc1` (C→max(C/16, 8)), `attention.channel.fc2`, `attention.spatial`
//! (conv 2→1, 7×7, bias) only with `attention`; `multiscale.proj.{0,1,2}` (1×1 conv C_i→256,
//! bias) only with `multiscale`; `classifier` always.

use flow_stages::model::Spotter as SpotterConfig;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::backbones::{global_avg, Backbone};
use crate::nets::Detector;

/// Width every scale is projected to with `multiscale`.
pub const FUSION_WIDTH: i64 = 256;

/// Channel + spatial attention (CBAM) on a `[N, C, h, w]` map.
struct Attention {
    fc1: nn::Linear,
    fc2: nn::Linear,
    spatial: nn::Conv2D,
}

impl Attention {
    fn new(p: &nn::Path, c: i64) -> Self {
        let hidden = (c / 16).max(8);
        let q = p / "channel";
        Attention {
            fc1: nn::linear(&q / "fc1", c, hidden, Default::default()),
            fc2: nn::linear(&q / "fc2", hidden, c, Default::default()),
            spatial: nn::conv2d(
                p / "spatial",
                2,
                1,
                7,
                nn::ConvConfig {
                    padding: 3,
                    ..Default::default()
                },
            ),
        }
    }
    /// The refined map and the spatial attention `[N, 1, h, w]`.
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mlp = |v: &Tensor| self.fc2.forward(&self.fc1.forward(v).relu());
        let avg = x.mean_dim([2i64, 3].as_slice(), false, x.kind());
        let max = x.amax([2i64, 3].as_slice(), false);
        let (n, c) = (x.size()[0], x.size()[1]);
        let a = (mlp(&avg) + mlp(&max)).sigmoid().view([n, c, 1, 1]);
        let x = x * a.to_kind(x.kind());
        let pooled = Tensor::cat(
            &[
                x.mean_dim([1i64].as_slice(), true, x.kind()),
                x.amax([1i64].as_slice(), true),
            ],
            1,
        );
        let s = self.spatial.forward(&pooled).sigmoid();
        (&x * s.to_kind(x.kind()), s)
    }
}

/// The Spotter detector (see the module docs).
pub struct SpotterNet {
    backbone: Box<dyn Backbone>,
    attention: Option<Attention>,
    proj: Vec<nn::Conv2D>,
    classifier: nn::Linear,
    dropout: f64,
}

impl SpotterNet {
    /// Spotter on `backbone` (built by the caller), its variables under `p`. `size` is not
    /// needed (everything pools globally). Err when `multiscale` is on and the backbone gives
    /// fewer than three maps.
    pub fn new(p: &nn::Path, cfg: &SpotterConfig, backbone: Box<dyn Backbone>, size: i64) -> Result<Self, String> {
        let _ = size;
        let chans = backbone.map_channels();
        let last = *chans.last().ok_or("Spotter's backbone gives no feature maps")?;
        if cfg.multiscale && chans.len() < 3 {
            return Err(format!(
                "Spotter `multiscale` needs three feature maps, the backbone gives {}",
                chans.len()
            ));
        }
        let attention = cfg.attention.then(|| Attention::new(&(p / "attention"), last));
        let proj: Vec<nn::Conv2D> = if cfg.multiscale {
            chans[chans.len() - 3..]
                .iter()
                .enumerate()
                .map(|(i, &c)| nn::conv2d(p / "multiscale" / "proj" / i, c, FUSION_WIDTH, 1, Default::default()))
                .collect()
        } else {
            Vec::new()
        };
        let width = if cfg.multiscale { 3 * FUSION_WIDTH } else { last };
        Ok(SpotterNet {
            backbone,
            attention,
            proj,
            classifier: nn::linear(p / "classifier", width, 1, Default::default()),
            dropout: cfg.dropout,
        })
    }

    /// The logit `[N]` and the attention map (see [`SpotterNet::attention_map`]).
    fn forward_all(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut maps = self.backbone.features(xs, train).maps;
        let last = maps.pop().expect("a backbone gives at least one map");
        let (last, map) = match &self.attention {
            Some(a) => a.forward(&last),
            None => {
                let m = last.detach().relu().mean_dim([1i64].as_slice(), true, Kind::Float);
                let dims = [1i64, 2, 3];
                let (lo, hi) = (m.amin(dims.as_slice(), true), m.amax(dims.as_slice(), true));
                let m = (&m - &lo) / (hi - lo + 1e-8);
                (last, m)
            }
        };
        let v = if self.proj.is_empty() {
            global_avg(&last)
        } else {
            maps.push(last);
            let scales = &maps[maps.len() - 3..];
            let pooled: Vec<Tensor> = self
                .proj
                .iter()
                .zip(scales)
                .map(|(p, m)| global_avg(&p.forward(m).relu()))
                .collect();
            Tensor::cat(&pooled, 1)
        };
        let logit = v.dropout(self.dropout, train).apply(&self.classifier).view([-1]);
        (logit, map)
    }

    /// Where the model looks, `[N, 1, h, w]` in `[0, 1]` at the last map's resolution (stride
    /// 32: 7×7 at 224 px), eval mode: with `attention`, the spatial attention `s` (a sigmoid,
    /// the very mask that multiplies the last map); without, the channel mean of the last
    /// map's ReLU, min-max normalised per sample (a gradient-free activation map). Gradients
    /// flow into `s` (for Grad-CAM-like uses); wrap in `tch::no_grad` when not needed. Upsample
    /// it to the image (bilinear) to overlay.
    pub fn attention_map(&self, xs: &Tensor) -> Tensor {
        self.forward_all(xs, false).1
    }
}

impl Detector for SpotterNet {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_all(xs, train).0
    }
    fn attention(&self, xs: &Tensor) -> Option<Tensor> {
        Some(tch::no_grad(|| self.attention_map(xs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forensic::radar::tests::tiny_backbone;
    use tch::Device;

    fn build(attention: bool, multiscale: bool) -> (nn::VarStore, SpotterNet) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let cfg = SpotterConfig {
            attention,
            multiscale,
            ..Default::default()
        };
        let b = tiny_backbone(&(&root / "backbone"));
        let m = SpotterNet::new(&root, &cfg, Box::new(b), 32).unwrap();
        (vs, m)
    }

    fn names(vs: &nn::VarStore) -> Vec<String> {
        let mut v: Vec<String> = vs.variables().into_keys().collect();
        v.sort();
        v
    }

    #[test]
    fn spotter_shapes_and_attention_map() {
        let _g = crate::torch_serial();
        for (att, ms) in [(true, true), (true, false), (false, true), (false, false)] {
            let (_vs, m) = build(att, ms);
            let xs = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
            let l = m.logit(&xs, true);
            assert_eq!(l.size(), [4]);
            assert!(l.isfinite().all().int64_value(&[]) == 1);
            let a = m.attention_map(&xs);
            assert_eq!(a.size(), [4, 1, 1, 1], "attention {att} multiscale {ms}");
            assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
        }
        // at 64 px the last map is 2×2
        let (_vs, m) = build(true, true);
        let a = m.attention_map(&Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)));
        assert_eq!(a.size(), [2, 1, 2, 2]);
        assert!(a.min().double_value(&[]) > 0.0 && a.max().double_value(&[]) < 1.0);
    }

    #[test]
    fn spotter_variables_follow_the_config() {
        let _g = crate::torch_serial();
        let (vs, _) = build(true, true);
        let n = names(&vs);
        for v in [
            "attention.channel.fc1.weight",
            "attention.channel.fc2.weight",
            "attention.spatial.weight",
            "multiscale.proj.0.weight",
            "multiscale.proj.1.weight",
            "multiscale.proj.2.weight",
        ] {
            assert!(n.contains(&v.to_string()), "{v} missing in {n:?}");
        }
        assert_eq!(vs.variables()["classifier.weight"].size(), [1, 3 * FUSION_WIDTH]);
        assert_eq!(
            vs.variables()["multiscale.proj.0.weight"].size(),
            [FUSION_WIDTH, 8, 1, 1]
        );
        assert_eq!(vs.variables()["attention.channel.fc1.weight"].size(), [8, 32]);
        let (vs, _) = build(false, false);
        let n = names(&vs);
        assert!(!n
            .iter()
            .any(|v| v.starts_with("attention.") || v.starts_with("multiscale.")));
        assert_eq!(vs.variables()["classifier.weight"].size(), [1, 32]);
        // gradients reach the attention and fusion modules and the backbone
        let (vs, m) = build(true, true);
        let xs = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        m.logit(&xs, true).sum(Kind::Float).backward();
        for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            let g = t.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1, "{name}");
            assert!(g.abs().max().double_value(&[]) > 0.0, "{name} has zero gradient");
        }
        // too few maps for multiscale: an error
        let vs = nn::VarStore::new(Device::Cpu);
        let b = crate::backbones::FnBackbone {
            f: Box::new(|_, _| unreachable!()),
            maps: vec![16],
            pooled: 16,
        };
        assert!(SpotterNet::new(&vs.root(), &SpotterConfig::default(), Box::new(b), 32).is_err());
    }
}
