//! The seeds' forensic models: evidence modules (boundary, frequency), RADAR (seed 003),
//! Spotter (seed 001) and the SRM input filter, on top of any [`Backbone`].
//!
//! - [`evidence`]: Sobel edges, the high-passed spectrum, BADM and AADM;
//! - [`radar`]: the evidence refinement module (ERM), gating and RADAR's loss;
//! - [`spotter`]: channel + spatial attention and multi-scale fusion;
//! - [`srm`]: RGB-N's three fixed SRM kernels.

pub mod evidence;
pub mod radar;
pub mod spotter;
pub mod srm;

use flow_stages::model::{Radar, Spotter};
use tch::nn;

use crate::backbones::Backbone;
use crate::nets::Detector;

/// RADAR with `backbone` (whose variables the caller built under `p / "backbone"`); its own
/// variables under `p` (`badm.…`, `aadm.…`, `erm.…`, `classifier_*`, `gating_logit`; see
/// [`radar`]), for `size`-pixel inputs.
pub fn radar(p: &nn::Path, cfg: &Radar, backbone: Box<dyn Backbone>, size: i64) -> Result<Box<dyn Detector>, String> {
    Ok(Box::new(radar::RadarNet::new(p, cfg, backbone, size)?))
}

/// Spotter on an EfficientNet `backbone` built under `p / "backbone"`; its own variables under
/// `p` (`attention.…`, `multiscale.…`, `classifier`; see [`spotter`]).
pub fn spotter(
    p: &nn::Path,
    cfg: &Spotter,
    backbone: Box<dyn Backbone>,
    size: i64,
) -> Result<Box<dyn Detector>, String> {
    Ok(Box::new(spotter::SpotterNet::new(p, cfg, backbone, size)?))
}
