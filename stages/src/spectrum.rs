//! `Spectrum`: the mean log-magnitude 2-D Fourier spectrum of the preprocessed pixels, and its
//! azimuthal average, per class and per source — the classic check for generator
//! fingerprints (up-sampling leaves periodic replicas and a dip towards Nyquist), visible
//! before any model is trained. Pure Rust (`rustfft`); no libtorch.
//!
//! ```ron
//! "spectrum": Spectrum(data: "preprocess", max_per_group: 2000, window: Hann),
//! ```
//! Input `data`: a Preprocess stage (`tensors`: `pixels-NNN.u8`, `index.csv`,
//! `preprocess.json`). `max_per_group` (default 2000, 1..=1 000 000) caps the images averaged
//! per group: a group with more takes the `max_per_group` items with the smallest
//! `blake3(item name)` (ties by name) — a deterministic pseudo-random subset that does not
//! depend on how items are named or ordered. `window`: `Hann` (default) or `None`.
//!
//! Per image: Rec. 601 luma `0.299 R + 0.587 G + 0.114 B` (pixels in [0, 1]), minus the
//! image's mean, times the window (separable periodic Hann `w(x)·w(y)`,
//! `w(n) = 0.5 − 0.5·cos(2πn/N)`: it fades the image to 0 at its borders, so the jump between
//! opposite edges of the implied periodic image does not leak into a bright cross along both
//! axes), unnormalised 2-D DFT (rows, then columns; one plan reused), `ln(1 + |F|)`, shifted
//! so that zero frequency is at the centre `(size/2, size/2)` (numpy's `fftshift`). The mean
//! over each group's images is summed in `index.csv` row order, whatever the thread count.
//!
//! Groups: `real` (label 0), `fake` (label 1) and, for a class whose items come from more than
//! one source, one group per source, `source:<name>` (a class with a single source gets none:
//! it would repeat the class group; a name under both classes gets ` (real)`/` (fake)`
//! appended). Groups without items are left out. Azimuthal average: the mean of a group's
//! mean spectrum over integer radius bins `r = round(√(dx² + dy²))`, `r = 0..=size/2` (the
//! corners beyond `size/2` are left out), at spatial frequency `r / (size/2)` of Nyquist.
//!
//! Outputs ([`crate::ports::spectrum`]): `spectrum.json` (size, window, method, colour
//! ranges, per group name, label, n, azimuthal average, PNG names; values to 6 decimals), one
//! `mean-NN-<name>.png` per group (viridis over a range common to all groups), one
//! `diff-NN-<name>.png` per fake group (its mean minus the real mean, blue–white–red over a
//! symmetric range common to all), PNGs up-scaled ×4 nearest-neighbour up to 64 px (×2 up to
//! 128 px), and `azimuthal.svg` + `.png` (the Report's line plot). Outputs are byte-identical
//! across runs and thread counts.

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use flow_engine::{
    key_params_of, ConfigProblem, ExecCtx, Input, PortType, Resources, StageConfig, StageError, StageKind,
};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

pub use crate::ports::spectrum::Window;
use crate::ports::spectrum::{self as files, GroupSpectrum, SpectrumDoc};
use crate::ports::tensors::{read_index, shard_name, IndexRow, PreprocessInfo};
use crate::ports::{SPECTRUM, TENSORS};
use crate::report::plots::{self, Series};

/// The most `max_per_group` may be.
pub const MAX_PER_GROUP: usize = 1_000_000;

fn d_max_per_group() -> usize {
    2000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spectrum {
    /// A Preprocess stage (the `tensors` port).
    pub data: String,
    /// Most images averaged per group (a deterministic subset beyond).
    #[serde(default = "d_max_per_group")]
    pub max_per_group: usize,
    /// The window before the FFT.
    #[serde(default)]
    pub window: Window,
}

inventory::submit! { crate::Kind(|| StageKind::new::<Spectrum>("Spectrum", 1, "mean log-magnitude Fourier spectrum and its azimuthal average per class and source")) }

impl StageConfig for Spectrum {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("data", self.data.clone(), &[TENSORS])]
    }
    fn output(&self) -> PortType {
        SPECTRUM
    }
    fn key_params(&self) -> serde_json::Value {
        // The Preprocess stage's name is not in the outputs.
        key_params_of(self, &["data"])
    }
    fn resources(&self) -> Resources {
        Resources { threads: 0, gpu: false }
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut c = crate::model::Checks::new();
        c.int("max_per_group", self.max_per_group as u64, 1, MAX_PER_GROUP as u64);
        c.0
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let input = ctx
            .inputs_of("data")
            .next()
            .ok_or_else(|| StageError::msg("no data input"))?;
        self.compute(&input.dir, ctx.out_dir, ctx.threads, &|| ctx.cancelled(), ctx.progress)
    }
}

