//! The `spectrum` artifact the Spectrum stage writes (see [`crate::spectrum`] for what is
//! computed):
//! * `spectrum.json` — [`SpectrumDoc`]: image size, window, method, the colour ranges and, per
//!   group ([`GroupSpectrum`]), its name, label, item count, azimuthal average and PNG names;
//! * one `mean-NN-<slug>.png` per group: the mean log-magnitude spectrum (zero frequency in
//!   the centre), viridis over [`SpectrumDoc::mean_range`], up-scaled ×[`SpectrumDoc::scale`]
//!   nearest-neighbour;
//! * one `diff-NN-<slug>.png` per fake group (when there are reals): its mean minus the real
//!   mean, a diverging map (blue below, white equal, red above the real mean) over
//!   ±[`SpectrumDoc::diff_range`];
//! * `azimuthal.svg`, `azimuthal.png` — every group's azimuthal average against spatial
//!   frequency as a fraction of Nyquist (the Report's plot style, 640×420).
//!
//! `NN` is the group's position in [`SpectrumDoc::groups`]; `<slug>` its name in lower-case
//! ASCII letters, digits and `-` (at most 40 characters), so file names are safe whatever the
//! source names are. Consumers take the file names from the document, never rebuild them.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use super::SPECTRUM as PORT;

/// The document.
pub const DOC: &str = "spectrum.json";
/// The azimuthal-average plot, as SVG (inline it) and PNG.
pub const AZIMUTHAL_SVG: &str = "azimuthal.svg";
pub const AZIMUTHAL_PNG: &str = "azimuthal.png";

/// The window applied to each (mean-subtracted, grayscale) image before its FFT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Window {
    /// Separable periodic Hann, `w(x)·w(y)` with `w(n) = 0.5 − 0.5·cos(2πn/N)`: the image
    /// fades to 0 at its borders, so the edge discontinuity of the implied periodic image
    /// does not leak into a cross of energy along both axes.
    #[default]
    Hann,
    /// No window (rectangular).
    None,
}

/// The file name of group `i`'s mean spectrum PNG.
pub fn mean_png_name(i: usize, group: &str) -> String {
    format!("mean-{i:02}-{}.png", slug(group))
}

/// The file name of group `i`'s difference-to-real PNG.
pub fn diff_png_name(i: usize, group: &str) -> String {
    format!("diff-{i:02}-{}.png", slug(group))
}

/// `name` in lower-case ASCII letters, digits and single `-`, at most 40 characters.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
        if s.len() >= 40 {
            break;
        }
    }
    let s = s.trim_matches('-');
    if s.is_empty() {
        "group".into()
    } else {
        s.into()
    }
}

/// One group of images and its spectrum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpectrum {
    /// `real`, `fake`, or `source:<name>` (a per-source group).
    pub name: String,
    /// 0 = real, 1 = fake.
    pub label: u8,
    /// The source of a per-source group; `null` for the class groups.
    pub source: Option<String>,
    /// Images averaged (at most `max_per_group`).
    pub n: usize,
    /// Images of the group in the input.
    pub available: usize,
    /// Mean of the group's mean log spectrum over each integer radius `r = 0..=size/2`
    /// (`r = round(√(dx² + dy²))` from the centre); entry `r` is at spatial frequency
    /// `r / (size/2)` of Nyquist (6 decimals).
    pub azimuthal: Vec<f64>,
    /// Its mean spectrum PNG.
    pub png: String,
    /// Its difference-to-real PNG (fake groups, when there are reals).
    pub diff_png: Option<String>,
}

/// `spectrum.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumDoc {
    /// Side of the (square) preprocessed images, pixels.
    pub size: u32,
    pub window: Window,
    /// What was computed, in words.
    pub method: String,
    /// The param: most images per group.
    pub max_per_group: usize,
    /// PNG pixels per spectrum bin (nearest-neighbour up-scaling).
    pub scale: u32,
    /// `[lo, hi]` of the viridis map of every mean PNG (common to all groups, so they compare).
    pub mean_range: [f64; 2],
    /// `m`: the diverging map of every difference PNG spans `[-m, m]`; `null` without
    /// difference PNGs.
    pub diff_range: Option<f64>,
    /// The spatial frequency of each azimuthal entry, as a fraction of Nyquist (6 decimals).
    pub frequencies: Vec<f64>,
    pub groups: Vec<GroupSpectrum>,
    /// [`AZIMUTHAL_SVG`] and [`AZIMUTHAL_PNG`].
    pub azimuthal_svg: String,
    pub azimuthal_png: String,
}

impl SpectrumDoc {
    /// `spectrum.json` of the artifact in `dir`; the PNGs and plots it names are in `dir` too.
    pub fn read(dir: &Path) -> Result<SpectrumDoc, String> {
        super::read_json(&dir.join(DOC))
    }
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        super::write_json(&dir.join(DOC), self, false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_are_safe() {
        assert_eq!(
            super::mean_png_name(2, "source:gan_upsample"),
            "mean-02-source-gan-upsample.png"
        );
        assert_eq!(super::diff_png_name(0, "../../x"), "diff-00-x.png");
        assert_eq!(super::mean_png_name(1, "ÄÖ"), "mean-01-group.png");
        assert!(super::mean_png_name(3, &"a".repeat(100)).len() < 60);
    }
}
