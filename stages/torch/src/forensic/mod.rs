//! The seeds' forensic models: evidence modules (boundary, frequency), RADAR (seed 003),
//! Spotter (seed 001) and the SRM input filter, on top of any [`Backbone`].

pub mod evidence;
pub mod radar;
pub mod spotter;
pub mod srm;

use flow_stages::model::{Radar, Spotter};
use tch::nn;

use crate::backbones::Backbone;
use crate::nets::Detector;

/// RADAR with `backbone` (whose variables the caller built under `p / "backbone"`); its own
/// variables under `p` (`badm.…`, `aadm.…`, `erm.…`, `classifier_*`, `gating_logit`), for
/// `size`-pixel inputs.
pub fn radar(p: &nn::Path, cfg: &Radar, backbone: Box<dyn Backbone>, size: i64) -> Result<Box<dyn Detector>, String> {
    let _ = (p, cfg, backbone, size);
    Err("Radar is not built yet".into())
}

/// Spotter on an EfficientNet `backbone` built under `p / "backbone"`.
pub fn spotter(
    p: &nn::Path,
    cfg: &Spotter,
    backbone: Box<dyn Backbone>,
    size: i64,
) -> Result<Box<dyn Detector>, String> {
    let _ = (p, cfg, backbone, size);
    Err("Spotter is not built yet".into())
}
