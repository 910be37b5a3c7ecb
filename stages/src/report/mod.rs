//! The Report stage and `flow compare`, in pure Rust (no libtorch): plots ([`plots`]), the
//! stage itself ([`stage`]: `index.html`, `report.md`, `metrics.json`) and cross-experiment
//! comparison ([`compare`]), on the crate's one set of metrics ([`crate::metrics`]) and
//! paired tests ([`crate::stats`]). Label 1 = fake (the positive class), 0 = real; a score is
//! P(fake).

pub mod compare;
pub mod page;
pub mod plots;
pub mod stage;
