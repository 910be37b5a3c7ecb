//! The scheduler: runs stale instances in parallel on a crossbeam worker pool, within a CPU
//! and GPU budget, reusing every instance whose key has a valid run record.
//!
//! Keys are computed just in time, when all of an instance's inputs are done, from their
//! *output* hashes — so an upstream rerun that reproduces identical bytes makes the
//! downstream key equal to the cached one (early cutoff).
//!
//! Publishing an instance: the stage writes into a private tmp dir; the engine moves each
//! file into the content-addressed store, stores the tree manifest, and writes the run
//! record *last* (atomic rename + fsync). A crash at any point before the record leaves only
//! unreferenced tmp files or objects, never a record pointing at partial output.
//! On the first failure nothing new is started (unless `keep_going`), running instances
//! finish, and every finished instance stays cached.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel;
use flow_cache::{Hash, Materialize, Store, Tree};
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use serde::Serialize;

use crate::dag::Dag;
use crate::key::KeyDoc;
use crate::plan::{key_doc, last_run_name, lookup, LastRun, PathDigests, RunRecord};
use crate::stage::{ExecCtx, ResolvedInput, ResolvedPath, StageError};
use crate::views::Views;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Instances running at once.
    pub jobs: usize,
    /// CPU threads to share among running instances.
    pub cpus: usize,
    /// GPU indices available (one per running GPU instance).
    pub gpus: Vec<usize>,
    pub workspace: PathBuf,
    /// `out/` root; each stage's outputs appear under `out/<pipeline>/<stage>/[foldK/]`.
    pub out_root: Option<PathBuf>,
    /// Run only these instances and what they need (`None` = everything).
    pub targets: Option<Vec<String>>,
    /// Keep starting independent instances after a failure.
    pub keep_going: bool,
}

/// Progress events for the UI.
#[derive(Clone, Debug)]
pub enum RunEvent {
    Planned {
        total: usize,
    },
    Cached {
        id: String,
    },
    Started {
        id: String,
        key: String,
        threads: usize,
        gpu: Option<usize>,
    },
    Progress {
        id: String,
        frac: f64,
        msg: String,
    },
    Finished {
        id: String,
        secs: f64,
    },
    Failed {
        id: String,
        error: String,
        /// The instance's log, when it has one (a stage that failed before it started has none).
        log: Option<PathBuf>,
    },
    /// Not started because of a failure or cancellation.
    Skipped {
        id: String,
    },
    /// Was running when the run was cancelled (Ctrl-C); nothing of it was published.
    Interrupted {
        id: String,
    },
    /// Something the user should know that did not fail the run (e.g. a view under `out/`
    /// that flow would not replace).
    Warning {
        message: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub stage: String,
    pub error: String,
    /// `null` when the instance failed before it had a log.
    pub log: Option<PathBuf>,
}

/// What `flow run --json` prints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub executed: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<Failure>,
    /// Not started because of a failure or cancellation.
    pub skipped: Vec<String>,
    /// Running when the run was cancelled; nothing of them was published.
    pub interrupted: Vec<String>,
    pub cancelled: bool,
    pub seconds: f64,
    /// Files under the workspace paths the pipeline reads, and how many of them had to be
    /// read to know their content (the rest were known unchanged from the stat cache).
    pub workspace_files: usize,
    pub workspace_files_read: usize,
    /// Problems that did not fail the run (views under `out/` left alone, …).
    pub warnings: Vec<String>,
}

/// The most instances [`run`] runs at once (`--jobs`), and the largest CPU budget (`--cpus`):
/// beyond, a thread per job is a typo, not a machine.
pub const MAX_JOBS: usize = 1024;
pub const MAX_CPUS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Cache(#[from] flow_cache::CacheError),
    #[error("{0}")]
    Other(String),
}

struct Job {
    node: NodeIndex,
    id: String,
    key: String,
    doc: KeyDoc,
    inputs: Vec<(String, String, Option<u32>, Tree, serde_json::Value)>,
    threads: usize,
    gpu: Option<usize>,
}

