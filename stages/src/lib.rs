//! flow's stage kinds. Every kind's *configuration* (params, ports, validation) is always
//! compiled so `flow check` works without libtorch; only execution of torch-backed kinds
//! needs the `torch` feature.

pub mod calibrate;
pub mod data;
pub mod exec;
pub mod model;
pub mod report;
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
