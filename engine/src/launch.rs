//! Where a stage instance runs: the seam between the scheduler, which decides *when* an
//! instance runs (readiness, CPU and GPU budget, failures), and a [`Launcher`], which decides
//! *where* and *how*. Today there is one, [`Local`]: this process materialises the inputs in a
//! private scratch directory of the cache, calls the stage's `execute` (which may itself start
//! a process: an `Exec` command, the torch worker) and publishes. A cluster launcher (a Slurm
//! job per instance, on a shared cache) implements the same trait and publishes the same way,
//! so keys, outputs and records do not depend on where an instance ran.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flow_cache::{Materialize, Store, Tree};
use petgraph::graph::NodeIndex;

use crate::dag::Dag;
use crate::key::KeyDoc;
use crate::plan::{PathDigests, RunRecord};
use crate::run::RunEvent;
use crate::stage::{ExecCtx, ResolvedInput, ResolvedPath, StageError};

/// One instance ready to run: its key and what its inputs are.
#[derive(Clone, Debug)]
pub struct InstanceJob {
    pub node: NodeIndex,
    /// `name` or `name@foldK`.
    pub id: String,
    pub key: String,
    pub doc: KeyDoc,
    /// Each stage input: its port and the producing instance's published outputs.
    pub inputs: Vec<InputRef>,
    /// CPU threads and GPU index the scheduler granted.
    pub threads: usize,
    pub gpu: Option<usize>,
}

/// A stage input as published by its producer.
#[derive(Clone, Debug)]
pub struct InputRef {
    pub port: String,
    /// The producing instance (its id in the DAG).
    pub from: String,
    /// Its name in the consumer's own pipeline ([`crate::Dag::local_id`]): what the stage sees.
    pub local: String,
    pub fold: Option<u32>,
    pub tree: Tree,
    pub meta: serde_json::Value,
}

/// What every launch may use (references only: copied to each worker thread).
#[derive(Clone, Copy)]
pub struct LaunchCtx<'a> {
    pub dag: &'a Dag,
    pub store: &'a Store,
    /// Digests of the workspace paths the pipeline reads.
    pub paths: &'a PathDigests,
    /// The workspace root (absolute).
    pub workspace: &'a Path,
    pub cancel: &'a AtomicBool,
    pub on_event: &'a (dyn Fn(RunEvent) + Sync),
    /// The run's git commit and pipeline file, for every record it writes.
    pub facts: &'a crate::provenance::RunFacts,
}

/// A stage that can resume a killed run may write `resume/<key>/progress.json` (atomically)
/// as `{"done": 7, "of": 16, "unit": "epoch"}`: `flow status` and `flow run -n` then say the
/// instance is resumable and from where. The engine reads nothing else of a resume directory.
/// Train writes it right after each checkpoint, so a kill between the two leaves it one
/// epoch behind the checkpoint the next run resumes from (never ahead of it).
pub const RESUME_PROGRESS: &str = "progress.json";

/// What a [`RESUME_PROGRESS`] file says.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResumeProgress {
    pub done: u64,
    pub of: u64,
    pub unit: String,
}

impl ResumeProgress {
    /// The progress a killed run of `key` left, if any.
    pub fn of_key(store: &Store, key: &str) -> Option<ResumeProgress> {
        let p = store.root().join("resume").join(key).join(RESUME_PROGRESS);
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }
}

/// Runs instances somewhere. Every method may be called from several scheduler threads.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Run `job` to its end and publish it. On `Ok`, every output is an object of the store
    /// and the returned record has been written — last, after every object, so a crash at
    /// any point leaves nothing a later run would trust. Must stop soon after `ctx.cancel` is
    /// set (returning [`StageError::Cancelled`], publishing nothing), may report progress as
    /// [`RunEvent::Progress`] through `ctx.on_event`, and must write the instance's log at
    /// `ctx.store.log_path(&job.key)`.
    fn launch(&self, job: &InstanceJob, ctx: &LaunchCtx<'_>) -> Result<RunRecord, StageError>;
}

