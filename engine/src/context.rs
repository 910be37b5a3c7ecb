//! The context every command works in: one workspace, one cache store, and the stat cache
//! that turns the workspace paths a DAG reads into content digests.
//!
//! Commands (`run`, `status`, `gc`, `compare`) all need the same sequence — load the stat
//! cache, digest the paths, save the stat cache, plan — so it lives here once. The store is
//! opened by the caller (read-only or not, locked or not: that is the command's decision).

use std::path::{Path, PathBuf};

use flow_cache::{FileStateCache, Store};

use crate::plan::{self, PathDigests, RunRecord};
use crate::{Dag, InstanceStatus, State};

pub struct Context {
    /// Absolute: stage sandboxes link to workspace paths.
    pub workspace: PathBuf,
    pub store: Store,
    /// Opened with [`Store::open_read_only`]: nothing is expected to be saved.
    pub read_only: bool,
}

/// Why a stage has no result a command may use.
#[derive(Debug)]
pub enum NotFresh {
    /// The pipeline has no such stage.
    NoSuchStage(String),
    /// It has to run first: why (the planner's reasons, or "never run").
    Stale(String),
    /// The run record could not be used.
    Record(String),
}

impl std::fmt::Display for NotFresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotFresh::NoSuchStage(s) | NotFresh::Stale(s) | NotFresh::Record(s) => f.write_str(s),
        }
    }
}

impl Context {
    pub fn new(workspace: PathBuf, store: Store, read_only: bool) -> Context {
        Context {
            workspace,
            store,
            read_only,
        }
    }

    /// Where stage outputs are exposed: `out/<pipeline>/<stage>/`.
    pub fn out_root(&self) -> PathBuf {
        self.workspace.join("out")
    }

    /// The digests of every workspace path each DAG reads. Unchanged files are not re-read;
    /// the stat cache is saved afterwards when the store can be written (a read-only cache
    /// only loses the speed-up).
    pub fn digest(&self, dags: &[&Dag]) -> Vec<PathDigests> {
        let mut fsc = FileStateCache::load(&self.store);
        let out = dags
            .iter()
            .map(|d| plan::digest_paths(d, &self.workspace, &mut fsc))
            .collect();
        match fsc.save(&self.store) {
            Err(e) if !self.read_only => tracing::warn!("cannot save file-state cache: {e}"),
            _ => {}
        }
        out
    }

    /// Fresh / stale / never-run for every instance of `dag`, and why.
    pub fn status(&self, dag: &Dag) -> Vec<InstanceStatus> {
        let paths = self.digest(&[dag]).pop().unwrap_or_default();
        plan::status(dag, &self.store, &paths)
    }

    /// The run record of stage `stage` of `dag`, when that stage (single-instance) is fresh.
    pub fn fresh_record(&self, dag: &Dag, stage: &str) -> Result<RunRecord, NotFresh> {
        let pipeline = &dag.pipeline.name;
        let st = self.status(dag);
        let s = st
            .iter()
            .find(|s| s.stage == stage)
            .ok_or_else(|| NotFresh::NoSuchStage(format!("`{stage}` is not a stage of pipeline `{pipeline}`")))?;
        if s.state != State::Fresh {
            let why = if s.reasons.is_empty() {
                "never run".to_string()
            } else {
                s.reasons.join("; ")
            };
            return Err(NotFresh::Stale(format!("{pipeline}: `{stage}` is not fresh ({why})")));
        }
        let key = s.key.clone().unwrap_or_default();
        plan::lookup(&self.store, &key).map_err(|e| NotFresh::Record(format!("{pipeline}: {e}")))
    }

    /// A path of the workspace, as the user should read it in messages: relative to the
    /// current directory when the workspace is (or is below) it, absolute otherwise.
    pub fn shown(&self, rel: &Path) -> PathBuf {
        let abs = self.workspace.join(rel);
        match std::env::current_dir().ok().and_then(|cwd| {
            let cwd = std::fs::canonicalize(cwd).ok()?;
            abs.strip_prefix(&cwd).ok().map(Path::to_path_buf)
        }) {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => abs,
        }
    }
}
