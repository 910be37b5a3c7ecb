//! torchvision's `mobilenet_v3_small` / `mobilenet_v3_large`: names `features.0` (stem
//! `.0` conv, `.1` batch norm), inverted residuals `features.<i>.block.<j>` (`.0` conv, `.1`
//! batch norm; squeeze-excitation `fc1`/`fc2`), `features.12` / `features.16` (last conv),
//! head `classifier.0` (Linear), hardswish, dropout 0.2, `classifier.3` (Linear).

use tch::{nn, Tensor};

use super::{global_avg, run_staged, Backbone, BnCfg, Classifier, ConvBn, Features, Layer};

/// torchvision's `BatchNorm2d(eps=0.001, momentum=0.01)`.
const BN: BnCfg = (0.001, 0.01);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Small,
    Large,
}

/// One inverted residual: input, kernel, expanded, output channels, squeeze-excitation,
/// hardswish (else ReLU), stride.
type Conf = (i64, i64, i64, i64, bool, bool, i64);

fn confs(arch: Arch) -> (Vec<Conf>, i64) {
    let (hs, re) = (true, false);
    match arch {
        Arch::Large => (
            vec![
                (16, 3, 16, 16, false, re, 1),
                (16, 3, 64, 24, false, re, 2),
                (24, 3, 72, 24, false, re, 1),
                (24, 5, 72, 40, true, re, 2),
                (40, 5, 120, 40, true, re, 1),
                (40, 5, 120, 40, true, re, 1),
                (40, 3, 240, 80, false, hs, 2),
                (80, 3, 200, 80, false, hs, 1),
                (80, 3, 184, 80, false, hs, 1),
                (80, 3, 184, 80, false, hs, 1),
                (80, 3, 480, 112, true, hs, 1),
                (112, 3, 672, 112, true, hs, 1),
                (112, 5, 672, 160, true, hs, 2),
                (160, 5, 960, 160, true, hs, 1),
                (160, 5, 960, 160, true, hs, 1),
            ],
            1280,
        ),
        Arch::Small => (
            vec![
                (16, 3, 16, 16, true, re, 2),
                (16, 3, 72, 24, false, re, 2),
                (24, 3, 88, 24, false, re, 1),
                (24, 5, 96, 40, true, hs, 2),
                (40, 5, 240, 40, true, hs, 1),
                (40, 5, 240, 40, true, hs, 1),
                (40, 5, 120, 48, true, hs, 1),
                (48, 5, 144, 48, true, hs, 1),
                (48, 5, 288, 96, true, hs, 2),
                (96, 5, 576, 96, true, hs, 1),
                (96, 5, 576, 96, true, hs, 1),
            ],
            1024,
        ),
    }
}

/// torchvision's `_make_divisible(v, 8)`.
pub(crate) fn make_divisible(v: f64, divisor: i64) -> i64 {
    let new_v = divisor.max((v + divisor as f64 / 2.0) as i64 / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v + divisor
    } else {
        new_v
    }
}

fn act(x: Tensor, hs: bool) -> Tensor {
    if hs {
        x.hardswish()
    } else {
        x.relu()
    }
}

fn conv_bn(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    ConvBn::new(p, ("0", "1"), c_in, c_out, k, stride, groups, BN)
}

fn inverted_residual(p: &nn::Path, c: Conf) -> Layer {
    let (c_in, k, exp, c_out, se, hs, stride) = c;
    let q = p / "block";
    let mut i = 0;
    let expand = (exp != c_in).then(|| {
        i += 1;
        conv_bn(&(&q / 0), c_in, exp, 1, 1, 1)
    });
    let dw = conv_bn(&(&q / i), exp, exp, k, stride, exp);
    i += 1;
    let se = se.then(|| {
        let sq = make_divisible((exp / 4) as f64, 8);
        let s = &q / i;
        i += 1;
        let fc1 = super::conv(&s / "fc1", exp, sq, 1, 1, 1, true);
        let fc2 = super::conv(&s / "fc2", sq, exp, 1, 1, 1, true);
        (fc1, fc2)
    });
    let project = conv_bn(&(&q / i), exp, c_out, 1, 1, 1);
    let residual = stride == 1 && c_in == c_out;
    Box::new(move |x, train| {
        let mut y = match &expand {
            Some(e) => act(e.forward(x, train), hs),
            None => x.shallow_clone(),
        };
        y = act(dw.forward(&y, train), hs);
        if let Some((fc1, fc2)) = &se {
            let s = y.adaptive_avg_pool2d([1, 1]).apply(fc1).relu().apply(fc2).hardsigmoid();
            y = y.g_mul(&s);
        }
        y = project.forward(&y, train);
        if residual {
            y + x
        } else {
            y
        }
    })
}

