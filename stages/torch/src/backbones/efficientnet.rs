//! torchvision's EfficientNet-B0..B3 as a feature backbone (names as `tch::vision::efficientnet`
//! and torchvision: `features.0` stem, `features.1`..`features.7` MBConv stages
//! `features.<s>.<b>.block.<j>` (`.0` conv, `.1` batch norm; squeeze-excitation `fc1`/`fc2`),
//! `features.8` last conv). Unlike `tch::vision`'s, it pads as torchvision does
//! (symmetric `k / 2`), uses torchvision's batch-norm settings for B0..B3 (eps 1e-5,
//! momentum 0.1) and stochastic depth (0.2, increasing per block) in training, so converted
//! torchvision weights give torchvision's features. Maps: the outputs of `features.3`,
//! `features.5`, `features.8` (strides 8, 16, 32); pooled: the global average of
//! `features.8`'s (what `classifier.1` reads).

use tch::{nn, Tensor};

use super::mobilenetv3::make_divisible;
use super::{global_avg, run_staged, stochastic_depth, Backbone, BnCfg, ConvBn, Features, Layer};

const BN: BnCfg = (1e-5, 0.1);
const STOCHASTIC_DEPTH: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    B0,
    B1,
    B2,
    B3,
}

impl Variant {
    /// (width, depth) multipliers.
    fn mults(self) -> (f64, f64) {
        match self {
            Variant::B0 => (1.0, 1.0),
            Variant::B1 => (1.0, 1.1),
            Variant::B2 => (1.1, 1.2),
            Variant::B3 => (1.2, 1.4),
        }
    }
}

