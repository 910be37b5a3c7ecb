//! Per-item augmentation and normalisation, from one u8 HWC item into one f32 HWC slot of a
//! batch. Runs on the batch-building thread (plain Rust, no libtorch), so it overlaps with
//! the forward/backward pass.
//!
//! Order: JPEG re-compression (on u8) → flips and rotation (one resampling pass, bilinear,
//! zero fill) → colour jitter (brightness, contrast, saturation; factors `1 ± strength`) →
//! grayscale (ITU-R 601 luma) → 3×3 Gaussian blur (`[1,2,1]/4` separable, edges clamped) →
//! Gaussian noise (std `noise_std` in [0,1] units, clamped) → normalise → random erasing
//! (area 2–33 %, aspect 0.3–3.3, filled with 0 after normalisation, as torchvision does).
//! Each step fires with its probability; the item's random stream is a ChaCha8 seeded from
//! the epoch's stream, so a (seed, fold, epoch) fixes every augmentation.

use flow_stages::model::Augment;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Norm;
use crate::util::{Context, Res};

/// Reusable buffers of one batch-building thread.
#[derive(Default)]
pub struct Scratch {
    f: Vec<f32>,
    tmp: Vec<f32>,
    jpeg: Vec<u8>,
    decoded: Vec<u8>,
}

/// Normalise `src` (u8 HWC, `s`×`s`×3) into `out` (f32 HWC) with no augmentation.
pub fn plain(src: &[u8], s: usize, norm: &Norm, out: &mut [f32]) {
    debug_assert_eq!(src.len(), s * s * 3);
    let (a, b) = norm.affine_u8();
    for (o, px) in out.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
        o[0] = px[0] as f32 * a[0] + b[0];
        o[1] = px[1] as f32 * a[1] + b[1];
        o[2] = px[2] as f32 * a[2] + b[2];
    }
}

/// Augment and normalise one item.
pub fn augmented(
    src: &[u8],
    s: usize,
    norm: &Norm,
    aug: &Augment,
    seed: u64,
    scratch: &mut Scratch,
    out: &mut [f32],
) -> Res<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ss = s * s;

    // 1. JPEG re-compression.
    let mut px: &[u8] = src;
    if hit(&mut rng, aug.jpeg) {
        recompress(src, s, aug.jpeg_quality, &mut scratch.jpeg, &mut scratch.decoded)?;
        px = &scratch.decoded;
    }

    // 2. Geometry: flips and rotation in one pass into f32 HWC [0,1].
    let (hf, vf, angle) = draw_geometry(aug, &mut rng);
    scratch.f.resize(ss * 3, 0.0);
    let f = &mut scratch.f;
    if angle == 0.0 {
        flip(px, s, hf, vf, f);
    } else {
        rotate(px, s, hf, vf, angle, f);
    }

    // 3. Colour jitter.
    if hit(&mut rng, aug.color_jitter) {
        color_jitter(f, s, aug.jitter_strength.abs(), &mut rng);
    }

    // 4. Grayscale.
    if hit(&mut rng, aug.grayscale) {
        grayscale(f);
    }

    // 5. 3×3 Gaussian blur ([1,2,1]/4 ⊗ [1,2,1]/4), edges clamped.
    if hit(&mut rng, aug.blur) {
        blur(f, &mut scratch.tmp, s);
    }

    // 6. Gaussian noise.
    if hit(&mut rng, aug.noise) && aug.noise_std > 0.0 {
        add_noise(f, aug.noise_std as f32, &mut rng);
    }

    // 7. Normalise.
    normalise(f, norm, out);

    // 8. Random erasing.
    if hit(&mut rng, aug.erase) {
        erase(out, s, &mut rng);
    }
    Ok(())
}

/// Whether a step with probability `p` fires (no draw when `p` is 0).
fn hit(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.gen::<f64>() < p
}

/// The geometry step's draws: horizontal flip, vertical flip, rotation angle in degrees
/// (0: none).
fn draw_geometry(aug: &Augment, rng: &mut ChaCha8Rng) -> (bool, bool, f64) {
    let hf = hit(rng, aug.hflip);
    let vf = hit(rng, aug.vflip);
    let deg = aug.rotation_degrees.abs();
    let angle = if hit(rng, aug.rotation) && deg > 0.0 {
        rng.gen_range(-deg..=deg)
    } else {
        0.0
    };
    (hf, vf, angle)
}

/// JPEG-encodes `src` (u8 HWC, `s`×`s`) at `quality` and decodes it into `decoded`.
fn recompress(src: &[u8], s: usize, quality: u8, jpeg: &mut Vec<u8>, decoded: &mut Vec<u8>) -> Res<()> {
    jpeg.clear();
    let q = quality.clamp(1, 100);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut *jpeg, q)
        .encode(src, s as u32, s as u32, image::ExtendedColorType::Rgb8)
        .ctx(|| "JPEG augmentation: cannot encode")?;
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .ctx(|| "JPEG augmentation: cannot decode")?
        .into_rgb8();
    decoded.clear();
    decoded.extend_from_slice(img.as_raw());
    Ok(())
}

