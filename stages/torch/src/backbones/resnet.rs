//! torchvision's ResNet18/34/50 as a feature backbone (names `conv1`, `bn1`,
//! `layer<i>.<j>.{conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0, downsample.1}`, as
//! `tch::vision::resnet`): maps are the outputs of `layer2`, `layer3`, `layer4` (strides 8,
//! 16, 32), pooled is the global average of `layer4`'s (what `fc` reads).

use tch::{nn, Tensor};

use super::{global_avg, run_staged, Backbone, ConvBn, Features, Layer};

/// torchvision's `BatchNorm2d` defaults.
const BN: super::BnCfg = (1e-5, 0.1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    R18,
    R34,
    R50,
}

impl Depth {
    fn blocks(self) -> [i64; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R34 | Depth::R50 => [3, 4, 6, 3],
        }
    }
    fn expansion(self) -> i64 {
        match self {
            Depth::R50 => 4,
            _ => 1,
        }
    }
}

fn cb(p: &nn::Path, conv: &str, bn: &str, c_in: i64, c_out: i64, k: i64, stride: i64) -> ConvBn {
    ConvBn::new(p, (conv, bn), c_in, c_out, k, stride, 1, BN)
}

/// A BasicBlock (expansion 1) or a Bottleneck (expansion 4, stride on the 3×3 conv).
/// `order` decides when the downsample's variables are created, which is what a seed's
/// random draws follow.
fn block(p: &nn::Path, c_in: i64, planes: i64, stride: i64, expansion: i64, order: Order) -> Layer {
    let c_out = planes * expansion;
    let make_down =
        || (stride != 1 || c_in != c_out).then(|| cb(&(p / "downsample"), "0", "1", c_in, c_out, 1, stride));
    let early = if order == Order::DownsampleFirst {
        make_down()
    } else {
        None
    };
    let convs: Vec<ConvBn> = if expansion == 1 {
        vec![
            cb(p, "conv1", "bn1", c_in, planes, 3, stride),
            cb(p, "conv2", "bn2", planes, planes, 3, 1),
        ]
    } else {
        vec![
            cb(p, "conv1", "bn1", c_in, planes, 1, 1),
            cb(p, "conv2", "bn2", planes, planes, 3, stride),
            cb(p, "conv3", "bn3", planes, c_out, 1, 1),
        ]
    };
    let down = if order == Order::DownsampleFirst {
        early
    } else {
        make_down()
    };
    Box::new(move |x, train| {
        let mut y = x.shallow_clone();
        for (i, c) in convs.iter().enumerate() {
            y = c.forward(&y, train);
            if i + 1 < convs.len() {
                y = y.relu();
            }
        }
        let short = match &down {
            Some(d) => d.forward(x, train),
            None => x.shallow_clone(),
        };
        (y + short).relu()
    })
}

/// When a block's downsample variables are created.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    DownsampleFirst,
    DownsampleLast,
}

pub struct ResNet {
    layers: Vec<Layer>,
    strides: Vec<i64>,
    chans: Vec<i64>,
}

impl ResNet {
    /// The backbone (Radar's, Spotter's): downsample variables created first, as it always did.
    pub fn new(p: &nn::Path, depth: Depth) -> Self {
        Self::with_order(p, depth, Order::DownsampleFirst)
    }

    /// `tch::vision::resnet`'s creation order (the downsample last), for the classifiers
    /// `nets::build` used to take from `tch::vision`: a seed gives the weights it gave.
    pub fn tch_order(p: &nn::Path, depth: Depth) -> Self {
        Self::with_order(p, depth, Order::DownsampleLast)
    }

    fn with_order(p: &nn::Path, depth: Depth, order: Order) -> Self {
        let stem = cb(p, "conv1", "bn1", 3, 64, 7, 2);
        let mut layers: Vec<Layer> = vec![Box::new(move |x, train| {
            stem.forward(x, train)
                .relu()
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        })];
        let mut strides = vec![4];
        let mut chans = vec![64];
        let e = depth.expansion();
        let mut c_in = 64;
        for (i, n) in depth.blocks().into_iter().enumerate() {
            let planes = 64 << i;
            let stride = if i == 0 { 1 } else { 2 };
            let q = p / format!("layer{}", i + 1);
            let blocks: Vec<Layer> = (0..n)
                .map(|j| {
                    let b = block(&(&q / j), c_in, planes, if j == 0 { stride } else { 1 }, e, order);
                    c_in = planes * e;
                    b
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
            chans.push(c_in);
        }
        ResNet { layers, strides, chans }
    }
}

impl Backbone for ResNet {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        let (maps, last) = run_staged(&self.layers, &self.strides, xs, train);
        Features {
            maps,
            pooled: global_avg(&last),
        }
    }
    fn map_channels(&self) -> Vec<i64> {
        self.chans[2..].to_vec()
    }
    fn pooled_dim(&self) -> i64 {
        *self.chans.last().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::{Device, Kind};

    fn matches_torchvision(depth: Depth, name: &str) {
        let _g = crate::torch_serial();
        let r = reference(
            "torchvision",
            name,
            64,
            &[
                "--map", "layer2", "--map", "layer3", "--map", "layer4", "--pooled", "avgpool",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let b = ResNet::new(&vs.root(), depth);
        assert_same_names(&vs, &r.weights, |k| k.starts_with("fc."));
        crate::nets::load_exact(&vs, &r.weights, name).unwrap();
        assert_features_match(&b, &r, name);
    }

    #[test]
    fn resnet18_features_match_torchvision() {
        matches_torchvision(Depth::R18, "resnet18");
    }

    #[test]
    fn resnet50_features_match_torchvision() {
        matches_torchvision(Depth::R50, "resnet50");
    }

    #[test]
    fn resnet_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        for (depth, chans) in [
            (Depth::R18, [128, 256, 512]),
            (Depth::R34, [128, 256, 512]),
            (Depth::R50, [512, 1024, 2048]),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let b = ResNet::new(&vs.root(), depth);
            assert_eq!(b.map_channels(), chans);
            let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            let f = b.features(&x, true);
            let got: Vec<(i64, i64)> = f.maps.iter().map(|m| (m.size()[1], m.size()[2])).collect();
            assert_eq!(got, [(chans[0], 8), (chans[1], 4), (chans[2], 2)], "{depth:?}");
            assert_eq!(f.pooled.size(), [2, b.pooled_dim()]);
            let mut outs = f.maps;
            outs.push(f.pooled);
            assert_grads(&vs, &outs);
        }
    }
}
