//! The Report stage and `flow compare`, in pure Rust (no libtorch): binary-classification
//! metrics, calibration, confidence intervals ([`metrics`]), paired significance tests
//! ([`stats`]), plots ([`plots`]), the stage itself ([`stage`]: `index.html`, `report.md`,
//! `metrics.json`) and cross-experiment comparison ([`compare`]). Label 1 = fake (the
//! positive class), 0 = real; a score is P(fake). Every numeric function returns `None`
//! instead of panicking where its value is undefined. `reference_values.py` (next to these
//! files) re-derives the scikit-learn/scipy numbers the unit tests compare against.

pub mod compare;
pub mod metrics;
pub mod plots;
pub mod stage;
pub mod stats;
