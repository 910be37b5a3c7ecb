//! torchvision's `convnext_tiny`: names `features.0.0` (4×4/4 stem conv), `features.0.1`
//! (LayerNorm2d), stages `features.1/3/5/7` of CNBlocks (`block.0` 7×7 depthwise conv,
//! `block.2` LayerNorm, `block.3`/`block.5` Linear, `layer_scale`), downsamplings
//! `features.2/4/6` (`.0` LayerNorm2d, `.1` 2×2/2 conv), head `classifier.0` (LayerNorm2d)
//! and `classifier.2` (Linear).

use tch::{nn, Tensor};

use super::{global_avg, layer_norm2d, linear02, run_staged, stochastic_depth, Backbone, Classifier, Features, Layer};

/// torchvision's default stochastic depth for `convnext_tiny` (linearly increasing per block).
const STOCHASTIC_DEPTH: f64 = 0.1;
const EPS: f64 = 1e-6;

/// A ConvNeXt trunk plus its head's `classifier.0` LayerNorm (so `pooled` is what
/// `classifier.2` reads).
pub struct ConvNeXt {
    layers: Vec<Layer>,
    strides: Vec<i64>,
    norm: nn::LayerNorm,
    dims: Vec<i64>,
}

fn conv02(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, groups: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            stride,
            padding,
            groups,
            bias: true,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        },
    )
}

fn ln(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps: EPS,
            ..Default::default()
        },
    )
}

/// A CNBlock under `p` (torchvision's `features.<s>.<b>`), dropping its residual branch
/// with probability `sd` in training.
fn cn_block(p: &nn::Path, dim: i64, sd: f64) -> Layer {
    let q = p / "block";
    let dw = conv02(&q / 0, dim, dim, 7, 1, 3, dim);
    let norm = ln(&q / 2, dim);
    let fc1 = linear02(&q / 3, dim, 4 * dim);
    let fc2 = linear02(&q / 5, 4 * dim, dim);
    let scale = p.var("layer_scale", &[dim, 1, 1], nn::Init::Const(1e-6));
    Box::new(move |x, train| {
        let y = x
            .apply(&dw)
            .permute([0, 2, 3, 1])
            .apply(&norm)
            .apply(&fc1)
            .gelu("none")
            .apply(&fc2)
            .permute([0, 3, 1, 2]);
        stochastic_depth(&(&scale * y), sd, train) + x
    })
}

impl ConvNeXt {
    /// `convnext_tiny`: depths [3, 3, 9, 3], dims [96, 192, 384, 768].
    pub fn tiny(p: &nn::Path) -> Self {
        Self::new(p, &[3, 3, 9, 3], &[96, 192, 384, 768])
    }

    pub fn new(p: &nn::Path, depths: &[i64], dims: &[i64]) -> Self {
        let f = p / "features";
        let mut layers: Vec<Layer> = Vec::new();
        let mut strides = Vec::new();
        let stem_conv = conv02(&f / 0 / 0, 3, dims[0], 4, 4, 0, 1);
        let stem_norm = ln(&f / 0 / 1, dims[0]);
        layers.push(Box::new(move |x, _| layer_norm2d(&x.apply(&stem_conv), &stem_norm)));
        strides.push(4);
        let total: i64 = depths.iter().sum();
        let mut block_id = 0;
        for (s, (&depth, &dim)) in depths.iter().zip(dims).enumerate() {
            let idx = 2 * s as i64 + 1;
            let blocks: Vec<Layer> = (0..depth)
                .map(|b| {
                    let sd = STOCHASTIC_DEPTH * block_id as f64 / (total - 1) as f64;
                    block_id += 1;
                    cn_block(&(&f / idx / b), dim, sd)
                })
                .collect();
            layers.push(Box::new(move |x, train| {
                let mut x = x.shallow_clone();
                for b in &blocks {
                    x = b(&x, train);
                }
                x
            }));
            let stride = *strides.last().unwrap();
            strides.push(stride);
            if s + 1 < depths.len() {
                let norm = ln(&f / (idx + 1) / 0, dim);
                let down = conv02(&f / (idx + 1) / 1, dim, dims[s + 1], 2, 2, 0, 1);
                layers.push(Box::new(move |x, _| layer_norm2d(x, &norm).apply(&down)));
                strides.push(stride * 2);
            }
        }
        let norm = ln(p / "classifier" / 0, *dims.last().unwrap());
        ConvNeXt {
            layers,
            strides,
            norm,
            dims: dims.to_vec(),
        }
    }
}