/// Runs each instance in this process (its stage may start a process of its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Launcher for Local {
    fn launch(&self, job: &InstanceJob, ctx: &LaunchCtx<'_>) -> Result<RunRecord, StageError> {
        let started = now_unix();
        let t = Instant::now();
        let decl = ctx.dag.decl(job.node);
        let inst = ctx.dag.instance(job.node);
        let local = ctx.dag.local_id(job.node);
        let store = ctx.store;
        let tmp = store.new_tmp_dir(&format!("{}-{}", sanitize(&job.id), &job.key[..12]))?;
        let (in_dir, out_dir, work_dir) = (tmp.path().join("in"), tmp.path().join("out"), tmp.path().join("work"));
        for d in [&in_dir, &out_dir, &work_dir] {
            std::fs::create_dir_all(d)?;
        }
        let inputs = materialize_inputs(store, job, &in_dir)?;
        let paths = resolve_paths(ctx, job.node);
        let log_path = store.log_path(&job.key);
        {
            use std::io::Write;
            let mut f = File::create(&log_path)?;
            writeln!(f, "# {} [{}] key {}", job.id, decl.kind.name, job.key)?;
        }
        let meta = std::sync::Mutex::new(serde_json::Value::Null);
        let resume_dir = store.root().join("resume").join(&job.key);
        std::fs::create_dir_all(&resume_dir)?;
        let id = job.id.clone();
        let on_event = ctx.on_event;
        let progress = move |frac: f64, msg: &str| {
            on_event(RunEvent::Progress {
                id: id.clone(),
                frac,
                msg: msg.to_string(),
            })
        };
        let exec = ExecCtx {
            instance: &local,
            fold: inst.fold,
            out_dir: &out_dir,
            work_dir: &work_dir,
            resume_dir: &resume_dir,
            workspace: ctx.workspace,
            inputs: &inputs,
            paths: &paths,
            store,
            threads: job.threads,
            gpu: job.gpu,
            log_path: &log_path,
            cancel: ctx.cancel,
            progress: &progress,
            experiment: job.doc.experiment.as_ref(),
            meta: &meta,
        };
        let _span = tracing::info_span!("stage", id = %job.id).entered();
        decl.config.execute(&exec)?;
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(StageError::Cancelled);
        }
        let meta = meta.into_inner().unwrap_or(serde_json::Value::Null);
        let rec = publish(ctx, job, &out_dir, started, t, meta)?;
        drop(tmp);
        let _ = std::fs::remove_dir_all(&resume_dir);
        Ok(rec)
    }
}

/// Each input's published outputs as a read-only directory of symlinks to the objects.
fn materialize_inputs(store: &Store, job: &InstanceJob, in_dir: &Path) -> Result<Vec<ResolvedInput>, StageError> {
    let mut inputs = Vec::new();
    for i in &job.inputs {
        let dir = in_dir.join(sanitize(&i.from));
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            store.materialize(&i.tree, &dir, Materialize::Symlink)?;
        }
        inputs.push(ResolvedInput {
            port: i.port.clone(),
            from: i.local.clone(),
            fold: i.fold,
            dir,
            tree: i.tree.clone(),
            meta: i.meta.clone(),
        });
    }
    Ok(inputs)
}

/// The instance's workspace-path inputs, with their digests.
fn resolve_paths(ctx: &LaunchCtx<'_>, n: NodeIndex) -> Vec<ResolvedPath> {
    ctx.dag
        .paths_of(n)
        .into_iter()
        .map(|p| {
            let tree = ctx
                .paths
                .get(&p.rel)
                .and_then(|r| r.as_ref().ok())
                .and_then(|s| s.tree.clone());
            ResolvedPath {
                abs: ctx.workspace.join(&p.rel),
                port: p.port,
                rel: p.rel,
                tree,
            }
        })
        .collect()
}

/// Publish: every file of `out_dir` into the store, the tree manifest, then the record (last).
fn publish(
    ctx: &LaunchCtx<'_>,
    job: &InstanceJob,
    out_dir: &Path,
    started: f64,
    t: Instant,
    meta: serde_json::Value,
) -> Result<RunRecord, StageError> {
    let store = ctx.store;
    let tree = store.ingest_dir(out_dir)?;
    let output = store.put_tree(&tree)?;
    let mtimes = tree
        .entries
        .iter()
        .filter_map(|(p, e)| store.object_mtime(&e.hash).map(|m| (p.clone(), m)))
        .collect();
    let rec = RunRecord {
        key: job.key.clone(),
        pipeline: ctx.dag.pipeline.name.clone(),
        instance: job.id.clone(),
        doc: job.doc.clone(),
        output,
        tree,
        started_unix: started,
        duration_s: t.elapsed().as_secs_f64(),
        host: host(),
        flow_version: env!("CARGO_PKG_VERSION").to_string(),
        mtimes,
        meta,
        facts: ctx.facts.clone(),
    };
    store.write_record(&job.key, &rec)?;
    Ok(rec)
}

/// An instance id as a file name (`train@fold2` → `train.fold2`).
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
