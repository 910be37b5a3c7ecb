//! flow's stage kinds. Every kind's *configuration* (params, ports, validation) is in this
//! crate, which never links libtorch, so `flow check`, planning and every non-torch stage work
//! without it; torch-backed kinds execute in `flow-worker` (crate `stages/torch`, see
//! [`worker`]).
//!
//! * [`ports`] — every file passed between stages, defined once (a leaf module);
//! * [`metrics`], [`stats`] — the one set of scikit-learn/scipy-checked metrics and tests;
//! * the kinds: [`exec`], [`data`] (Ingest, Split, Preprocess), [`model`] (Train, Retrain,
//!   EnsembleInfer), [`calibrate`] (Calibrate, MineHardNegatives), [`report`], [`spectrum`]
//!   (Spectrum).

pub mod calibrate;
pub mod data;
pub mod exec;
pub mod explain;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod process;
pub mod report;
pub mod spectrum;
pub mod stats;
pub mod study;
pub mod torch_info;
pub mod worker;

use flow_engine::{Registry, StageKind};

/// One stage kind's constructor, submitted in the kind's own module with
/// `inventory::submit! { crate::Kind(|| StageKind::new::<T>(name, version, summary)) }`:
/// [`registry`] collects them all, so adding a kind edits no central list (see
/// `docs/architecture.md`).
pub struct Kind(pub fn() -> StageKind);

inventory::collect!(Kind);

/// Every stage kind this build knows.
///
/// Panics if two kinds share a name (a pipeline could not say which it means).
pub fn registry() -> Registry {
    let mut r = Registry::new();
    for k in inventory::iter::<Kind> {
        let kind = (k.0)();
        assert!(r.get(kind.name).is_none(), "two stage kinds are named `{}`", kind.name);
        r.register(kind);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_is_registered_once() {
        let names: Vec<&str> = super::registry().names().collect();
        assert_eq!(
            names,
            [
                "Calibrate",
                "EnsembleInfer",
                "Exec",
                "Explain",
                "Ingest",
                "MineHardNegatives",
                "Preprocess",
                "Report",
                "Retrain",
                "Spectrum",
                "Split",
                "StudyReport",
                "Train"
            ]
        );
    }
}
