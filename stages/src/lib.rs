//! flow's stage kinds. Every kind's *configuration* (params, ports, validation) is in this
//! crate, which never links libtorch, so `flow check`, planning and every non-torch stage work
//! without it; torch-backed kinds execute in `flow-worker` (crate `stages/torch`, see
//! [`worker`]).
//!
//! * [`ports`] — every file passed between stages, defined once (a leaf module);
//! * [`metrics`], [`stats`] — the one set of scikit-learn/scipy-checked metrics and tests;
//! * the kinds: [`exec`], [`data`] (Ingest, Split, Preprocess), [`model`] (Train, Retrain,
//!   EnsembleInfer), [`calibrate`] (Calibrate, MineHardNegatives), [`report`].

pub mod calibrate;
pub mod data;
pub mod exec;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod process;
pub mod report;
pub mod stats;
pub mod torch_info;
pub mod worker;

use flow_engine::Registry;

/// Every stage kind this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(exec::kind());
    r.register(data::ingest::kind());
    r.register(data::split::kind());
    r.register(data::preprocess::kind());
    r.register(model::train_kind());
    r.register(calibrate::calibrate_kind());
    r.register(calibrate::mine_kind());
    r.register(model::retrain_kind());
    r.register(model::infer_kind());
    r.register(report::stage::report_kind());
    r
}
