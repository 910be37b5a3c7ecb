//! The fixed SRM noise-residual filter of RGB-N (Zhou et al., "Learning Rich Features for
//! Image Manipulation Detection", CVPR 2018), from Fridrich & Kodovský's rich models.
//!
//! Three 5×5 kernels, in the order and with the normalisations of RGB-N's released code
//! (`q = [4, 12, 2]`):
//!
//! 0. the 3×3 second-order "square" (SPAM) kernel `[[-1,2,-1],[2,-4,2],[-1,2,-1]] / 4`,
//!    zero-padded to 5×5;
//! 1. the 5×5 "square" (KV) kernel
//!    `[[-1,2,-2,2,-1],[2,-6,8,-6,2],[-2,8,-12,8,-2],[2,-6,8,-6,2],[-1,2,-2,2,-1]] / 12`;
//! 2. the horizontal second-order kernel `[1,-2,1] / 2` in the middle row, zero-padded to 5×5
//!    (RGB-N's third filter; SRM's "1st-order" class would be `[1,-1]`, RGB-N does not use it).
//!
//! The weight is `[3 (out), 3 (in), 5, 5]` with `weight[i][c] = kernel i` for every input
//! channel c, as RGB-N builds it: output channel i is kernel i applied to `R + G + B` (the sum
//! over input channels), so three residual channels replace RGB and any 3-channel backbone
//! takes them. Every kernel sums to zero, so constant (and, for kernels 0 and 2, linear)
//! images give zero. RGB-N filters raw pixels; here the filter sees whatever it is given (the
//! stage gives the ImageNet-normalised input), which scales the residuals by 1/std.

use tch::{Device, Tensor};

/// The `[3, 3, 5, 5]` f32 SRM weight on `device` (see the module docs).
pub fn srm_kernel(device: Device) -> Tensor {
    #[rustfmt::skip]
    let k0: [f32; 25] = [
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, -1.0, 2.0, -1.0, 0.0,
        0.0, 2.0, -4.0, 2.0, 0.0,
        0.0, -1.0, 2.0, -1.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    #[rustfmt::skip]
    let k1: [f32; 25] = [
        -1.0, 2.0, -2.0, 2.0, -1.0,
        2.0, -6.0, 8.0, -6.0, 2.0,
        -2.0, 8.0, -12.0, 8.0, -2.0,
        2.0, -6.0, 8.0, -6.0, 2.0,
        -1.0, 2.0, -2.0, 2.0, -1.0,
    ];
    #[rustfmt::skip]
    let k2: [f32; 25] = [
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 1.0, -2.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let mut w = Vec::with_capacity(3 * 3 * 25);
    for (k, q) in [(k0, 4.0f32), (k1, 12.0), (k2, 2.0)] {
        for _ in 0..3 {
            w.extend(k.iter().map(|v| v / q));
        }
    }
    Tensor::from_slice(&w).view([3, 3, 5, 5]).to_device(device)
}

/// The SRM residuals of `xs` `[N, 3, H, W]` with `kernel` from [`srm_kernel`]: `[N, 3, H, W]`
/// (zero padding 2, so the size is kept; the two-pixel border sees the padding). Runs in the
/// input's kind.
pub fn apply_srm(xs: &Tensor, kernel: &Tensor) -> Tensor {
    let k = kernel.to_kind(xs.kind()).to_device(xs.device());
    xs.conv2d(&k, None::<&Tensor>, [1, 1], [2, 2], [1, 1], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn srm_kernel_is_rgbn_s() {
        let k = srm_kernel(Device::Cpu);
        assert_eq!(k.size(), [3, 3, 5, 5]);
        assert_eq!(k.kind(), Kind::Float);
        // every kernel sums to zero, the same for each input channel
        let sums = k.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float);
        assert!(sums.abs().max().double_value(&[]) < 1e-6);
        assert_eq!(k.select(1, 0), k.select(1, 2));
        assert!((k.double_value(&[0, 0, 2, 2]) + 1.0).abs() < 1e-6);
        assert!((k.double_value(&[1, 1, 2, 2]) + 1.0).abs() < 1e-6);
        assert!((k.double_value(&[2, 2, 2, 2]) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn srm_is_zero_on_constant_images_and_not_on_noise() {
        let _g = crate::torch_serial(); // draws from the torch RNG
        let k = srm_kernel(Device::Cpu);
        let flat = Tensor::full([2, 3, 16, 16], 0.7, (Kind::Float, Device::Cpu));
        let r = apply_srm(&flat, &k);
        assert_eq!(r.size(), [2, 3, 16, 16]);
        let inner = r.narrow(2, 2, 12).narrow(3, 2, 12);
        assert!(inner.abs().max().double_value(&[]) < 1e-5);
        let noise = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let r = apply_srm(&noise, &k);
        for c in 0..3 {
            assert!(r.select(1, c).abs().mean(Kind::Float).double_value(&[]) > 0.1);
        }
        // output channel i is kernel i on R + G + B
        let one = noise.sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
        let k0 = k.narrow(0, 0, 1).narrow(1, 0, 1);
        let r0 = one.conv2d(&k0, None::<&Tensor>, [1, 1], [2, 2], [1, 1], 1);
        assert!((r.narrow(1, 0, 1) - r0).abs().max().double_value(&[]) < 1e-4);
    }
}
