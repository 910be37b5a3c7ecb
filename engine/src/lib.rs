//! flow's engine: pipeline spec (RON) → validated DAG of stage instances → content keys →
//! plan (fresh / stale, and why) → parallel, cached execution. Knows nothing of torch or
//! images: stage kinds come from a [`Registry`] filled by the `stages` crate.

pub mod context;
pub mod dag;
pub mod diag;
pub mod experiment;
pub mod key;
pub mod launch;
pub mod maintain;
pub mod overrides;
pub mod plan;
pub mod provenance;
pub mod ron_text;
pub mod run;
pub mod spec;
pub mod stage;
pub mod study;
pub mod views;

pub use context::{Context, NotFresh};
pub use dag::{build_dag, Dag, DagFormat, Instance};
pub use diag::{Code, Diagnostic, SourceFile};
pub use experiment::{Experiment, ExperimentStage};
pub use plan::{DirtyReason, InstanceStatus, RunRecord, State};
pub use run::{run, RunEvent, RunOptions, RunSummary};
pub use spec::{load_pipeline, Pipeline, StageDecl};
pub use stage::*;

/// Load, validate and expand a pipeline file.
pub fn load_dag(path: &std::path::Path, registry: &Registry) -> Result<Dag, Vec<Diagnostic>> {
    load_dag_with(path, registry, &[])
}

/// [`load_dag`] with `--set` overrides applied (see [`overrides`]).
pub fn load_dag_with(
    path: &std::path::Path,
    registry: &Registry,
    set: &[overrides::Override],
) -> Result<Dag, Vec<Diagnostic>> {
    // A study is told by its first word; anything unreadable is left to the pipeline loader.
    // Only a regular file is read here (a fifo would block the read forever).
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    if regular && std::fs::read_to_string(path).is_ok_and(|t| study::is_study(&t)) {
        return study::load_study(path, registry, set);
    }
    let p = spec::load_pipeline_with(path, registry, set)?;
    build_dag(p)
}