struct Done {
    node: NodeIndex,
    threads: usize,
    gpu: Option<usize>,
    result: Result<RunRecord, StageError>,
    secs: f64,
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

/// Run the DAG. `paths` are the workspace path digests ([`crate::plan::digest_paths`]).
pub fn run(
    dag: &Dag,
    store: &Store,
    paths: &PathDigests,
    opts: &RunOptions,
    cancel: &AtomicBool,
    on_event: &(dyn Fn(RunEvent) + Sync),
) -> Result<RunSummary, EngineError> {
    let t0 = Instant::now();
    let mut summary = RunSummary {
        pipeline: dag.pipeline.name.clone(),
        ..Default::default()
    };
    for st in paths.values().flatten() {
        summary.workspace_files += st.files;
        summary.workspace_files_read += st.rehashed;
    }

    // Which instances to consider.
    let wanted: Vec<bool> = match &opts.targets {
        None => vec![true; dag.graph.node_count()],
        Some(t) => {
            let mut w = vec![false; dag.graph.node_count()];
            let mut stack: Vec<NodeIndex> = Vec::new();
            for id in t {
                for (iid, n) in &dag.by_id {
                    if iid == id || dag.instance(*n).stage == *id {
                        stack.push(*n);
                    }
                }
            }
            while let Some(n) = stack.pop() {
                if !std::mem::replace(&mut w[n.index()], true) {
                    stack.extend(dag.graph.neighbors_directed(n, petgraph::Direction::Incoming));
                }
            }
            w
        }
    };
    let total = wanted.iter().filter(|w| **w).count();
    on_event(RunEvent::Planned { total });

    let mut waiting: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in &dag.order {
        if wanted[n.index()] {
            waiting.insert(n, dag.inputs_of(n).len());
        }
    }
    let mut outputs: HashMap<NodeIndex, Hash> = HashMap::new();
    let mut trees: HashMap<NodeIndex, (Tree, serde_json::Value)> = HashMap::new();
    let mut ready: Vec<NodeIndex> = dag
        .order
        .iter()
        .copied()
        .filter(|n| waiting.get(n) == Some(&0))
        .collect();
    let mut failed_any = false;
    let mut free_cpus = opts.cpus.max(1);
    let mut free_gpus: Vec<usize> = opts.gpus.clone();
    let mut running = 0usize;
    let mut finished: Vec<bool> = vec![false; dag.graph.node_count()];

    if opts.jobs == 0 || opts.jobs > MAX_JOBS {
        return Err(EngineError::Other(format!(
            "--jobs {} is out of range: at least 1 and at most {MAX_JOBS} instances at once",
            opts.jobs
        )));
    }
    if opts.cpus == 0 || opts.cpus > MAX_CPUS {
        return Err(EngineError::Other(format!(
            "--cpus {} is out of range: at least 1 and at most {MAX_CPUS}",
            opts.cpus
        )));
    }
    check_inputs_hold_no_flow_dirs(store, paths, opts)?;
    let views = opts
        .out_root
        .as_deref()
        .map(|r| Views::new(store, r, &dag.pipeline.name));
    if let Some(w) = note_pipeline_file(store, dag) {
        on_event(RunEvent::Warning { message: w.clone() });
        summary.warnings.push(w);
    }
    let warn = |summary: &mut RunSummary, message: String| {
        on_event(RunEvent::Warning {
            message: message.clone(),
        });
        summary.warnings.push(message);
    };
    let (job_tx, job_rx) = channel::unbounded::<Job>();
    let (done_tx, done_rx) = channel::unbounded::<Done>();
    // No more threads than instances that could run.
    let workers = opts.jobs.min(total.max(1));

    let result: Result<(), EngineError> = crossbeam::scope(|scope| {
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move |_| {
                for job in job_rx.iter() {
                    let t = Instant::now();
                    let (node, threads, gpu) = (job.node, job.threads, job.gpu);
                    let result = execute(dag, store, paths, opts, &job, cancel, on_event);
                    let _ = done_tx.send(Done {
                        node,
                        threads,
                        gpu,
                        result,
                        secs: t.elapsed().as_secs_f64(),
                    });
                }
            });
        }
        drop(done_tx);

        loop {
            // Dispatch what can start.
            let mut i = 0;
            while i < ready.len() {
                let n = ready[i];
                let id = dag.instance(n).id.clone();
                if cancel.load(Ordering::Relaxed) || (failed_any && !opts.keep_going) {
                    ready.remove(i);
                    finished[n.index()] = true;
                    summary.skipped.push(id.clone());
                    on_event(RunEvent::Skipped { id });
                    continue;
                }
                let doc = match key_doc(dag, n, &outputs, paths) {
                    Ok(d) => d,
                    Err(reasons) => {
                        // Only a missing workspace path can get here (inputs are all done).
                        ready.remove(i);
                        finished[n.index()] = true;
                        let error = reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
                        on_event(RunEvent::Failed {
                            id: id.clone(),
                            error: error.clone(),
                            log: None,
                        });
                        summary.failed.push(Failure {
                            stage: id,
                            error,
                            log: None,
                        });
                        failed_any = true;
                        continue;
                    }
                };
                let key = doc.key();
                if let Ok(rec) = lookup(store, &key) {
                    ready.remove(i);
                    note_last(store, dag, n, &key);
                    if let Some(Err(w)) = views.as_ref().map(|v| expose(v, dag, n, &rec.tree)) {
                        warn(&mut summary, w);
                    }
                    outputs.insert(n, rec.output);
                    trees.insert(n, (rec.tree, rec.meta));
                    summary.cached.push(id.clone());
                    on_event(RunEvent::Cached { id });
                    finished[n.index()] = true;
                    release(dag, n, &mut waiting, &mut ready, &finished);
                    i = 0;
                    continue;
                }
                let res = dag.decl(n).config.resources();
                let want = if res.threads == 0 {
                    opts.cpus.max(1)
                } else {
                    res.threads.min(opts.cpus.max(1))
                };
                if running >= workers || (running > 0 && want > free_cpus) {
                    i += 1;
                    continue;
                }
                let gpu = if res.gpu && !opts.gpus.is_empty() {
                    match free_gpus.pop() {
                        Some(g) => Some(g),
                        None => {
                            i += 1;
                            continue;
                        }
                    }
                } else {
                    None
                };
                ready.remove(i);
                let threads = want.min(free_cpus.max(1));
                free_cpus = free_cpus.saturating_sub(threads);
                running += 1;
                let inputs = dag
                    .inputs_of(n)
                    .into_iter()
                    .map(|(port, m)| {
                        let (tree, meta) = trees[&m].clone();
                        (port, dag.instance(m).id.clone(), dag.instance(m).fold, tree, meta)
                    })
                    .collect();
                on_event(RunEvent::Started {
                    id: id.clone(),
                    key: key.clone(),
                    threads,
                    gpu,
                });
                job_tx
                    .send(Job {
                        node: n,
                        id,
                        key,
                        doc,
                        inputs,
                        threads,
                        gpu,
                    })
                    .map_err(|e| EngineError::Other(e.to_string()))?;
            }
            if running == 0 {
                break;
            }
            let done = match done_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(d) => d,
                Err(channel::RecvTimeoutError::Timeout) => continue,
                Err(channel::RecvTimeoutError::Disconnected) => break,
            };
            running -= 1;
            free_cpus += done.threads;
            if let Some(g) = done.gpu {
                free_gpus.push(g);
            }
            let n = done.node;
            let id = dag.instance(n).id.clone();
            finished[n.index()] = true;
            match done.result {
                Ok(rec) => {
                    note_last(store, dag, n, &rec.key);
                    if let Some(Err(w)) = views.as_ref().map(|v| expose(v, dag, n, &rec.tree)) {
                        warn(&mut summary, w);
                    }
                    outputs.insert(n, rec.output);
                    trees.insert(n, (rec.tree, rec.meta));
                    summary.executed.push(id.clone());
                    on_event(RunEvent::Finished { id, secs: done.secs });
                    release(dag, n, &mut waiting, &mut ready, &finished);
                }
                Err(StageError::Cancelled) => {
                    summary.cancelled = true;
                    summary.interrupted.push(id.clone());
                    on_event(RunEvent::Interrupted { id });
                }
                Err(e) => {
                    failed_any = true;
                    let key = dag_key_for_log(dag, n, &outputs, paths);
                    let log = Some(store.log_path(&key)).filter(|l| l.is_file());
                    let error = e.to_string();
                    on_event(RunEvent::Failed {
                        id: id.clone(),
                        error: error.clone(),
                        log: log.clone(),
                    });
                    summary.failed.push(Failure { stage: id, error, log });
                }
            }
        }
        drop(job_tx);
        Ok(())
    })
    .map_err(|_| EngineError::Other("a worker thread panicked".into()))?;
    result?;

    // Instances never reached (downstream of a failure or cancellation).
    for &n in &dag.order {
        if wanted[n.index()] && !finished[n.index()] {
            let id = dag.instance(n).id.clone();
            summary.skipped.push(id.clone());
            on_event(RunEvent::Skipped { id });
        }
    }
    if cancel.load(Ordering::Relaxed) {
        summary.cancelled = true;
    }
    if let Some(v) = &views {
        let mut stages: std::collections::BTreeMap<String, Option<u32>> =
            dag.pipeline.stages.iter().map(|d| (d.name.clone(), None)).collect();
        for i in dag.graph.node_weights().filter(|i| i.fold.is_some()) {
            if let Some(folds) = stages.get_mut(&i.stage) {
                *folds.get_or_insert(0) += 1;
            }
        }
        for w in v.sweep(&stages) {
            warn(&mut summary, w);
        }
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

fn dag_key_for_log(dag: &Dag, n: NodeIndex, outputs: &HashMap<NodeIndex, Hash>, paths: &PathDigests) -> String {
    key_doc(dag, n, outputs, paths)
        .map(|d| d.key())
        .unwrap_or_else(|_| "unknown".into())
}

fn release(
    dag: &Dag,
    n: NodeIndex,
    waiting: &mut HashMap<NodeIndex, usize>,
    ready: &mut Vec<NodeIndex>,
    finished: &[bool],
) {
    // `waiting` counts incoming edges, so one decrement per outgoing edge (a consumer may
    // read this producer through several ports: it is visited once per edge).
    for e in dag.graph.edges_directed(n, petgraph::Direction::Outgoing) {
        let m = e.target();
        if let Some(w) = waiting.get_mut(&m) {
            *w = w
                .checked_sub(1)
                .expect("an instance is released once per incoming edge");
            if *w == 0 && !finished[m.index()] && !ready.contains(&m) {
                ready.push(m);
            }
        }
    }
    // Keep topological order so output is deterministic.
    let pos: HashMap<NodeIndex, usize> = dag.order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    ready.sort_by_key(|n| pos[n]);
}

/// A workspace-path input that holds the cache or `out/` (`--cache-dir data` with
/// `Path("data")`, or a link to `out/`) would never be fresh — its content changes with every
/// run — and hands the command a writable view of the cache: refused.
fn check_inputs_hold_no_flow_dirs(store: &Store, paths: &PathDigests, opts: &RunOptions) -> Result<(), EngineError> {
    let mut flow_dirs = vec![(store.root().to_path_buf(), "the cache")];
    flow_dirs.extend(opts.out_root.clone().map(|o| (o, "out/")));
    let mut rels: Vec<&String> = paths.keys().collect();
    rels.sort();
    for rel in rels {
        if let Some(why) = crate::dag::flow_dir_conflict(&opts.workspace, rel, &flow_dirs) {
            return Err(EngineError::Other(why));
        }
    }
    Ok(())
}

/// Which file last ran under a pipeline name (`meta/pipelines/<name>`).
#[derive(Serialize, serde::Deserialize, PartialEq)]
struct PipelineFile {
    file: PathBuf,
}

/// Remember which file runs under this pipeline's name; a warning when another file that
/// still exists ran under the same name before (both would show their outputs in
/// `out/<name>/` and share `flow status` history).
fn note_pipeline_file(store: &Store, dag: &Dag) -> Option<String> {
    let name = format!("pipelines/{}", dag.pipeline.name);
    let file = std::fs::canonicalize(&dag.pipeline.file).ok()?;
    let before = store.read_meta::<PipelineFile>(&name).ok().flatten();
    let now = PipelineFile { file: file.clone() };
    if before.as_ref() == Some(&now) {
        return None;
    }
    let _ = store.write_meta_nosync(&name, &now);
    let other = before?.file;
    other.is_file().then(|| {
        format!(
            "pipeline name `{}` was last run from {}, and now from {}: both show their outputs in out/{}/ \
             and share its history; give one of them another `name`",
            dag.pipeline.name,
            other.display(),
            file.display(),
            dag.pipeline.name
        )
    })
}

fn note_last(store: &Store, dag: &Dag, n: NodeIndex, key: &str) {
    let name = last_run_name(&dag.pipeline.name, &dag.instance(n).id);
    // A no-op run rewrites nothing (each write is an fsync).
    if matches!(store.read_meta::<LastRun>(&name), Ok(Some(l)) if l.key == key) {
        return;
    }
    if let Err(e) = store.write_meta(&name, &LastRun { key: key.to_string() }) {
        tracing::warn!("cannot record last run of {}: {e}", dag.instance(n).id);
    }
}

/// Show an instance's outputs under `out/<pipeline>/<stage>/[foldK/]` (see [`crate::views`]).
fn expose(views: &Views<'_>, dag: &Dag, n: NodeIndex, tree: &Tree) -> Result<(), String> {
    let inst = dag.instance(n);
    views.expose(&inst.stage, inst.fold, tree)
}

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

/// Execute one instance and publish its outputs. Runs on a worker thread.
fn execute(
    dag: &Dag,
    store: &Store,
    paths: &PathDigests,
    opts: &RunOptions,
    job: &Job,
    cancel: &AtomicBool,
    on_event: &(dyn Fn(RunEvent) + Sync),
) -> Result<RunRecord, StageError> {
    let started = now_unix();
    let t = Instant::now();
    let decl = dag.decl(job.node);
    let inst = dag.instance(job.node);
    let tmp = store.new_tmp_dir(&format!("{}-{}", sanitize(&job.id), &job.key[..12]))?;
    let in_dir = tmp.path().join("in");
    let out_dir = tmp.path().join("out");
    let work_dir = tmp.path().join("work");
    for d in [&in_dir, &out_dir, &work_dir] {
        std::fs::create_dir_all(d)?;
    }
    let mut inputs = Vec::new();
    for (port, from, fold, tree, meta) in &job.inputs {
        let dir = in_dir.join(sanitize(from));
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            store.materialize(tree, &dir, Materialize::Symlink)?;
        }
        inputs.push(ResolvedInput {
            port: port.clone(),
            from: from.clone(),
            fold: *fold,
            dir,
            tree: tree.clone(),
            meta: meta.clone(),
        });
    }
    let paths: Vec<ResolvedPath> = dag
        .paths_of(job.node)
        .into_iter()
        .map(|p| {
            let tree = paths
                .get(&p.rel)
                .and_then(|r| r.as_ref().ok())
                .and_then(|s| s.tree.clone());
            ResolvedPath {
                abs: opts.workspace.join(&p.rel),
                port: p.port,
                rel: p.rel,
                tree,
            }
        })
        .collect();
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
    let progress = move |frac: f64, msg: &str| {
        on_event(RunEvent::Progress {
            id: id.clone(),
            frac,
            msg: msg.to_string(),
        })
    };
    let ctx = ExecCtx {
        instance: &inst.id,
        fold: inst.fold,
        out_dir: &out_dir,
        work_dir: &work_dir,
        resume_dir: &resume_dir,
        workspace: &opts.workspace,
        inputs: &inputs,
        paths: &paths,
        store,
        threads: job.threads,
        gpu: job.gpu,
        log_path: &log_path,
        cancel,
        progress: &progress,
        meta: &meta,
    };
    let _span = tracing::info_span!("stage", id = %job.id).entered();
    decl.config.execute(&ctx)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(StageError::Cancelled);
    }
    // Publish: objects, tree, then the record (last).
    let tree = store.ingest_dir(&out_dir)?;
    let output = store.put_tree(&tree)?;
    let mtimes = tree
        .entries
        .iter()
        .filter_map(|(p, e)| store.object_mtime(&e.hash).map(|m| (p.clone(), m)))
        .collect();
    let rec = RunRecord {
        key: job.key.clone(),
        pipeline: dag.pipeline.name.clone(),
        instance: job.id.clone(),
        doc: job.doc.clone(),
        output,
        tree,
        started_unix: started,
        duration_s: t.elapsed().as_secs_f64(),
        host: host(),
        flow_version: env!("CARGO_PKG_VERSION").to_string(),
        mtimes,
        meta: meta.into_inner().unwrap_or(serde_json::Value::Null),
    };
    store.write_record(&job.key, &rec)?;
    drop(tmp);
    let _ = std::fs::remove_dir_all(&resume_dir);
    Ok(rec)
}

