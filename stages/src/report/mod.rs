//! Numerics for the Report stage, in pure Rust (no libtorch): binary-classification metrics,
//! calibration, confidence intervals ([`metrics`]) and paired significance tests ([`stats`]).
//! Label 1 = fake (the positive class), 0 = real; a score is P(fake). Every function returns
//! `None` instead of panicking where its value is undefined. `reference_values.py` (next to
//! these files) re-derives the scikit-learn/scipy numbers the unit tests compare against.

pub mod metrics;
pub mod stats;