impl Backbone for ConvNeXt {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        let (maps, last) = run_staged(&self.layers, &self.strides, xs, train);
        let pooled = global_avg(&last).apply(&self.norm);
        Features { maps, pooled }
    }
    fn map_channels(&self) -> Vec<i64> {
        // Stages at strides 8, 16, 32: dims 1..
        self.dims[1..].to_vec()
    }
    fn pooled_dim(&self) -> i64 {
        *self.dims.last().unwrap()
    }
}

/// torchvision's `convnext_tiny(num_classes=1)`; head `classifier.2`.
pub fn classifier(p: &nn::Path) -> Classifier {
    let body = ConvNeXt::tiny(p);
    let fc = linear02(p / "classifier" / 2, body.pooled_dim(), 1);
    Classifier::with_head(
        Box::new(body),
        Box::new(move |v, _| v.apply(&fc)),
        vec!["classifier.2.weight".into(), "classifier.2.bias".into()],
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn convnext_tiny_matches_torchvision() {
        let _g = crate::torch_serial();
        let r = reference(
            "torchvision",
            "convnext_tiny",
            64,
            &[
                "--map",
                "features.3",
                "--map",
                "features.5",
                "--map",
                "features.7",
                "--pooled",
                "classifier.1",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root());
        assert_eq!(c.head, ["classifier.2.weight", "classifier.2.bias"]);
        assert_same_names(&vs, &r.weights, |_| false);
        crate::nets::load_exact(&vs, &r.weights, "convnext_tiny").unwrap();
        let x = r.get("__input");
        let y = tch::no_grad(|| c.module.logit(x, false));
        assert_close("convnext_tiny logit", &y, r.get("__output"), 1e-4);
        // A negative control: one changed weight shows.
        tch::no_grad(|| {
            let _ = vs.variables()["features.5.4.layer_scale"]
                .shallow_clone()
                .g_mul_scalar_(1.01);
        });
        let y2 = tch::no_grad(|| c.module.logit(x, false));
        assert!(rel_diff(&y2, &r.get("__output").view([-1])) > 1e-5);

        // The backbone: the same names but the head's last linear, the same features.
        let vs = nn::VarStore::new(Device::Cpu);
        let b = ConvNeXt::tiny(&vs.root());
        assert_same_names(&vs, &r.weights, |k| k.starts_with("classifier.2."));
        crate::nets::load_exact(&vs, &r.weights, "convnext_tiny").unwrap();
        let f = tch::no_grad(|| b.features(x, false));
        for (i, m) in f.maps.iter().enumerate() {
            assert_close(&format!("convnext_tiny map {i}"), m, r.get(&format!("__map.{i}")), 1e-4);
        }
        assert_close("convnext_tiny pooled", &f.pooled, r.get("__pooled"), 1e-4);
    }

    #[test]
    fn convnext_tiny_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root());
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_grads(&vs, &[c.module.logit(&x, true)]);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = ConvNeXt::tiny(&vs.root());
        let f = b.features(&x, false);
        let chans: Vec<i64> = f.maps.iter().map(|m| m.size()[1]).collect();
        assert_eq!(chans, b.map_channels());
        let sides: Vec<i64> = f.maps.iter().map(|m| m.size()[2]).collect();
        assert_eq!(sides, [8, 4, 2]);
        assert_eq!(f.pooled.size(), [2, b.pooled_dim()]);
    }
}
