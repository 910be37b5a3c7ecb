//! RADAR's evidence modules (seed 003): boundary evidence (BADM: Sobel edges → CNN, plus
//! pooled patch tokens) and frequency evidence (AADM: high-passed log spectrum → CNN, plus the
//! CLS vector). Each gives an `evidence_dim` evidence vector and its own branch logit.
//!
//! Both fixed filters (Sobel, the spectral high-pass) are constants built on the fly, never
//! variables, and both read the pixels the model is given (after augmentation and ImageNet
//! normalisation): nothing is cached.
//!
//! Variables (under the `p` given to `new`, which RADAR makes `p / "badm"` / `p / "aadm"`):
//!
//! - BADM: `edge_encoder.{0,1,2}.{conv,bn}` (1→32→64→128), `patch.fc1` (2·C→128),
//!   `patch.fc2` (128→128), `fusion.fc1` (256→128), `fusion.fc2` (128→evidence_dim),
//!   `head` (evidence_dim→1); C is the backbone's last-map width.
//! - AADM: `freq_encoder.{0,1,2}.{conv,bn}` (1→32→64→128), `cls.fc1` (D→128), `cls.fc2`
//!   (128→128), `fusion.fc1`, `fusion.fc2`, `head` as BADM's; D is the backbone's pooled width.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::backbones::Features;

/// Width of the CNN encoders' output and of the MLPs' hidden/output layers.
const WIDTH: i64 = 128;

/// ITU-R BT.601 luma `0.299 R + 0.587 G + 0.114 B` of `[N, 3, H, W]` as given, `[N, 1, H, W]`.
///
/// The model receives ImageNet-normalised input and this is applied to it unchanged (no
/// de-normalisation): the Sobel and spectral filters that follow are linear apart from a
/// per-sample offset and scale, which the later per-sample steps (magnitude, min-max
/// normalisation, batch norm) make immaterial.
pub fn grayscale(xs: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .to_kind(xs.kind())
        .to_device(xs.device())
        .view([1, 3, 1, 1]);
    (xs * w).sum_dim_intlist([1i64].as_slice(), true, xs.kind())
}

