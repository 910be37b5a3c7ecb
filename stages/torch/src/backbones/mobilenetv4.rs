//! timm's `mobilenetv4_conv_small`: names `conv_stem`, `bn1`, `blocks.<stage>.<block>.…`
//! (ConvBnAct: `conv`, `bn1`; UniversalInvertedResidual: `dw_start`, `pw_exp`, `dw_mid`,
//! `pw_proj`, each `.conv` / `.bn`), head `conv_head`, `norm_head` (after global pooling,
//! as timm's MobileNetV3 class does), `classifier`. ReLU throughout, batch norm eps 1e-5.
//! Maps: the outputs of `blocks.1`, `blocks.2`, `blocks.4` (strides 8, 16, 32); pooled: the
//! 1280-wide head vector (`conv_head` → `norm_head` → ReLU on the global average), what
//! `classifier` reads.

use tch::{nn, Tensor};

use super::{run_staged, Backbone, BnCfg, Classifier, ConvBn, Features, Layer};

const BN: BnCfg = (1e-5, 0.1);
const STEM: i64 = 32;
const HEAD: i64 = 1280;

/// A block of timm's arch_def.
#[derive(Debug, Clone, Copy)]
enum Blk {
    /// `cn`: conv k×k, stride, output channels (batch norm, ReLU; no skip).
    Cn(i64, i64, i64),
    /// `uir`: start dw kernel (0: none), mid dw kernel, stride, expansion, output channels.
    Uir(i64, i64, i64, i64, i64),
}

/// `mobilenetv4_conv_small`'s arch_def (repeats expanded).
fn arch() -> Vec<Vec<Blk>> {
    use Blk::*;
    let mut s3 = vec![
        Uir(3, 3, 2, 6, 128),
        Uir(5, 5, 1, 4, 128),
        Uir(0, 5, 1, 4, 128),
        Uir(0, 5, 1, 3, 128),
    ];
    s3.extend([Uir(0, 3, 1, 4, 128); 2]);
    let mut s2 = vec![Uir(5, 5, 2, 3, 96)];
    s2.extend([Uir(0, 3, 1, 2, 96); 4]);
    s2.push(Uir(3, 0, 1, 4, 96));
    vec![
        vec![Cn(3, 2, 32), Cn(1, 1, 32)],
        vec![Cn(3, 2, 96), Cn(1, 1, 64)],
        s2,
        s3,
        vec![Cn(1, 1, 960)],
    ]
}

fn cba(p: &nn::Path, names: (&str, &str), c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    ConvBn::new(p, names, c_in, c_out, k, stride, groups, BN)
}

/// timm's `make_divisible(v, 8)` (as torchvision's).
fn divisible(v: i64) -> i64 {
    super::mobilenetv3::make_divisible(v as f64, 8)
}

/// A block under `p`; returns it and its output channels.
fn block(p: &nn::Path, b: Blk, c_in: i64) -> (Layer, i64) {
    match b {
        Blk::Cn(k, stride, c_out) => {
            let c = cba(p, ("conv", "bn1"), c_in, c_out, k, stride, 1);
            (Box::new(move |x, train| c.forward(x, train).relu()), c_out)
        }
        Blk::Uir(start, mid, stride, e, c_out) => {
            let m = divisible(c_in * e);
            let dw_start = (start > 0).then(|| {
                cba(
                    &(p / "dw_start"),
                    ("conv", "bn"),
                    c_in,
                    c_in,
                    start,
                    if mid > 0 { 1 } else { stride },
                    c_in,
                )
            });
            let pw_exp = cba(&(p / "pw_exp"), ("conv", "bn"), c_in, m, 1, 1, 1);
            let dw_mid = (mid > 0).then(|| cba(&(p / "dw_mid"), ("conv", "bn"), m, m, mid, stride, m));
            let pw_proj = cba(&(p / "pw_proj"), ("conv", "bn"), m, c_out, 1, 1, 1);
            let skip = stride == 1 && c_in == c_out;
            (
                Box::new(move |x, train| {
                    let mut y = match &dw_start {
                        Some(c) => c.forward(x, train),
                        None => x.shallow_clone(),
                    };
                    y = pw_exp.forward(&y, train).relu();
                    if let Some(c) = &dw_mid {
                        y = c.forward(&y, train).relu();
                    }
                    y = pw_proj.forward(&y, train);
                    if skip {
                        y + x
                    } else {
                        y
                    }
                }),
                c_out,
            )
        }
    }
}