/// expand ratio, kernel, stride, input, output channels, layers (before the multipliers).
const STAGES: [(i64, i64, i64, i64, i64, i64); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

fn conv_bn(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    ConvBn::new(p, ("0", "1"), c_in, c_out, k, stride, groups, BN)
}

fn mbconv(p: &nn::Path, expand: i64, k: i64, stride: i64, c_in: i64, c_out: i64, sd: f64) -> Layer {
    let q = p / "block";
    let exp = make_divisible((c_in * expand) as f64, 8);
    let mut i = 0;
    let expand = (exp != c_in).then(|| {
        i += 1;
        conv_bn(&(&q / 0), c_in, exp, 1, 1, 1)
    });
    let dw = conv_bn(&(&q / i), exp, exp, k, stride, exp);
    let sq = (c_in / 4).max(1);
    let fc1 = super::conv(&q / (i + 1) / "fc1", exp, sq, 1, 1, 1, true);
    let fc2 = super::conv(&q / (i + 1) / "fc2", sq, exp, 1, 1, 1, true);
    let project = conv_bn(&(&q / (i + 2)), exp, c_out, 1, 1, 1);
    let residual = stride == 1 && c_in == c_out;
    Box::new(move |x, train| {
        let y = match &expand {
            Some(e) => e.forward(x, train).silu(),
            None => x.shallow_clone(),
        };
        let y = dw.forward(&y, train).silu();
        let s = y.adaptive_avg_pool2d([1, 1]).apply(&fc1).silu().apply(&fc2).sigmoid();
        let y = project.forward(&(y * s), train);
        if residual {
            stochastic_depth(&y, sd, train) + x
        } else {
            y
        }
    })
}

pub struct EfficientNet {
    layers: Vec<Layer>,
    strides: Vec<i64>,
    chans: Vec<i64>,
}

impl EfficientNet {
    pub fn new(p: &nn::Path, variant: Variant) -> Self {
        let (w, d) = variant.mults();
        let ch = |c: i64| make_divisible(c as f64 * w, 8);
        let depth = |n: i64| (n as f64 * d).ceil() as i64;
        let f = p / "features";
        let first = ch(STAGES[0].3);
        let stem = conv_bn(&(&f / 0), 3, first, 3, 2, 1);
        let mut layers: Vec<Layer> = vec![Box::new(move |x, train| stem.forward(x, train).silu())];
        let mut strides = vec![2];
        let mut chans = vec![first];
        let total: i64 = STAGES.iter().map(|s| depth(s.5)).sum();
        let mut block_id = 0;
        for (s, &(e, k, stride, c_in, c_out, n)) in STAGES.iter().enumerate() {
            let (mut c_in, c_out) = (ch(c_in), ch(c_out));
            let blocks: Vec<Layer> = (0..depth(n))
                .map(|b| {
                    let sd = STOCHASTIC_DEPTH * block_id as f64 / total as f64;
                    block_id += 1;
                    let l = mbconv(
                        &(&f / (s + 1) / b),
                        e,
                        k,
                        if b == 0 { stride } else { 1 },
                        c_in,
                        c_out,
                        sd,
                    );
                    c_in = c_out;
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
            strides.push(strides.last().unwrap() * stride);
            chans.push(c_out);
        }
        let last_in = *chans.last().unwrap();
        let last = conv_bn(&(&f / 8), last_in, 4 * last_in, 1, 1, 1);
        layers.push(Box::new(move |x, train| last.forward(x, train).silu()));
        strides.push(*strides.last().unwrap());
        chans.push(4 * last_in);
        EfficientNet { layers, strides, chans }
    }
}

impl Backbone for EfficientNet {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        let (maps, last) = run_staged(&self.layers, &self.strides, xs, train);
        Features {
            maps,
            pooled: global_avg(&last),
        }
    }
    fn map_channels(&self) -> Vec<i64> {
        super::stage_taps(&self.strides)
            .into_iter()
            .map(|i| self.chans[i])
            .collect()
    }
    fn pooled_dim(&self) -> i64 {
        *self.chans.last().unwrap()
    }
}

/// torchvision's `efficientnet_b0`..`b3` classifier: the features, then
/// `classifier = Sequential(Dropout(0.2 | 0.2 | 0.3 | 0.3), Linear(C, 1))`, the linear
/// initialised uniform(±1/√out) as torchvision does.
pub fn classifier(p: &nn::Path, variant: Variant) -> super::Classifier {
    let body = EfficientNet::new(p, variant);
    let dropout = match variant {
        Variant::B0 | Variant::B1 => 0.2,
        Variant::B2 | Variant::B3 => 0.3,
    };
    let fc = nn::linear(
        p / "classifier" / 1,
        body.pooled_dim(),
        1,
        nn::LinearConfig {
            ws_init: nn::Init::Uniform { lo: -1.0, up: 1.0 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    );
    super::Classifier::with_head(
        Box::new(body),
        Box::new(move |v, train| v.dropout(dropout, train).apply(&fc)),
        ["classifier.1.weight", "classifier.1.bias"].map(String::from).to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::{Device, Kind};

    fn matches_torchvision(variant: Variant, name: &str) {
        let _g = crate::torch_serial();
        let r = reference(
            "torchvision",
            name,
            64,
            &[
                "--map",
                "features.3",
                "--map",
                "features.5",
                "--map",
                "features.8",
                "--pooled",
                "avgpool",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let b = EfficientNet::new(&vs.root(), variant);
        assert_same_names(&vs, &r.weights, |k| k.starts_with("classifier."));
        crate::nets::load_exact(&vs, &r.weights, name).unwrap();
        assert_features_match(&b, &r, name);
        // The whole classifier (what `Train(model: EfficientNetB0)` builds): same names, head
        // included, and torchvision's logit.
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root(), variant);
        assert_eq!(c.head, ["classifier.1.weight", "classifier.1.bias"]);
        assert_same_names(&vs, &r.weights, |_| false);
        crate::nets::load_exact(&vs, &r.weights, name).unwrap();
        let y = tch::no_grad(|| c.module.logit(r.get("__input"), false));
        assert_close(&format!("{name} logit"), &y, r.get("__output"), 1e-4);
    }

    #[test]
    fn efficientnet_b0_features_match_torchvision() {
        matches_torchvision(Variant::B0, "efficientnet_b0");
    }

    #[test]
    fn efficientnet_b3_features_match_torchvision() {
        matches_torchvision(Variant::B3, "efficientnet_b3");
    }

    #[test]
    fn efficientnet_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        for (v, chans) in [
            (Variant::B0, [40, 112, 1280]),
            (Variant::B1, [40, 112, 1280]),
            (Variant::B2, [48, 120, 1408]),
            (Variant::B3, [48, 136, 1536]),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let b = EfficientNet::new(&vs.root(), v);
            assert_eq!(b.map_channels(), chans, "{v:?}");
            if v != Variant::B0 {
                continue;
            }
            let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            let f = b.features(&x, true);
            let got: Vec<(i64, i64)> = f.maps.iter().map(|m| (m.size()[1], m.size()[2])).collect();
            assert_eq!(got, [(chans[0], 8), (chans[1], 4), (chans[2], 2)], "{v:?}");
            assert_eq!(f.pooled.size(), [2, b.pooled_dim()]);
            let mut outs = f.maps;
            outs.push(f.pooled);
            assert_grads(&vs, &outs);
        }
    }
}