/// One group: its rows (positions in `index.csv`, row order) after the subset.
struct Group {
    name: String,
    label: u8,
    source: Option<String>,
    available: usize,
    rows: Vec<usize>,
}

/// The groups of `index` (see the module doc), each cut to `max` rows.
fn groups_of(index: &[IndexRow], max: usize) -> Result<Vec<Group>, String> {
    if let Some(r) = index.iter().find(|r| r.label > 1) {
        return Err(format!(
            "item `{}` has label {}; labels are 0 (real) and 1 (fake)",
            r.item, r.label
        ));
    }
    let class = |label: u8| -> Vec<usize> { (0..index.len()).filter(|&i| index[i].label == label).collect() };
    let mut groups = vec![
        (String::from("real"), 0u8, None, class(0)),
        (String::from("fake"), 1u8, None, class(1)),
    ];
    let mut by_source: [std::collections::BTreeMap<&str, Vec<usize>>; 2] = Default::default();
    for (i, r) in index.iter().enumerate() {
        by_source[r.label as usize].entry(&r.source).or_default().push(i);
    }
    let multi = |l: usize| by_source[l].len() > 1;
    for label in 0..2 {
        if !multi(label) {
            continue;
        }
        for (source, rows) in &by_source[label] {
            let both = multi(1 - label) && by_source[1 - label].contains_key(source);
            let name = match (both, label) {
                (false, _) => format!("source:{source}"),
                (true, 0) => format!("source:{source} (real)"),
                (true, _) => format!("source:{source} (fake)"),
            };
            groups.push((name, label as u8, Some(source.to_string()), rows.clone()));
        }
    }
    Ok(groups
        .into_iter()
        .filter(|g| !g.3.is_empty())
        .map(|(name, label, source, rows)| Group {
            name,
            label,
            source,
            available: rows.len(),
            rows: subset(index, rows, max),
        })
        .collect())
}

/// The `max` rows with the smallest `blake3(item name)` (ties by name), in row order.
fn subset(index: &[IndexRow], mut rows: Vec<usize>, max: usize) -> Vec<usize> {
    if rows.len() > max {
        let mut keyed: Vec<([u8; 32], usize)> = rows
            .iter()
            .map(|&i| (*blake3::hash(index[i].item.as_bytes()).as_bytes(), i))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| index[a.1].item.cmp(&index[b.1].item)));
        rows = keyed[..max].iter().map(|k| k.1).collect();
        rows.sort_unstable();
    }
    rows
}

/// The log spectrum of one image at a time: a forward FFT plan (shared) and this thread's
/// buffers.
pub struct LogSpectrum {
    n: usize,
    fft: Arc<dyn Fft<f64>>,
    window: Vec<f64>,
    buf: Vec<Complex<f64>>,
    tmp: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    gray: Vec<f64>,
}

impl LogSpectrum {
    /// For `n`×`n` images, with the plan `fft` (length `n`).
    pub fn new(n: usize, window: Window, fft: Arc<dyn Fft<f64>>) -> LogSpectrum {
        assert_eq!(fft.len(), n);
        let w = match window {
            Window::Hann => (0..n)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
                .collect(),
            Window::None => vec![1.0; n],
        };
        let scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        LogSpectrum {
            n,
            fft,
            window: w,
            buf: vec![Complex::default(); n * n],
            tmp: vec![Complex::default(); n * n],
            scratch,
            gray: vec![0.0; n * n],
        }
    }

    /// The plan [`LogSpectrum::new`] takes.
    pub fn plan(n: usize) -> Arc<dyn Fft<f64>> {
        FftPlanner::<f64>::new().plan_fft_forward(n)
    }