/// Log path of an instance's last run (for messages).
pub fn log_of(store: &Store, key: &str) -> PathBuf {
    store.log_path(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{parse_as, FanOut, Input, PortType, Registry, StageConfig, StageKind};

    /// A test stage: `folds` instances (or one), reading `reads` = [(port, stage)], sleeping
    /// `sleep_ms × (fold + 1)`, writing how many inputs it saw.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(default)]
        folds: Option<u32>,
        #[serde(default)]
        reads: Vec<(String, String)>,
        #[serde(default)]
        sleep_ms: u64,
    }

    impl StageConfig for T {
        fn inputs(&self) -> Vec<Input> {
            self.reads
                .iter()
                .map(|(port, s)| Input::stage(port.clone(), s.clone(), &[PortType::ANY]))
                .collect()
        }
        fn output(&self) -> PortType {
            PortType::FILES
        }
        fn fan_out(&self) -> FanOut {
            self.folds.map_or(FanOut::Single, FanOut::Foreach)
        }
        fn key_params(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
        fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
            std::thread::sleep(Duration::from_millis(
                self.sleep_ms * (u64::from(ctx.fold.unwrap_or(0)) + 1),
            ));
            std::fs::write(
                ctx.out_dir.join("o.txt"),
                format!("{} read {}", ctx.instance, ctx.inputs.len()),
            )?;
            Ok(())
        }
    }

    fn run_text(text: &str) -> (RunSummary, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.ron"), text).unwrap();
        let mut reg = Registry::new();
        reg.register(StageKind {
            name: "T",
            version: 1,
            summary: "test stage",
            parse: parse_as::<T>,
        });
        let dag = crate::load_dag(&dir.path().join("p.ron"), &reg).unwrap_or_else(|d| panic!("{d:?}"));
        let store = Store::open(&dir.path().join(".flow")).unwrap();
        let mut fsc = flow_cache::FileStateCache::load(&store);
        let paths = crate::plan::digest_paths(&dag, dir.path(), &mut fsc);
        let opts = RunOptions {
            jobs: 4,
            cpus: 4,
            gpus: vec![],
            workspace: dir.path().to_path_buf(),
            out_root: Some(dir.path().join("out")),
            targets: None,
            keep_going: false,
        };
        let s = run(&dag, &store, &paths, &opts, &AtomicBool::new(false), &|_| {}).unwrap();
        (s, dir)
    }

    // A consumer reading one per-fold producer through two ports has 2 × folds incoming
    // edges. The scheduler decremented its count by the edges between the pair once per
    // *edge*, so it was ready after 2 of 3 folds and failed ("upstream will run first").
    #[test]
    fn a_consumer_of_one_producer_on_two_ports_waits_for_every_fold() {
        let (s, dir) = run_text(
            r#"Pipeline(name: "two", stages: {
                "p": T(folds: 3, sleep_ms: 60),
                "c": T(reads: [("x", "p"), ("y", "p")]),
            })"#,
        );
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        let mut executed = s.executed.clone();
        executed.sort();
        assert_eq!(executed, ["c", "p@fold0", "p@fold1", "p@fold2"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/two/c/o.txt")).unwrap(),
            "c read 6"
        );
    }
}
