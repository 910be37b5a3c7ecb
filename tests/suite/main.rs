//! flow's integration tests, one binary (one link, one process; as ripgrep and nextest do):
//! a module per area, helpers shared in [`common`]. Most tests drive the real `flow` binary
//! in a scratch workspace; `fuzz_ron` and `golden_keys` call the engine in-process.
//!
//! Run one area with `cargo test --release --test suite -- integrity::`.

mod common;

mod cli;
mod data_stages;
mod diagnostics;
mod fuzz_ron;
mod golden_keys;
mod hostile;
mod incremental;
mod integrity;
mod maintenance;
mod model_stages;
mod report;
mod robustness;
mod study;