    /// `ln(1 + |F|)` of the HWC RGB u8 image `px` (see the module doc) into `out`
    /// (`n*n`, row-major, zero frequency at `(n/2, n/2)`).
    pub fn of_rgb(&mut self, px: &[u8], out: &mut [f64]) {
        for (g, p) in self.gray.iter_mut().zip(px.chunks_exact(3)) {
            *g = (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64) / 255.0;
        }
        self.of_gray(out);
    }

    /// As [`LogSpectrum::of_rgb`], of the gray image in `self.gray`.
    fn of_gray(&mut self, out: &mut [f64]) {
        let n = self.n;
        let mean = self.gray.iter().sum::<f64>() / (n * n) as f64;
        for y in 0..n {
            for x in 0..n {
                let v = (self.gray[y * n + x] - mean) * self.window[y] * self.window[x];
                self.buf[y * n + x] = Complex::new(v, 0.0);
            }
        }
        // Rows (n transforms of length n), transpose, rows again = columns.
        self.fft.process_with_scratch(&mut self.buf, &mut self.scratch);
        for y in 0..n {
            for u in 0..n {
                self.tmp[u * n + y] = self.buf[y * n + u];
            }
        }
        self.fft.process_with_scratch(&mut self.tmp, &mut self.scratch);
        // tmp[u*n + v] = F(v, u): v the vertical, u the horizontal frequency.
        let h = n / 2;
        for u in 0..n {
            for v in 0..n {
                out[((v + h) % n) * n + (u + h) % n] = self.tmp[u * n + v].norm().ln_1p();
            }
        }
    }
}

/// Radius bin of every pixel of a shifted `n`×`n` spectrum (`None`: beyond `n/2`), and the
/// pixels per bin.
fn radius_bins(n: usize) -> (Vec<Option<usize>>, Vec<usize>) {
    let h = (n / 2) as i64;
    let mut counts = vec![0usize; n / 2 + 1];
    let bins = (0..n * n)
        .map(|i| {
            let (dy, dx) = ((i / n) as i64 - h, (i % n) as i64 - h);
            let r = ((dx * dx + dy * dy) as f64).sqrt().round() as usize;
            (r < counts.len()).then(|| {
                counts[r] += 1;
                r
            })
        })
        .collect();
    (bins, counts)
}

