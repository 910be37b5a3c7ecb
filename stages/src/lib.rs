//! flow's stage kinds. Every kind's *configuration* (params, ports, validation) is always
//! compiled so `flow check` works without libtorch; only execution of torch-backed kinds
//! needs the `torch` feature.

pub mod exec;
pub mod torch_info;
pub mod worker;

use flow_engine::Registry;

/// Every stage kind this build knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(exec::kind());
    r
}