/// Sobel edge magnitude of the grayscale of `xs` (see [`grayscale`]): `[N, 1, H, W]`,
/// `sqrt(gx² + gy² + 1e-6)` with the fixed 3×3 kernels `gx = [[-1,0,1],[-2,0,2],[-1,0,1]]`,
/// `gy = gxᵀ`, zero padding 1 (so the size is kept; the border sees the zero padding).
pub fn sobel_edges(xs: &Tensor) -> Tensor {
    let g = grayscale(xs);
    let k: [f32; 18] = [
        -1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0, // gx
        -1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0, // gy
    ];
    let k = Tensor::from_slice(&k)
        .to_kind(g.kind())
        .to_device(g.device())
        .view([2, 1, 3, 3]);
    let d = g.conv2d(&k, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
    (d.square().sum_dim_intlist([1i64].as_slice(), true, d.kind()) + 1e-6).sqrt()
}

/// Cut-off radius (in frequency bins from the centre) of the spectral high-pass: `fft_size / 8`.
pub fn highpass_radius(fft_size: i64) -> f64 {
    fft_size as f64 / 8.0
}

/// Width `w` of the high-pass's sigmoid transition: a quarter of the radius, `fft_size / 32`
/// (3.5 bins at the default 112): the mask goes from 0.12 to 0.88 over `r ± 2w`, i.e. over
/// one radius.
pub fn highpass_width(fft_size: i64) -> f64 {
    highpass_radius(fft_size) / 4.0
}

/// The fixed high-pass mask `[F, F]` (f32) for a centred (fftshifted) `F×F` spectrum:
/// `sigmoid((d − r) / w)`, `d` the distance of a bin from the zero-frequency bin `(F/2, F/2)`,
/// `r` = [`highpass_radius`], `w` = [`highpass_width`].
pub fn highpass_mask(fft_size: i64, device: tch::Device) -> Tensor {
    let f = fft_size;
    let c = (f / 2) as f64;
    let i = Tensor::arange(f, (Kind::Float, device)) - c;
    let d = (i.square().view([f, 1]) + i.square().view([1, f])).sqrt();
    ((d - highpass_radius(f)) / highpass_width(f)).sigmoid()
}

/// The high-passed log spectrum of `xs` before normalisation, `[N, 1, F, F]` f32: grayscale
/// (see [`grayscale`]), bilinear resize to `fft_size` (skipped when the image already is
/// `F×F`; no anti-aliasing, as `F.interpolate`), 2-D FFT, fftshift, `log(1 + |X|)`, times
/// [`highpass_mask`]. Always computed in f32 (also under autocast).
pub fn highpassed_log_spectrum(xs: &Tensor, fft_size: i64) -> Tensor {
    let g = grayscale(&xs.to_kind(Kind::Float)).to_kind(Kind::Float);
    let (h, w) = (g.size()[2], g.size()[3]);
    let g = if h == fft_size && w == fft_size {
        g
    } else {
        g.upsample_bilinear2d([fft_size, fft_size], false, None, None)
            .to_kind(Kind::Float)
    };
    let spec = g.fft_fft2(None::<&[i64]>, [-2i64, -1].as_slice(), "backward");
    let mag = spec.fft_fftshift([-2i64, -1].as_slice()).abs().log1p();
    mag * highpass_mask(fft_size, xs.device())
}

/// AADM's input: [`highpassed_log_spectrum`] min-max normalised per sample to `[0, 1]`
/// (`(s − min) / (max − min + 1e-8)`), `[N, 1, F, F]` f32.
pub fn frequency_spectrum(xs: &Tensor, fft_size: i64) -> Tensor {
    let s = highpassed_log_spectrum(xs, fft_size);
    let dims = [1i64, 2, 3];
    let lo = s.amin(dims.as_slice(), true);
    let hi = s.amax(dims.as_slice(), true);
    (s - &lo) / (hi - lo + 1e-8)
}

/// Three conv3×3-BN-ReLU blocks 1→32→64→128 under `p / i`, max-pool 2 after the first two,
/// then a global average: `[N, 1, H, W]` → `[N, 128]`.
struct ConvEncoder {
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
}

impl ConvEncoder {
    fn new(p: &nn::Path) -> Self {
        let chans = [1i64, 32, 64, WIDTH];
        let blocks = (0..3)
            .map(|i| {
                let q = p / i;
                let cfg = nn::ConvConfig {
                    padding: 1,
                    bias: false,
                    ..Default::default()
                };
                let conv = nn::conv2d(&q / "conv", chans[i], chans[i + 1], 3, cfg);
                let bn = nn::batch_norm2d(&q / "bn", chans[i + 1], Default::default());
                (conv, bn)
            })
            .collect();
        ConvEncoder { blocks }
    }
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        let last = self.blocks.len() - 1;
        for (i, (conv, bn)) in self.blocks.iter().enumerate() {
            x = x.apply(conv).apply_t(bn, train).relu();
            if i < last && x.size()[2] >= 2 && x.size()[3] >= 2 {
                x = x.max_pool2d_default(2);
            }
        }
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// `fc1` → ReLU → dropout → `fc2` under `p`.
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

impl Mlp {
    fn new(p: &nn::Path, d_in: i64, hidden: i64, d_out: i64, dropout: f64) -> Self {
        Mlp {
            fc1: nn::linear(p / "fc1", d_in, hidden, Default::default()),
            fc2: nn::linear(p / "fc2", hidden, d_out, Default::default()),
            dropout,
        }
    }
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        self.fc1
            .forward(xs)
            .relu()
            .dropout(self.dropout, train)
            .apply(&self.fc2)
    }
}

/// What an evidence module gives: its evidence vector `[N, evidence_dim]` and branch logit `[N]`.
pub struct Evidence {
    pub evidence: Tensor,
    pub logit: Tensor,
}

/// Evidence fusion shared by both modules: concat → `fusion` MLP (256→128→evidence_dim) →
/// dropout → evidence; `head` on the evidence gives the branch logit.
struct Fusion {
    mlp: Mlp,
    head: nn::Linear,
    dropout: f64,
}

impl Fusion {
    fn new(p: &nn::Path, evidence_dim: i64, dropout: f64) -> Self {
        Fusion {
            mlp: Mlp::new(&(p / "fusion"), 2 * WIDTH, WIDTH, evidence_dim, dropout),
            head: nn::linear(p / "head", evidence_dim, 1, Default::default()),
            dropout,
        }
    }
    fn forward(&self, a: &Tensor, b: &Tensor, train: bool) -> Evidence {
        let x = Tensor::cat(&[a, b], 1);
        let evidence = self.mlp.forward(&x, train).dropout(self.dropout, train);
        let logit = evidence.apply(&self.head).view([-1]);
        Evidence { evidence, logit }
    }
}

/// BADM: Sobel edges of the input → [`ConvEncoder`]; the backbone's last map as tokens
/// (`[N, C, h, w]` → `h·w` tokens of width C) → concat(mean, max) over tokens → `patch` MLP;
/// both fused into the evidence.
pub struct BoundaryEvidence {
    edge: ConvEncoder,
    patch: Mlp,
    fusion: Fusion,
}

impl BoundaryEvidence {
    /// `tokens_dim`: the width C of the backbone's last map.
    pub fn new(p: &nn::Path, tokens_dim: i64, evidence_dim: i64, dropout: f64) -> Self {
        BoundaryEvidence {
            edge: ConvEncoder::new(&(p / "edge_encoder")),
            patch: Mlp::new(&(p / "patch"), 2 * tokens_dim, WIDTH, WIDTH, dropout),
            fusion: Fusion::new(p, evidence_dim, dropout),
        }
    }
    pub fn forward(&self, xs: &Tensor, features: &Features, train: bool) -> Evidence {
        let edge = self.edge.forward(&sobel_edges(xs), train);
        let last = features.maps.last().expect("a backbone gives at least one map");
        let tokens = last.flatten(2, -1); // [N, C, h·w]
        let mean = tokens.mean_dim([2i64].as_slice(), false, tokens.kind());
        let max = tokens.amax([2i64].as_slice(), false);
        let patch = self.patch.forward(&Tensor::cat(&[mean, max], 1), train);
        self.fusion.forward(&edge, &patch.to_kind(edge.kind()), train)
    }
}

/// AADM: [`frequency_spectrum`] of the input → [`ConvEncoder`]; the backbone's pooled (CLS)
/// vector → `cls` MLP; both fused into the evidence.
pub struct FrequencyEvidence {
    freq: ConvEncoder,
    cls: Mlp,
    fusion: Fusion,
    fft_size: i64,
}

impl FrequencyEvidence {
    /// `pooled_dim`: the width D of the backbone's pooled vector.
    pub fn new(p: &nn::Path, pooled_dim: i64, evidence_dim: i64, fft_size: i64, dropout: f64) -> Self {
        FrequencyEvidence {
            freq: ConvEncoder::new(&(p / "freq_encoder")),
            cls: Mlp::new(&(p / "cls"), pooled_dim, WIDTH, WIDTH, dropout),
            fusion: Fusion::new(p, evidence_dim, dropout),
            fft_size,
        }
    }
    pub fn forward(&self, xs: &Tensor, features: &Features, train: bool) -> Evidence {
        let freq = self.freq.forward(&frequency_spectrum(xs, self.fft_size), train);
        let cls = self.cls.forward(&features.pooled, train);
        self.fusion.forward(&freq, &cls.to_kind(freq.kind()), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn image(f: impl Fn(i64, i64) -> f32, n: i64) -> Tensor {
        let v: Vec<f32> = (0..n * n).map(|k| f(k / n, k % n)).collect();
        Tensor::from_slice(&v).view([1, 1, n, n]).repeat([2, 3, 1, 1])
    }

    #[test]
    fn sobel_is_flat_on_constant_and_strong_on_a_step() {
        let flat = sobel_edges(&Tensor::ones([2, 3, 16, 16], (Kind::Float, Device::Cpu)));
        assert_eq!(flat.size(), [2, 1, 16, 16]);
        // interior only (the border sees zero padding)
        let inner = flat.narrow(2, 1, 14).narrow(3, 1, 14);
        assert!(inner.max().double_value(&[]) < 1e-2);
        let step = sobel_edges(&image(|_, j| if j < 8 { 0.0 } else { 1.0 }, 16));
        let v = step.double_value(&[0, 0, 5, 8]);
        assert!((v - 4.0).abs() < 1e-3, "{v}");
    }

    #[test]
    fn spectrum_highpass_prefers_a_checkerboard() {
        let _g = crate::torch_serial(); // draws from the torch RNG
        let n = 32;
        let pi = std::f32::consts::PI;
        let smooth = image(
            |i, j| 0.5 + 0.5 * (2.0 * pi * i as f32 / n as f32).cos() * (2.0 * pi * j as f32 / n as f32).cos(),
            n,
        );
        let checker = image(|i, j| if (i + j) % 2 == 0 { 1.0 } else { 0.0 }, n);
        let e = |x: &Tensor| highpassed_log_spectrum(x, n).sum(Kind::Float).double_value(&[]);
        let (es, ec) = (e(&smooth), e(&checker));
        assert!(ec > 2.0 * es, "checkerboard {ec} vs smooth {es}");
        for x in [&smooth, &checker] {
            let s = frequency_spectrum(x, 16);
            assert_eq!(s.size(), [2, 1, 16, 16]);
            assert_eq!(s.kind(), Kind::Float);
            assert!(s.min().double_value(&[]) >= 0.0 && s.max().double_value(&[]) <= 1.0 + 1e-6);
        }
        let s = frequency_spectrum(&Tensor::randn([3, 3, 20, 24], (Kind::Float, Device::Cpu)), 12);
        assert_eq!(s.size(), [3, 1, 12, 12]);
        let lo = s.amin([1i64, 2, 3].as_slice(), false);
        let hi = s.amax([1i64, 2, 3].as_slice(), false);
        assert!(lo.abs().max().double_value(&[]) < 1e-6);
        assert!((hi - 1.0).abs().max().double_value(&[]) < 1e-4);
    }

    /// Values from the same formulas in PyTorch 2.13 (`F.interpolate(bilinear,
    /// align_corners=False)`, `torch.fft.fft2`, `fftshift`, `F.conv2d`) on
    /// `x[c, i, j] = sin(0.3 i + 0.7 j + c)`.
    #[test]
    fn spectrum_and_sobel_match_pytorch() {
        let img = |h: i64, w: i64| {
            let v: Vec<f32> = (0..3 * h * w)
                .map(|k| {
                    let (c, i, j) = (k / (h * w), (k / w) % h, k % w);
                    (0.3 * i as f32 + 0.7 * j as f32 + c as f32).sin()
                })
                .collect();
            Tensor::from_slice(&v).view([1, 3, h, w])
        };
        for (h, w, sum, at, nsum, nat) in [
            (16, 16, 224.548_77, 0.773_428, 78.680_73, 0.269_476),
            (24, 20, 182.564, 0.810_344, 59.357_32, 0.264_467),
        ] {
            let x = img(h, w);
            let s = highpassed_log_spectrum(&x, 16);
            let n = frequency_spectrum(&x, 16);
            let close = |a: f64, b: f64| (a - b).abs() < 1e-3 * b.abs().max(1.0);
            assert!(close(s.sum(Kind::Float).double_value(&[]), sum), "{h}x{w}");
            assert!(close(s.double_value(&[0, 0, 3, 5]), at), "{h}x{w}");
            assert!(close(n.sum(Kind::Float).double_value(&[]), nsum), "{h}x{w}");
            assert!(close(n.double_value(&[0, 0, 3, 5]), nat), "{h}x{w}");
        }
        let e = sobel_edges(&img(16, 16));
        assert!((e.sum(Kind::Float).double_value(&[]) - 724.661_3).abs() < 1e-2);
        assert!((e.double_value(&[0, 0, 4, 7]) - 3.643_247).abs() < 1e-4);
    }

    #[test]
    fn highpass_mask_is_low_at_centre_and_high_at_edges() {
        let m = highpass_mask(112, Device::Cpu);
        assert_eq!(m.size(), [112, 112]);
        assert!(m.double_value(&[56, 56]) < 0.02);
        assert!((m.double_value(&[56, 56 + 14]) - 0.5).abs() < 1e-6);
        assert!(m.double_value(&[0, 0]) > 0.999);
    }
}