/// The azimuthal average of the shifted spectrum `s`.
fn azimuthal(s: &[f64], bins: &[Option<usize>], counts: &[usize]) -> Vec<f64> {
    let mut sum = vec![0.0; counts.len()];
    for (v, b) in s.iter().zip(bins) {
        if let Some(r) = b {
            sum[*r] += v;
        }
    }
    sum.iter().zip(counts).map(|(s, c)| s / (*c).max(1) as f64).collect()
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Bytes of the input held at once (per-image spectra of one block).
const BLOCK_BYTES: usize = 64 << 20;

impl Spectrum {
    /// The artifact of the `tensors` artifact in `data` into `out` on `threads` threads.
    pub fn compute(
        &self,
        data: &Path,
        out: &Path,
        threads: usize,
        cancelled: &(dyn Fn() -> bool + Sync),
        progress: &(dyn Fn(f64, &str) + Sync),
    ) -> Result<(), StageError> {
        let info = PreprocessInfo::read(data).map_err(StageError::msg)?;
        let index = read_index(data).map_err(StageError::msg)?;
        let n = info.size as usize;
        if index.is_empty() {
            return Err(StageError::msg("the tensors artifact has no items"));
        }
        let groups = groups_of(&index, self.max_per_group).map_err(StageError::msg)?;
        let shards = Shards::open(data, &info, &index)?;

        // Every row some group needs, in row order; the groups of each.
        let mut member: Vec<Vec<usize>> = vec![Vec::new(); index.len()];
        for (g, group) in groups.iter().enumerate() {
            for &r in &group.rows {
                member[r].push(g);
            }
        }
        let needed: Vec<usize> = (0..index.len()).filter(|&r| !member[r].is_empty()).collect();
        let mut sums = vec![vec![0.0f64; n * n]; groups.len()];
        let plan = LogSpectrum::plan(n);
        let threads = threads.max(1);
        let block = (BLOCK_BYTES / (n * n * 8)).max(threads);
        let mut spectra = vec![0.0f64; block.min(needed.len()) * n * n];
        let mut done = 0;
        for rows in needed.chunks(block) {
            if cancelled() {
                return Err(StageError::Cancelled);
            }
            let out_block = &mut spectra[..rows.len() * n * n];
            let per = rows.len().div_ceil(threads);
            let results: Vec<Result<(), String>> = crossbeam::scope(|sc| {
                let handles: Vec<_> = rows
                    .chunks(per)
                    .zip(out_block.chunks_mut(per * n * n))
                    .map(|(rows, outs)| {
                        let (plan, shards, index) = (plan.clone(), &shards, &index);
                        sc.spawn(move |_| -> Result<(), String> {
                            let mut ls = LogSpectrum::new(n, self.window, plan);
                            let mut px = vec![0u8; n * n * 3];
                            for (&r, o) in rows.iter().zip(outs.chunks_mut(n * n)) {
                                shards.read(&index[r], &mut px)?;
                                ls.of_rgb(&px, o);
                            }
                            Ok(())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("a spectrum thread panicked".into())))
                    .collect()
            })
            .map_err(|_| StageError::msg("a spectrum thread panicked"))?;
            for r in results {
                r.map_err(StageError::msg)?;
            }
            // Summed in row order: the same sums whatever `threads` is.
            for (k, &r) in rows.iter().enumerate() {
                let s = &out_block[k * n * n..(k + 1) * n * n];
                for &g in &member[r] {
                    for (a, b) in sums[g].iter_mut().zip(s) {
                        *a += b;
                    }
                }
            }
            done += rows.len();
            progress(
                done as f64 / needed.len() as f64,
                &format!("{done}/{} images", needed.len()),
            );
        }
        let means: Vec<Vec<f64>> = sums
            .into_iter()
            .zip(&groups)
            .map(|(s, g)| s.into_iter().map(|v| v / g.rows.len() as f64).collect())
            .collect();
        self.write(out, &info, &groups, &means)
    }

    /// Every output file, from the groups' mean spectra.
    fn write(&self, out: &Path, info: &PreprocessInfo, groups: &[Group], means: &[Vec<f64>]) -> Result<(), StageError> {
        let n = info.size as usize;
        let scale = (256 / info.size).clamp(1, 4);
        let (bins, counts) = radius_bins(n);
        let half = (n / 2).max(1) as f64;
        let frequencies: Vec<f64> = (0..counts.len()).map(|r| round6(r as f64 / half)).collect();
        let write = |name: &str, bytes: &[u8]| -> Result<(), StageError> {
            let p = out.join(name);
            std::fs::write(&p, bytes).map_err(|e| StageError::msg(format!("cannot write {}: {e}", p.display())))
        };

        let finite = means.iter().flatten().copied().filter(|v| v.is_finite());
        let lo = round6(finite.clone().fold(f64::INFINITY, f64::min));
        let hi = round6(finite.fold(f64::NEG_INFINITY, f64::max));
        let real = groups.iter().position(|g| g.name == "real");
        let diffs: Vec<Option<Vec<f64>>> = groups
            .iter()
            .zip(means)
            .map(|(g, m)| match real {
                Some(r) if g.label == 1 => Some(m.iter().zip(&means[r]).map(|(a, b)| a - b).collect()),
                _ => None,
            })
            .collect();
        let diff_range = diffs
            .iter()
            .flatten()
            .flatten()
            .map(|v| v.abs())
            .filter(|v| v.is_finite())
            .reduce(f64::max)
            .map(|m| round6(m.max(1e-6)));

        let mut docs = Vec::new();
        let mut series = Vec::new();
        for (i, ((g, mean), diff)) in groups.iter().zip(means).zip(&diffs).enumerate() {
            let png = files::mean_png_name(i, &g.name);
            write(&png, &heat_png(mean, n, scale, |v| viridis(unit(v, lo, hi)))?)?;
            let diff_png = match (diff, diff_range) {
                (Some(d), Some(m)) => {
                    let name = files::diff_png_name(i, &g.name);
                    write(&name, &heat_png(d, n, scale, |v| diverging(v / m))?)?;
                    Some(name)
                }
                _ => None,
            };
            let az: Vec<f64> = azimuthal(mean, &bins, &counts).into_iter().map(round6).collect();
            series.push(Series::new(
                format!("{} (n={})", g.name, g.rows.len()),
                frequencies.iter().copied().zip(az.iter().copied()).collect(),
            ));
            docs.push(GroupSpectrum {
                name: g.name.clone(),
                label: g.label,
                source: g.source.clone(),
                n: g.rows.len(),
                available: g.available,
                azimuthal: az,
                png,
                diff_png,
            });
        }
        let plot = plots::lines(
            &series,
            "Azimuthal average of the mean log spectrum",
            "spatial frequency (fraction of Nyquist)",
            "mean ln(1 + |F|)",
        )
        .map_err(|e| StageError::msg(e.to_string()))?;
        write(files::AZIMUTHAL_SVG, plot.svg.as_bytes())?;
        write(files::AZIMUTHAL_PNG, &plot.png)?;
        SpectrumDoc {
            size: info.size,
            window: self.window,
            method: self.method(),
            max_per_group: self.max_per_group,
            scale,
            mean_range: [lo, hi],
            diff_range,
            frequencies,
            groups: docs,
            azimuthal_svg: files::AZIMUTHAL_SVG.into(),
            azimuthal_png: files::AZIMUTHAL_PNG.into(),
        }
        .write(out)
        .map_err(StageError::msg)
    }

    fn method(&self) -> String {
        let window = match self.window {
            Window::Hann => "a separable periodic Hann window",
            Window::None => "no window",
        };
        format!(
            "per image: Rec. 601 luma (0.299 R + 0.587 G + 0.114 B, pixels in [0, 1]) minus its mean, {window}, \
             unnormalised 2-D DFT, ln(1 + |F|), zero frequency centred (fftshift); per group: the mean over at \
             most {} images (those with the smallest blake3 of the item name); azimuthal: the mean over integer \
             radius bins r = round(sqrt(dx^2 + dy^2)), r = 0..=size/2, at frequency r / (size/2) of Nyquist",
            self.max_per_group
        )
    }
}

/// The shard files of a `tensors` artifact.
struct Shards {
    files: Vec<File>,
    rows_per_shard: usize,
    item_bytes: usize,
}

impl Shards {
    fn open(dir: &Path, info: &PreprocessInfo, index: &[IndexRow]) -> Result<Shards, StageError> {
        let item_bytes = info.size as usize * info.size as usize * 3;
        let mut files = Vec::new();
        for s in 0..info.shards.len().max(1) {
            let p = dir.join(shard_name(s));
            files.push(File::open(&p).map_err(|e| StageError::msg(format!("cannot read {}: {e}", p.display())))?);
        }
        let shards = Shards {
            files,
            rows_per_shard: info.rows_per_shard.max(1),
            item_bytes,
        };
        for r in index {
            if r.shard >= shards.files.len() || r.row / shards.rows_per_shard != r.shard {
                return Err(StageError::msg(format!(
                    "index.csv: item `{}` (row {}, shard {}) does not fit the shard layout",
                    r.item, r.row, r.shard
                )));
            }
        }
        Ok(shards)
    }

    fn read(&self, row: &IndexRow, px: &mut [u8]) -> Result<(), String> {
        let offset = (row.row % self.rows_per_shard) * self.item_bytes;
        self.files[row.shard]
            .read_exact_at(px, offset as u64)
            .map_err(|e| format!("cannot read {} of item `{}`: {e}", shard_name(row.shard), row.item))
    }
}

/// `v` mapped from `[lo, hi]` to `[0, 1]` (clamped; a flat range is 0).
fn unit(v: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo && v.is_finite() {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// matplotlib's viridis at `t` in [0, 1], quantised to its 256 levels: a degree-6 polynomial
/// fit per channel (Matt Zucker's public-domain fit, within 1.5 % of the table) — 21 numbers
/// instead of a crate or a 256-entry table.
pub fn viridis(t: f64) -> [u8; 3] {
    const C: [[f64; 3]; 7] = [
        [
            0.277_727_327_223_417_7,
            0.005_407_344_544_966_578,
            0.334_099_805_335_306_1,
        ],
        [0.105_093_043_108_577_4, 1.404_613_529_898_575, 1.384_590_162_594_685],
        [
            -0.330_861_828_725_556_3,
            0.214_847_559_468_213,
            0.095_095_163_028_236_59,
        ],
        [-4.634_230_498_983_486, -5.799_100_973_351_585, -19.332_440_956_279_87],
        [6.228_269_936_347_081, 14.179_933_366_805_09, 56.690_552_600_681_05],
        [4.776_384_997_670_288, -13.745_145_377_746_01, -65.353_032_633_372_34],
        [-5.435_455_855_934_631, 4.645_852_612_178_535, 26.312_435_249_583_2],
    ];
    let t = (t.clamp(0.0, 1.0) * 255.0).round() / 255.0;
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        let v = C.iter().rev().fold(0.0, |acc, k| acc * t + k[c]);
        *out = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    rgb
}

/// A diverging map at `t` in [-1, 1]: ColorBrewer RdBu's ends, blue `#2166ac` (−1), near-white
/// `#f7f7f7` (0), red `#b2182b` (+1), linear between.
fn diverging(t: f64) -> [u8; 3] {
    const BLUE: [f64; 3] = [33.0, 102.0, 172.0];
    const WHITE: [f64; 3] = [247.0, 247.0, 247.0];
    const RED: [f64; 3] = [178.0, 24.0, 43.0];
    let t = if t.is_finite() { t.clamp(-1.0, 1.0) } else { 0.0 };
    let (end, a) = if t < 0.0 { (BLUE, -t) } else { (RED, t) };
    let mut rgb = [0u8; 3];
    for c in 0..3 {
        rgb[c] = (WHITE[c] + (end[c] - WHITE[c]) * a).round() as u8;
    }
    rgb
}

/// PNG of the `n`×`n` map `values`, each value a `scale`×`scale` block of `colour(value)`.
fn heat_png(values: &[f64], n: usize, scale: u32, colour: impl Fn(f64) -> [u8; 3]) -> Result<Vec<u8>, StageError> {
    let s = scale as usize;
    let w = n * s;
    let mut rgb = vec![0u8; w * w * 3];
    for y in 0..w {
        for x in 0..w {
            let c = colour(values[(y / s) * n + x / s]);
            rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    }
    let img = image::RgbImage::from_raw(w as u32, w as u32, rgb).expect("buffer of the image's size");
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| StageError::msg(format!("encoding a spectrum PNG failed: {e}")))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::imageops::{Crop, Filter};
    use crate::ports::tensors::{write_index, Normalize, LAYOUT};

    /// A deterministic stream of u64 (an LCG's high bits).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 53) as f64
        }
    }

    fn spectrum_of_gray(n: usize, window: Window, gray: &[f64]) -> Vec<f64> {
        let mut ls = LogSpectrum::new(n, window, LogSpectrum::plan(n));
        ls.gray.copy_from_slice(gray);
        let mut out = vec![0.0; n * n];
        ls.of_gray(&mut out);
        out
    }

    fn argmax(v: &[f64]) -> usize {
        (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
    }

    #[test]
    fn a_horizontal_cosine_peaks_at_its_frequency() {
        for (n, k) in [(32, 5), (64, 9), (33, 4)] {
            for window in [Window::Hann, Window::None] {
                let gray: Vec<f64> = (0..n * n)
                    .map(|i| 0.5 + 0.4 * (2.0 * std::f64::consts::PI * k as f64 * (i % n) as f64 / n as f64).cos())
                    .collect();
                let s = spectrum_of_gray(n, window, &gray);
                let c = n / 2;
                let m = argmax(&s);
                assert!(
                    m == c * n + c - k || m == c * n + c + k,
                    "n {n} k {k}: max at {:?}",
                    (m / n, m % n)
                );
                // Both peaks, equal (a real image's spectrum is symmetric).
                assert!((s[c * n + c - k] - s[c * n + c + k]).abs() < 1e-9);
                // Zero frequency: the mean was subtracted.
                assert!(s[c * n + c] < 1e-6, "{}", s[c * n + c]);
            }
        }
    }

    /// The azimuthal average of `count` images of `n`² noise, made at full size or by 2×
    /// nearest-neighbour up-sampling of `n/2`² noise.
    fn noise_azimuthal(n: usize, upsampled: bool, count: usize) -> Vec<f64> {
        let mut rng = Lcg(99);
        let mut sum = vec![0.0; n * n];
        for _ in 0..count {
            let gray: Vec<f64> = if upsampled {
                let half: Vec<f64> = (0..n * n / 4).map(|_| rng.unit()).collect();
                (0..n * n).map(|i| half[(i / n / 2) * (n / 2) + (i % n) / 2]).collect()
            } else {
                (0..n * n).map(|_| rng.unit()).collect()
            };
            for (a, b) in sum.iter_mut().zip(spectrum_of_gray(n, Window::Hann, &gray)) {
                *a += b;
            }
        }
        let (bins, counts) = radius_bins(n);
        azimuthal(&sum, &bins, &counts)
            .iter()
            .map(|v| v / count as f64)
            .collect()
    }

    #[test]
    fn upsampling_leaves_a_dip_at_nyquist() {
        // 2× nearest-neighbour up-sampling multiplies the spectrum by |cos(πu/n)·cos(πv/n)|,
        // which is 0 at Nyquist: the top of the azimuthal average falls towards it, while
        // white noise stays flat. Measured: ratios 0.98 (plain) and 0.35 (up-sampled).
        let n = 32;
        let (plain, up) = (noise_azimuthal(n, false, 20), noise_azimuthal(n, true, 20));
        let ratio = |a: &[f64]| a[n / 2] / a[n / 4];
        let (rp, ru) = (ratio(&plain), ratio(&up));
        eprintln!("plain {plain:?}\nup {up:?}\nratios {rp} {ru}");
        assert!((rp - 1.0).abs() < 0.1, "white noise is flat: {rp}");
        assert!(ru < 0.75 * rp, "up-sampled {ru} vs plain {rp}");
        // And the fall is monotone over the top half of the band.
        assert!(up[n / 4..].windows(2).all(|w| w[1] < w[0] + 0.05), "{up:?}");
    }

    #[test]
    fn colour_maps() {
        // matplotlib's viridis at 0, 1/4, 1/2, 3/4, 1.
        for (t, want) in [
            (0.0, [0x44, 0x01, 0x54]),
            (0.25, [0x3b, 0x52, 0x8b]),
            (0.5, [0x21, 0x91, 0x8c]),
            (0.75, [0x5e, 0xc9, 0x62]),
            (1.0, [0xfd, 0xe7, 0x25]),
        ] {
            let got = viridis(t);
            for c in 0..3 {
                assert!(
                    (got[c] as i32 - want[c]).abs() <= 6,
                    "viridis({t}) = {got:?}, want {want:?}"
                );
            }
        }
        assert_eq!(diverging(0.0), [247, 247, 247]);
        assert_eq!(diverging(-1.0), [33, 102, 172]);
        assert_eq!(diverging(2.0), [178, 24, 43]);
        assert_eq!(diverging(f64::NAN), [247, 247, 247]);
    }

    /// A `tensors` artifact of `n`-px images: reals of one source (noise), fakes of two
    /// (`gan`: 2× up-sampled noise, `blend`: noise), `per` each; `rows_per_shard` rows per shard.
    fn tensors(dir: &Path, n: usize, per: usize, rows_per_shard: usize) {
        let mut rng = Lcg(7);
        let mut pixels: Vec<u8> = Vec::new();
        let mut index = Vec::new();
        for (label, source) in [(0u8, "camera"), (1, "gan"), (1, "blend")] {
            for i in 0..per {
                let half: Vec<[u8; 3]> = (0..n * n / 4)
                    .map(|_| [rng.next() as u8, rng.next() as u8, rng.next() as u8])
                    .collect();
                for p in 0..n * n {
                    let px = if source == "gan" {
                        half[(p / n / 2) * (n / 2) + (p % n) / 2]
                    } else {
                        [rng.next() as u8, rng.next() as u8, rng.next() as u8]
                    };
                    pixels.extend(px);
                }
                let row = index.len();
                index.push(IndexRow {
                    row,
                    shard: row / rows_per_shard,
                    item: format!("{source}_{i:03}"),
                    label,
                    source: source.into(),
                    group: format!("g{i}"),
                    hash: String::new(),
                    mean_r: 0.0,
                    mean_g: 0.0,
                    mean_b: 0.0,
                    sq_r: 0.0,
                    sq_g: 0.0,
                    sq_b: 0.0,
                });
            }
        }
        let item = n * n * 3;
        let mut shards = Vec::new();
        for (s, chunk) in pixels.chunks(rows_per_shard * item).enumerate() {
            std::fs::write(dir.join(shard_name(s)), chunk).unwrap();
            shards.push(shard_name(s));
        }
        write_index(dir, &index).unwrap();
        PreprocessInfo {
            size: n as u32,
            crop: Crop::Center,
            filter: Filter::CatmullRom,
            normalize: Normalize::None,
            count: index.len(),
            rows_per_shard,
            shards,
            layout: LAYOUT.into(),
        }
        .write(dir)
        .unwrap();
    }

    fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_stage_is_deterministic_and_sees_the_upsampling() {
        let data = tempfile::tempdir().unwrap();
        tensors(data.path(), 16, 12, 7);
        let stage = Spectrum {
            data: "preprocess".into(),
            max_per_group: 10,
            window: Window::Hann,
        };
        let run = |threads: usize| {
            let out = tempfile::tempdir().unwrap();
            stage
                .compute(data.path(), out.path(), threads, &|| false, &|_, _| {})
                .unwrap();
            files_of(out.path())
        };
        let (a, b, c) = (run(1), run(1), run(3));
        assert_eq!(a, b);
        assert_eq!(a, c, "thread count changed the bytes");

        let out = tempfile::tempdir().unwrap();
        stage
            .compute(data.path(), out.path(), 2, &|| false, &|_, _| {})
            .unwrap();
        let doc = SpectrumDoc::read(out.path()).unwrap();
        let names: Vec<&str> = doc.groups.iter().map(|g| g.name.as_str()).collect();
        // Reals have one source: no per-source group for them.
        assert_eq!(names, ["real", "fake", "source:blend", "source:gan"]);
        assert_eq!(
            doc.groups.iter().map(|g| (g.n, g.available)).collect::<Vec<_>>(),
            [(10, 12), (10, 24), (10, 12), (10, 12)]
        );
        assert_eq!(doc.frequencies.len(), 9);
        assert_eq!(doc.scale, 4);
        for g in &doc.groups {
            assert_eq!(g.azimuthal.len(), 9);
            let png = image::open(out.path().join(&g.png)).unwrap();
            assert_eq!(png.width(), 64);
            assert_eq!(g.diff_png.is_some(), g.label == 1);
        }
        let at_nyquist = |name: &str| doc.groups.iter().find(|g| g.name == name).unwrap().azimuthal[8];
        // Measured: gan 0.30, blend 0.65 (its mid band: 0.86 and 0.67).
        assert!(at_nyquist("source:gan") < 0.6 * at_nyquist("source:blend"), "{doc:?}");
        assert!(out.path().join(files::AZIMUTHAL_SVG).exists() && out.path().join(files::AZIMUTHAL_PNG).exists());
    }

    #[test]
    fn the_subset_is_by_hash_not_by_name() {
        let data = tempfile::tempdir().unwrap();
        tensors(data.path(), 8, 6, 100);
        let index = read_index(data.path()).unwrap();
        let groups = groups_of(&index, 4).unwrap();
        let fake = &groups[1];
        assert_eq!(fake.rows.len(), 4);
        assert!(fake.rows.windows(2).all(|w| w[0] < w[1]), "row order");
        // Not simply the first four by name or by row.
        assert_ne!(fake.rows, [6, 7, 8, 9]);
        assert_eq!(groups_of(&index, 4).unwrap()[1].rows, fake.rows);
    }

    #[test]
    fn params() {
        let s: Spectrum = ron::from_str(r#"(data: "p", window: None)"#).unwrap();
        assert_eq!((s.max_per_group, s.window), (2000, Window::None));
        let s: Spectrum = ron::from_str(r#"(data: "p")"#).unwrap();
        assert_eq!(s.window, Window::Hann);
        assert!(s.validate().is_empty());
        let bad = Spectrum {
            max_per_group: 0,
            ..s.clone()
        };
        assert_eq!(bad.validate().len(), 1);
        assert_eq!(
            key_params_of(&s, &["data"]),
            serde_json::json!({"max_per_group": 2000, "window": "Hann"})
        );
    }
}