/// MobileNetV4-Conv-Small's trunk plus its head's `conv_head` / `norm_head`.
pub struct MobileNetV4 {
    layers: Vec<Layer>,
    strides: Vec<i64>,
    chans: Vec<i64>,
    head: ConvBn,
}

impl MobileNetV4 {
    pub fn conv_small(p: &nn::Path) -> Self {
        let stem = cba(p, ("conv_stem", "bn1"), 3, STEM, 3, 2, 1);
        let mut layers: Vec<Layer> = vec![Box::new(move |x, train| stem.forward(x, train).relu())];
        let mut strides = vec![2];
        let mut chans = vec![STEM];
        let mut c = STEM;
        for (s, stage) in arch().into_iter().enumerate() {
            let mut stride = *strides.last().unwrap();
            let blocks: Vec<Layer> = stage
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    stride *= match b {
                        Blk::Cn(_, s, _) | Blk::Uir(_, _, s, _, _) => s,
                    };
                    let (l, c_out) = block(&(p / "blocks" / s / i), b, c);
                    c = c_out;
                    l
                })
                .collect();
            layers.push(Box::new(move |x, train| {
                let mut x = x.shallow_clone();
                for b in &blocks {
                    x = b(&x, train);
                }
                x
            }));
            strides.push(stride);
            chans.push(c);
        }
        let head = ConvBn {
            conv: super::conv(p / "conv_head", c, HEAD, 1, 1, 1, false),
            bn: super::bn(p / "norm_head", HEAD, BN.0, BN.1),
        };
        MobileNetV4 {
            layers,
            strides,
            chans,
            head,
        }
    }
}

impl Backbone for MobileNetV4 {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        let (maps, last) = run_staged(&self.layers, &self.strides, xs, train);
        let pooled = last.adaptive_avg_pool2d([1, 1]);
        let pooled = self.head.forward(&pooled, train).relu().flatten(1, -1);
        Features { maps, pooled }
    }
    fn map_channels(&self) -> Vec<i64> {
        super::stage_taps(&self.strides)
            .into_iter()
            .map(|i| self.chans[i])
            .collect()
    }
    fn pooled_dim(&self) -> i64 {
        HEAD
    }
}

/// timm's `mobilenetv4_conv_small(num_classes=1)`; head `classifier`.
pub fn classifier(p: &nn::Path) -> Classifier {
    let body = MobileNetV4::conv_small(p);
    let fc = nn::linear(p / "classifier", HEAD, 1, Default::default());
    Classifier::with_head(
        Box::new(body),
        Box::new(move |v, _| v.apply(&fc)),
        vec!["classifier.weight".into(), "classifier.bias".into()],
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn mobilenetv4_conv_small_matches_timm() {
        let _g = crate::torch_serial();
        let r = reference(
            "timm",
            "mobilenetv4_conv_small",
            64,
            &[
                "--map", "blocks.1", "--map", "blocks.2", "--map", "blocks.4", "--pooled", "flatten",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root());
        assert_same_names(&vs, &r.weights, |_| false);
        crate::nets::load_exact(&vs, &r.weights, "mobilenetv4_conv_small").unwrap();
        let x = r.get("__input");
        let y = tch::no_grad(|| c.module.logit(x, false));
        assert_close("mobilenetv4_conv_small logit", &y, r.get("__output"), 1e-4);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = MobileNetV4::conv_small(&vs.root());
        assert_same_names(&vs, &r.weights, |k| k.starts_with("classifier."));
        crate::nets::load_exact(&vs, &r.weights, "mobilenetv4_conv_small").unwrap();
        let f = tch::no_grad(|| b.features(x, false));
        for (i, m) in f.maps.iter().enumerate() {
            assert_close(
                &format!("mobilenetv4_conv_small map {i}"),
                m,
                r.get(&format!("__map.{i}")),
                1e-4,
            );
        }
        assert_close("mobilenetv4_conv_small pooled", &f.pooled, r.get("__pooled"), 1e-4);
    }

    #[test]
    fn mobilenetv4_conv_small_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root());
        assert_grads(&vs, &[c.module.logit(&x, true)]);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = MobileNetV4::conv_small(&vs.root());
        assert_eq!(b.map_channels(), [64, 96, 960]);
        let f = b.features(&x, false);
        let got: Vec<(i64, i64)> = f.maps.iter().map(|m| (m.size()[1], m.size()[2])).collect();
        assert_eq!(got, [(64, 8), (96, 4), (960, 2)]);
        assert_eq!(f.pooled.size(), [2, 1280]);
    }
}
