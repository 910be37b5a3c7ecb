//! timm's `vit_small_patch16_224` (embed 384, depth 12, 6 heads, MLP 4×, qkv bias,
//! LayerNorm eps 1e-6, exact GELU, CLS-token pooling): names `cls_token`, `pos_embed`,
//! `patch_embed.proj`, `blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`,
//! `norm`, head `head`. Position embeddings are made for the image size the net is built
//! for; [`resize_pos_embed`] resamples a checkpoint's (224 px: a 14×14 grid) as timm does.

use tch::{nn, Kind, Tensor};

use super::{linear02, Backbone, Classifier, Features};

const EPS: f64 = 1e-6;
const PATCH: i64 = 16;

struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
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

impl Block {
    fn new(p: &nn::Path, dim: i64, heads: i64, mlp: i64) -> Self {
        Block {
            norm1: ln(p / "norm1", dim),
            qkv: linear02(p / "attn" / "qkv", dim, 3 * dim),
            proj: linear02(p / "attn" / "proj", dim, dim),
            norm2: ln(p / "norm2", dim),
            fc1: linear02(p / "mlp" / "fc1", dim, mlp),
            fc2: linear02(p / "mlp" / "fc2", mlp, dim),
            heads,
        }
    }

    /// The block's output and its `norm1` output (the tensor Grad-CAM targets).
    fn forward_tap(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (b, n, d) = x.size3().unwrap();
        let hd = d / self.heads;
        let normed = x.apply(&self.norm1);
        let qkv = normed
            .apply(&self.qkv)
            .reshape([b, n, 3, self.heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false)
            .transpose(1, 2)
            .reshape([b, n, d])
            .apply(&self.proj);
        let x = x + a;
        let m = x.apply(&self.norm2).apply(&self.fc1).gelu("none").apply(&self.fc2);
        (x + m, normed)
    }
}

/// A ViT trunk with its final `norm`: maps = the patch tokens `[N, D, H/16, W/16]`, pooled =
/// the CLS token (both after `norm`).
pub struct Vit {
    patch: nn::Conv2D,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    dim: i64,
}

impl Vit {
    /// `vit_small_patch16_224`'s architecture for `size`-pixel inputs (a multiple of 16).
    pub fn small16(p: &nn::Path, size: i64) -> Result<Self, String> {
        Self::new(p, size, 384, 12, 6)
    }

    pub fn new(p: &nn::Path, size: i64, dim: i64, depth: i64, heads: i64) -> Result<Self, String> {
        if size <= 0 || size % PATCH != 0 {
            return Err(format!(
                "a ViT with {PATCH}-pixel patches needs a size divisible by {PATCH}, not {size}"
            ));
        }
        let grid = size / PATCH;
        let patch = nn::conv2d(
            p / "patch_embed" / "proj",
            3,
            dim,
            PATCH,
            nn::ConvConfig {
                stride: PATCH,
                ..Default::default()
            },
        );
        let cls = p.var("cls_token", &[1, 1, dim], nn::Init::Randn { mean: 0.0, stdev: 1e-6 });
        let pos = p.var(
            "pos_embed",
            &[1, 1 + grid * grid, dim],
            nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        );
        let blocks = (0..depth)
            .map(|i| Block::new(&(p / "blocks" / i), dim, heads, 4 * dim))
            .collect();
        let norm = ln(p / "norm", dim);
        Ok(Vit {
            patch,
            cls,
            pos,
            blocks,
            norm,
            dim,
        })
    }
}

impl Backbone for Vit {
    fn features(&self, xs: &Tensor, train: bool) -> Features {
        self.cam_features(xs, train).0
    }
    /// The tap is the last block's `norm1` output (timm users' `blocks[-1].norm1`), its patch
    /// tokens reshaped to the grid as pytorch-grad-cam's `reshape_transform` does.
    fn cam_features(&self, xs: &Tensor, _train: bool) -> (Features, Vec<Tensor>) {
        let t = xs.apply(&self.patch);
        let (b, d, gh, gw) = t.size4().unwrap();
        let t = t.flatten(2, 3).transpose(1, 2);
        let mut x = Tensor::cat(&[self.cls.expand([b, 1, d], false), t], 1) + &self.pos;
        let grid = |x: &Tensor| x.narrow(1, 1, gh * gw).transpose(1, 2).reshape([b, d, gh, gw]);
        let mut tap = None;
        for blk in &self.blocks {
            let (y, normed) = blk.forward_tap(&x);
            tap = Some(normed);
            x = y;
        }
        let x = x.apply(&self.norm);
        let pooled = x.select(1, 0);
        let f = Features {
            maps: vec![grid(&x)],
            pooled,
        };
        (f, tap.iter().map(grid).collect())
    }
    fn map_channels(&self) -> Vec<i64> {
        vec![self.dim]
    }
    fn pooled_dim(&self) -> i64 {
        self.dim
    }
}

/// timm's `vit_small_patch16_224(num_classes=1, img_size=size)`; head `head`.
pub fn classifier(p: &nn::Path, size: i64) -> Result<Classifier, String> {
    let body = Vit::small16(p, size)?;
    let head = linear02(p / "head", body.dim, 1);
    Ok(Classifier::with_head(
        Box::new(body),
        Box::new(move |v, _| v.apply(&head)),
        vec!["head.weight".into(), "head.bias".into()],
    ))
}

/// A ViT position embedding `[1, 1 + g·g, D]` (one CLS token) resampled to a `grid`×`grid`
/// patch grid as timm's `resample_abs_pos_embed` does (bicubic with antialiasing on the
/// grid part, the CLS entry kept), so a 224-pixel checkpoint (g = 14) loads at another size.
/// Returned as is when the grid already fits.
pub fn resize_pos_embed(t: &Tensor, grid: i64) -> Tensor {
    let (one, n, d) = t.size3().expect("a [1, 1 + g*g, D] position embedding");
    let old = ((n - 1) as f64).sqrt().round() as i64;
    assert!(
        one == 1 && old * old == n - 1,
        "not a [1, 1 + g*g, D] position embedding: {:?}",
        t.size()
    );
    if old == grid {
        return t.shallow_clone();
    }
    let kind = t.kind();
    let cls = t.narrow(1, 0, 1);
    let g = t
        .narrow(1, 1, n - 1)
        .to_kind(Kind::Float)
        .reshape([1, old, old, d])
        .permute([0, 3, 1, 2])
        .internal_upsample_bicubic2d_aa([grid, grid], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, grid * grid, d])
        .to_kind(kind);
    Tensor::cat(&[cls, g], 1)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use tch::Device;