/// The MobileNetV3 trunk (`features.*`); `pooled` is the global average of the last conv,
/// which `classifier.0` reads.
pub struct MobileNetV3 {
    layers: Vec<Layer>,
    strides: Vec<i64>,
    chans: Vec<i64>,
    last_channel: i64,
}

impl MobileNetV3 {
    pub fn new(p: &nn::Path, arch: Arch) -> Self {
        let f = p / "features";
        let (confs, last_channel) = confs(arch);
        let mut layers: Vec<Layer> = Vec::new();
        let mut strides = vec![2];
        let mut chans = vec![16];
        let stem = conv_bn(&(&f / 0), 3, 16, 3, 2, 1);
        layers.push(Box::new(move |x, train| stem.forward(x, train).hardswish()));
        for (i, c) in confs.iter().enumerate() {
            layers.push(inverted_residual(&(&f / (i + 1)), *c));
            strides.push(strides.last().unwrap() * c.6);
            chans.push(c.3);
        }
        let c_in = confs.last().unwrap().3;
        let last = conv_bn(&(&f / (confs.len() + 1)), c_in, 6 * c_in, 1, 1, 1);
        layers.push(Box::new(move |x, train| last.forward(x, train).hardswish()));
        strides.push(*strides.last().unwrap());
        chans.push(6 * c_in);
        MobileNetV3 {
            layers,
            strides,
            chans,
            last_channel,
        }
    }
}

impl Backbone for MobileNetV3 {
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

/// torchvision's linear init for MobileNetV3's classifier: normal(0, 0.01), bias 0.
fn linear01(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

/// torchvision's `mobilenet_v3_<arch>(num_classes=1)`; head `classifier.0` and `classifier.3`.
pub fn classifier(p: &nn::Path, arch: Arch) -> Classifier {
    let body = MobileNetV3::new(p, arch);
    let fc0 = linear01(p / "classifier" / 0, body.pooled_dim(), body.last_channel);
    let fc3 = linear01(p / "classifier" / 3, body.last_channel, 1);
    Classifier::with_head(
        Box::new(body),
        Box::new(move |v, train| v.apply(&fc0).hardswish().dropout(0.2, train).apply(&fc3)),
        [
            "classifier.0.weight",
            "classifier.0.bias",
            "classifier.3.weight",
            "classifier.3.bias",
        ]
        .map(String::from)
        .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::{Device, Kind};

    fn matches_torchvision(arch: Arch, name: &str, taps: [&str; 3]) {
        let _g = crate::torch_serial();
        let r = reference(
            "torchvision",
            name,
            64,
            &[
                "--map", taps[0], "--map", taps[1], "--map", taps[2], "--pooled", "avgpool",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root(), arch);
        assert_same_names(&vs, &r.weights, |_| false);
        crate::nets::load_exact(&vs, &r.weights, name).unwrap();
        let x = r.get("__input");
        let y = tch::no_grad(|| c.module.logit(x, false));
        assert_close(&format!("{name} logit"), &y, r.get("__output"), 1e-4);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = MobileNetV3::new(&vs.root(), arch);
        assert_same_names(&vs, &r.weights, |k| k.starts_with("classifier."));
        crate::nets::load_exact(&vs, &r.weights, name).unwrap();
        let f = tch::no_grad(|| b.features(x, false));
        for (i, m) in f.maps.iter().enumerate() {
            assert_close(&format!("{name} map {i}"), m, r.get(&format!("__map.{i}")), 1e-4);
        }
        assert_close(&format!("{name} pooled"), &f.pooled, r.get("__pooled"), 1e-4);
    }

    #[test]
    fn mobilenet_v3_small_matches_torchvision() {
        matches_torchvision(
            Arch::Small,
            "mobilenet_v3_small",
            ["features.3", "features.8", "features.12"],
        );
    }

    #[test]
    fn mobilenet_v3_large_matches_torchvision() {
        matches_torchvision(
            Arch::Large,
            "mobilenet_v3_large",
            ["features.6", "features.12", "features.16"],
        );
    }

    #[test]
    fn mobilenet_v3_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        for (arch, chans) in [(Arch::Small, [24, 48, 576]), (Arch::Large, [40, 112, 960])] {
            let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            let vs = nn::VarStore::new(Device::Cpu);
            let c = classifier(&vs.root(), arch);
            assert_grads(&vs, &[c.module.logit(&x, true)]);

            let vs = nn::VarStore::new(Device::Cpu);
            let b = MobileNetV3::new(&vs.root(), arch);
            assert_eq!(b.map_channels(), chans);
            let f = b.features(&x, false);
            let got: Vec<(i64, i64)> = f.maps.iter().map(|m| (m.size()[1], m.size()[2])).collect();
            assert_eq!(got, [(chans[0], 8), (chans[1], 4), (chans[2], 2)], "{arch:?}");
            assert_eq!(f.pooled.size(), [2, b.pooled_dim()]);
        }
    }
}