const INV: f32 = 1.0 / 255.0;

/// `px` (u8) into `f` (f32 [0,1]), mirrored as asked: the geometry step without rotation.
fn flip(px: &[u8], s: usize, hf: bool, vf: bool, f: &mut [f32]) {
    for y in 0..s {
        let sy = if vf { s - 1 - y } else { y };
        for x in 0..s {
            let sx = if hf { s - 1 - x } else { x };
            let si = (sy * s + sx) * 3;
            let di = (y * s + x) * 3;
            f[di] = px[si] as f32 * INV;
            f[di + 1] = px[si + 1] as f32 * INV;
            f[di + 2] = px[si + 2] as f32 * INV;
        }
    }
}

/// `px` (u8) into `f` (f32 [0,1]), mirrored as asked and rotated by `angle` degrees about
/// the centre: bilinear, zero outside the image.
fn rotate(px: &[u8], s: usize, hf: bool, vf: bool, angle: f64, f: &mut [f32]) {
    let (sin, cos) = (angle.to_radians() as f32).sin_cos();
    let c = (s as f32 - 1.0) / 2.0;
    let get = |yy: isize, xx: isize, ch: usize| -> f32 {
        if yy < 0 || xx < 0 || yy >= s as isize || xx >= s as isize {
            0.0
        } else {
            px[(yy as usize * s + xx as usize) * 3 + ch] as f32 * INV
        }
    };
    for y in 0..s {
        let uy = if vf { s - 1 - y } else { y } as f32 - c;
        for x in 0..s {
            let ux = if hf { s - 1 - x } else { x } as f32 - c;
            // inverse rotation of the output coordinate
            let sx = cos * ux + sin * uy + c;
            let sy = -sin * ux + cos * uy + c;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (wx, wy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let di = (y * s + x) * 3;
            for ch in 0..3 {
                let v = get(y0, x0, ch) * (1.0 - wx) * (1.0 - wy)
                    + get(y0, x0 + 1, ch) * wx * (1.0 - wy)
                    + get(y0 + 1, x0, ch) * (1.0 - wx) * wy
                    + get(y0 + 1, x0 + 1, ch) * wx * wy;
                f[di + ch] = v;
            }
        }
    }
}

/// Brightness, contrast (about the mean luma) and saturation (about each pixel's luma), each
/// by a factor drawn from `1 ± strength` (in that order), clamped to [0,1] after each.
fn color_jitter(f: &mut [f32], s: usize, strength: f64, rng: &mut ChaCha8Rng) {
    let factor = |rng: &mut ChaCha8Rng| -> f32 {
        if strength > 0.0 {
            (1.0 + rng.gen_range(-strength..=strength)).max(0.0) as f32
        } else {
            1.0
        }
    };
    let (bf, cf, sf) = (factor(rng), factor(rng), factor(rng));
    for v in f.iter_mut() {
        *v = (*v * bf).clamp(0.0, 1.0);
    }
    let mean = f.chunks_exact(3).map(luma).sum::<f32>() / (s * s) as f32;
    for v in f.iter_mut() {
        *v = ((*v - mean) * cf + mean).clamp(0.0, 1.0);
    }
    for p in f.chunks_exact_mut(3) {
        let g = luma(p);
        for v in p.iter_mut() {
            *v = ((*v - g) * sf + g).clamp(0.0, 1.0);
        }
    }
}

fn grayscale(f: &mut [f32]) {
    for p in f.chunks_exact_mut(3) {
        let g = luma(p);
        p.fill(g);
    }
}

/// 3×3 Gaussian blur of `f` in place: rows into `tmp`, then columns back.
fn blur(f: &mut [f32], tmp: &mut Vec<f32>, s: usize) {
    tmp.resize(s * s * 3, 0.0);
    let t = tmp;
    for y in 0..s {
        for x in 0..s {
            let (xl, xr) = (x.saturating_sub(1), (x + 1).min(s - 1));
            for ch in 0..3 {
                let row = y * s;
                t[(row + x) * 3 + ch] =
                    0.25 * f[(row + xl) * 3 + ch] + 0.5 * f[(row + x) * 3 + ch] + 0.25 * f[(row + xr) * 3 + ch];
            }
        }
    }
    for y in 0..s {
        let (yu, yd) = (y.saturating_sub(1), (y + 1).min(s - 1));
        for x in 0..s {
            for ch in 0..3 {
                f[(y * s + x) * 3 + ch] =
                    0.25 * t[(yu * s + x) * 3 + ch] + 0.5 * t[(y * s + x) * 3 + ch] + 0.25 * t[(yd * s + x) * 3 + ch];
            }
        }
    }
}

/// Adds Gaussian noise of std `sd` to every value, clamped to [0,1].
fn add_noise(f: &mut [f32], sd: f32, rng: &mut ChaCha8Rng) {
    for pair in f.chunks_mut(2) {
        // Box–Muller: two normals per two uniforms.
        let u1 = 1.0 - rng.gen::<f32>();
        let u2 = rng.gen::<f32>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f32::consts::TAU * u2;
        pair[0] = (pair[0] + sd * r * th.cos()).clamp(0.0, 1.0);
        if pair.len() > 1 {
            pair[1] = (pair[1] + sd * r * th.sin()).clamp(0.0, 1.0);
        }
    }
}

/// `f` (f32 [0,1]) normalised into `out`.
fn normalise(f: &[f32], norm: &Norm, out: &mut [f32]) {
    let mean = norm.mean;
    let inv_std = [1.0 / norm.std[0], 1.0 / norm.std[1], 1.0 / norm.std[2]];
    for (o, p) in out.chunks_exact_mut(3).zip(f.chunks_exact(3)) {
        o[0] = (p[0] - mean[0]) * inv_std[0];
        o[1] = (p[1] - mean[1]) * inv_std[1];
        o[2] = (p[2] - mean[2]) * inv_std[2];
    }
}

/// Random erasing of normalised `out`: up to 10 tries at a rectangle of 2–33 % of the area
/// and aspect 0.3–3.3 that fits; the first that does is set to 0.
fn erase(out: &mut [f32], s: usize, rng: &mut ChaCha8Rng) {
    let area = (s * s) as f64;
    for _ in 0..10 {
        let target = area * rng.gen_range(0.02..0.33);
        let ar = rng.gen_range(0.3f64.ln()..3.3f64.ln()).exp();
        let h = (target * ar).sqrt().round() as usize;
        let w = (target / ar).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= s || w >= s {
            continue;
        }
        let y0 = rng.gen_range(0..=s - h);
        let x0 = rng.gen_range(0..=s - w);
        for y in y0..y0 + h {
            out[(y * s + x0) * 3..(y * s + x0 + w) * 3].fill(0.0);
        }
        break;
    }
}

fn luma(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Augment {
        Augment {
            hflip: 0.0,
            ..Augment::default()
        }
    }

    fn img(s: usize) -> Vec<u8> {
        (0..s * s * 3).map(|i| ((i * 37) % 251) as u8).collect()
    }

    fn run(aug: &Augment, s: usize) -> Vec<f32> {
        let src = img(s);
        let norm = Norm::unit();
        let mut out = vec![0f32; 3 * s * s];
        augmented(&src, s, &norm, aug, 7, &mut Scratch::default(), &mut out).unwrap();
        out
    }

    #[test]
    fn no_augmentation_equals_plain() {
        let s = 8;
        let src = img(s);
        let mut a = vec![0f32; 3 * s * s];
        plain(&src, s, &Norm::unit(), &mut a);
        assert_eq!(a, run(&none(), s));
        // HWC layout: channel 1 of pixel (0, 1) is at (0*8+1)*3+1
        assert_eq!(a[4], src[4] as f32 / 255.0);
    }

    #[test]
    fn hflip_mirrors_and_rotation_0_is_identity() {
        let s = 6;
        let base = run(&none(), s);
        let f = run(&Augment { hflip: 1.0, ..none() }, s);
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    assert_eq!(f[(y * s + x) * 3 + c], base[(y * s + s - 1 - x) * 3 + c]);
                }
            }
        }
        // a rotation of ±(tiny) degrees is close to the identity
        let r = run(
            &Augment {
                rotation: 1.0,
                rotation_degrees: 1e-4,
                ..none()
            },
            s,
        );
        let inner = (s + 1) * 3; // pixel (1,1), away from the zero-filled border
        assert!((r[inner] - base[inner]).abs() < 1e-3);
        // 180°: with rotation_degrees 180 and p=1 the angle is random; check it moves pixels
        let r = run(
            &Augment {
                rotation: 1.0,
                rotation_degrees: 90.0,
                ..none()
            },
            s,
        );
        assert_ne!(r, base);
    }

    #[test]
    fn every_augmentation_changes_something_and_stays_in_range() {
        let s = 16;
        let base = run(&none(), s);
        for aug in [
            Augment { vflip: 1.0, ..none() },
            Augment {
                color_jitter: 1.0,
                jitter_strength: 0.5,
                ..none()
            },
            Augment {
                grayscale: 1.0,
                ..none()
            },
            Augment { blur: 1.0, ..none() },
            Augment {
                noise: 1.0,
                noise_std: 0.1,
                ..none()
            },
            Augment {
                jpeg: 1.0,
                jpeg_quality: 30,
                ..none()
            },
            Augment { erase: 1.0, ..none() },
        ] {
            let out = run(&aug, s);
            assert_ne!(out, base, "{aug:?} changed nothing");
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)), "{aug:?} left [0,1]");
        }
        // grayscale: the three channels are equal
        let g = run(
            &Augment {
                grayscale: 1.0,
                ..none()
            },
            s,
        );
        assert!(g.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}