    #[test]
    fn vit_s16_matches_timm() {
        let _g = crate::torch_serial();
        let r = reference(
            "timm",
            "vit_small_patch16_224",
            64,
            &[
                "--img-size",
                "64",
                "--vit-map",
                "norm",
                "--pooled",
                "head_drop",
                "--pos-embed",
            ],
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root(), 64).unwrap();
        assert_eq!(c.head, ["head.weight", "head.bias"]);
        assert_same_names(&vs, &r.weights, |_| false);
        crate::nets::load_exact(&vs, &r.weights, "vit_small_patch16_224").unwrap();
        let x = r.get("__input");
        let y = tch::no_grad(|| c.module.logit(x, false));
        assert_close("vit_s16 logit", &y, r.get("__output"), 1e-4);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = Vit::small16(&vs.root(), 64).unwrap();
        assert_same_names(&vs, &r.weights, |k| k.starts_with("head."));
        crate::nets::load_exact(&vs, &r.weights, "vit_small_patch16_224").unwrap();
        let f = tch::no_grad(|| b.features(x, false));
        assert_eq!(f.maps.len(), 1);
        assert_close("vit_s16 map", &f.maps[0], r.get("__map.0"), 1e-4);
        assert_close("vit_s16 pooled", &f.pooled, r.get("__pooled"), 1e-4);

        // A 224-px checkpoint's 14x14 embedding, resampled to 4x4 as timm does.
        let got = resize_pos_embed(r.get("__pos_src"), 4);
        assert_close("resize_pos_embed 14->4", &got, r.get("__pos_dst"), 1e-5);
        let same = resize_pos_embed(r.get("__pos_src"), 14);
        assert_eq!(same.size(), [1, 197, 384]);
    }

    #[test]
    fn vit_s16_names_at_224() {
        let _g = crate::torch_serial();
        let vs = nn::VarStore::new(Device::Cpu);
        let _c = classifier(&vs.root(), 224).unwrap();
        let v = vs.variables();
        assert_eq!(v["pos_embed"].size(), [1, 197, 384]);
        assert_eq!(v["cls_token"].size(), [1, 1, 384]);
        assert_eq!(v["patch_embed.proj.weight"].size(), [384, 3, 16, 16]);
        // timm's vit_small_patch16_224 has 152 tensors: 4 + 12 blocks x 12 + norm 2 + head 2.
        assert_eq!(v.len(), 4 + 12 * 12 + 2 + 2);
        assert!(classifier(&vs.root(), 40).is_err());
    }

    #[test]
    fn vit_s16_shapes_and_gradients() {
        let _g = crate::torch_serial();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let c = classifier(&vs.root(), 32).unwrap();
        assert_grads(&vs, &[c.module.logit(&x, true)]);

        let vs = nn::VarStore::new(Device::Cpu);
        let b = Vit::small16(&vs.root(), 32).unwrap();
        let f = b.features(&x, false);
        assert_eq!(f.maps[0].size(), [2, 384, 2, 2]);
        assert_eq!(b.map_channels(), [384]);
        assert_eq!(f.pooled.size(), [2, b.pooled_dim()]);
    }
}
