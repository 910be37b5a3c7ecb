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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel;
use flow_cache::{Hash, Store, Tree};
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use serde::Serialize;

use crate::dag::Dag;
use crate::launch::{InputRef, InstanceJob, LaunchCtx, Launcher, Local};
use crate::plan::{key_doc, last_run_name, lookup, LastRun, PathDigests, RunRecord};
use crate::stage::StageError;
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
    /// Where instances run (`None`: [`Local`], in this process).
    pub launcher: Option<std::sync::Arc<dyn Launcher>>,
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

struct Done {
    node: NodeIndex,
    key: String,
    threads: usize,
    gpu: Option<usize>,
    result: Result<RunRecord, StageError>,
    secs: f64,
}

/// What the dispatcher decided for one ready instance.
enum Step {
    /// Taken off the ready list (skipped, failed to key, or cached).
    Resolved,
    /// Cannot start yet (no free worker, CPU share or GPU): stays ready.
    Wait,
    /// Hand it to a worker.
    Start(InstanceJob),
}

/// The state of one run: which instances are wanted, waiting, ready, running, finished; the
/// free CPU and GPU budget; what each finished instance published. The worker threads only
/// launch; every decision is made here, on the calling thread.
struct Scheduler<'a> {
    /// The DAG, store, path digests, cancel flag and event sink, as launches see them.
    cx: LaunchCtx<'a>,
    opts: &'a RunOptions,
    views: Option<Views<'a>>,
    /// Instances whose view under `out/` was left as it was, and why (for run.json).
    stale_views: BTreeMap<String, String>,
    summary: RunSummary,
    wanted: Vec<bool>,
    /// Incoming edges not yet finished, per wanted instance.
    waiting: HashMap<NodeIndex, usize>,
    ready: Vec<NodeIndex>,
    finished: Vec<bool>,
    outputs: HashMap<NodeIndex, Hash>,
    trees: HashMap<NodeIndex, (Tree, serde_json::Value)>,
    failed_any: bool,
    free_cpus: usize,
    free_gpus: Vec<usize>,
    running: usize,
    /// Keys of the instances running now.
    in_flight: HashSet<String>,
    workers: usize,
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
    let facts = crate::provenance::RunFacts::gather(&opts.workspace, &dag.pipeline.file, &dag.pipeline.set);
    let lctx = LaunchCtx {
        dag,
        store,
        paths,
        workspace: &opts.workspace,
        cancel,
        on_event,
        facts: &facts,
    };
    let mut s = Scheduler::new(lctx, opts)?;
    let local = Local;
    let launcher: &dyn Launcher = opts.launcher.as_deref().unwrap_or(&local);
    let (job_tx, job_rx) = channel::unbounded::<InstanceJob>();
    let (done_tx, done_rx) = channel::unbounded::<Done>();
    let result: Result<(), EngineError> = crossbeam::scope(|scope| {
        for _ in 0..s.workers {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move |_| {
                for job in job_rx.iter() {
                    let t = Instant::now();
                    // A panicking stage fails its instance (nothing published), never the
                    // run: the scheduler would otherwise wait for it forever.
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| launcher.launch(&job, &lctx)))
                            .unwrap_or_else(|p| {
                                Err(crate::stage::StageError::Failed(format!(
                                    "the stage panicked: {}",
                                    panic_text(&p)
                                )))
                            });
                    let _ = done_tx.send(Done {
                        node: job.node,
                        key: job.key.clone(),
                        threads: job.threads,
                        gpu: job.gpu,
                        result,
                        secs: t.elapsed().as_secs_f64(),
                    });
                }
            });
        }
        drop(done_tx);
        loop {
            for job in s.dispatch() {
                job_tx.send(job).map_err(|e| EngineError::Other(e.to_string()))?;
            }
            if s.running == 0 {
                break;
            }
            match done_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(d) => s.on_done(d),
                Err(channel::RecvTimeoutError::Timeout) => {}
                Err(channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(job_tx);
        Ok(())
    })
    .map_err(|_| EngineError::Other("a worker thread panicked".into()))?;
    result?;
    let mut summary = s.finish();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

impl<'a> Scheduler<'a> {
    fn new(cx: LaunchCtx<'a>, opts: &'a RunOptions) -> Result<Scheduler<'a>, EngineError> {
        let LaunchCtx {
            dag,
            store,
            paths,
            on_event,
            ..
        } = cx;
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
        let mut summary = RunSummary {
            pipeline: dag.pipeline.name.clone(),
            ..Default::default()
        };
        for st in paths.values().flatten() {
            summary.workspace_files += st.files;
            summary.workspace_files_read += st.rehashed;
        }
        let wanted = dag.wanted(opts.targets.as_deref());
        let total = wanted.iter().filter(|w| **w).count();
        on_event(RunEvent::Planned { total });
        let waiting: HashMap<NodeIndex, usize> = dag
            .order
            .iter()
            .filter(|n| wanted[n.index()])
            .map(|&n| (n, dag.inputs_of(n).len()))
            .collect();
        let ready = dag
            .order
            .iter()
            .copied()
            .filter(|n| waiting.get(n) == Some(&0))
            .collect();
        let mut s = Scheduler {
            cx,
            opts,
            views: opts
                .out_root
                .as_deref()
                .map(|r| Views::new(store, r, &dag.pipeline.name)),
            stale_views: BTreeMap::new(),
            summary,
            wanted,
            waiting,
            ready,
            finished: vec![false; dag.graph.node_count()],
            outputs: HashMap::new(),
            trees: HashMap::new(),
            failed_any: false,
            free_cpus: opts.cpus.max(1),
            free_gpus: opts.gpus.clone(),
            running: 0,
            in_flight: HashSet::new(),
            // No more threads than instances that could run.
            workers: opts.jobs.min(total.max(1)),
        };
        if let Some(w) = note_pipeline_file(store, dag) {
            s.warn(w);
        }
        Ok(s)
    }

    fn warn(&mut self, message: String) {
        (self.cx.on_event)(RunEvent::Warning {
            message: message.clone(),
        });
        self.summary.warnings.push(message);
    }

    /// Decide for every ready instance, in topological order; returns those to start.
    /// Resolving one (cached) may make others ready, which are decided in the same call.
    fn dispatch(&mut self) -> Vec<InstanceJob> {
        let mut jobs = Vec::new();
        let mut i = 0;
        while i < self.ready.len() {
            let n = self.ready[i];
            match self.step(n) {
                Step::Wait => i += 1,
                Step::Resolved => {
                    self.ready.remove(i);
                    i = 0;
                }
                Step::Start(job) => {
                    self.ready.remove(i);
                    jobs.push(job);
                }
            }
        }
        jobs
    }

    /// The decision for the ready instance `n`.
    fn step(&mut self, n: NodeIndex) -> Step {
        let dag = self.cx.dag;
        let id = dag.instance(n).id.clone();
        if self.cx.cancel.load(Ordering::Relaxed) || (self.failed_any && !self.opts.keep_going) {
            self.finished[n.index()] = true;
            self.summary.skipped.push(id.clone());
            (self.cx.on_event)(RunEvent::Skipped { id });
            return Step::Resolved;
        }
        let doc = match key_doc(dag, n, &self.outputs, self.cx.paths) {
            Ok(d) => d,
            Err(reasons) => {
                // Only a workspace path that cannot be read gets here (inputs are all done).
                let error = reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
                self.fail(n, error, None);
                return Step::Resolved;
            }
        };
        let key = doc.key();
        // Another instance with this very key is running (a study's variants meet here after
        // early cutoff): wait for it, then reuse its outputs instead of making them twice.
        if self.in_flight.contains(&key) {
            return Step::Wait;
        }
        if let Ok(rec) = lookup(self.cx.store, &key) {
            self.summary.cached.push(id.clone());
            (self.cx.on_event)(RunEvent::Cached { id });
            self.done(n, rec);
            return Step::Resolved;
        }
        let res = dag.decl(n).config.resources();
        let budget = self.opts.cpus.max(1);
        let want = if res.threads == 0 {
            budget
        } else {
            res.threads.min(budget)
        };
        if self.running >= self.workers || (self.running > 0 && want > self.free_cpus) {
            return Step::Wait;
        }
        let gpu = if res.gpu && !self.opts.gpus.is_empty() {
            match self.free_gpus.pop() {
                Some(g) => Some(g),
                None => return Step::Wait,
            }
        } else {
            None
        };
        let threads = want.min(self.free_cpus.max(1));
        self.free_cpus = self.free_cpus.saturating_sub(threads);
        self.running += 1;
        let inputs = dag
            .inputs_of(n)
            .into_iter()
            .map(|(port, m)| {
                let (tree, meta) = self.trees[&m].clone();
                InputRef {
                    port,
                    from: dag.instance(m).id.clone(),
                    local: dag.local_id(m),
                    fold: dag.instance(m).fold,
                    tree,
                    meta,
                }
            })
            .collect();
        self.in_flight.insert(key.clone());
        (self.cx.on_event)(RunEvent::Started {
            id: id.clone(),
            key: key.clone(),
            threads,
            gpu,
        });
        Step::Start(InstanceJob {
            node: n,
            id,
            key,
            doc,
            inputs,
            threads,
            gpu,
        })
    }

    /// A launched instance came back.
    fn on_done(&mut self, done: Done) {
        self.running -= 1;
        self.in_flight.remove(&done.key);
        self.free_cpus += done.threads;
        self.free_gpus.extend(done.gpu);
        let n = done.node;
        let id = self.cx.dag.instance(n).id.clone();
        match done.result {
            Ok(rec) => {
                self.summary.executed.push(id.clone());
                (self.cx.on_event)(RunEvent::Finished { id, secs: done.secs });
                self.done(n, rec);
            }
            Err(StageError::Cancelled) => {
                self.finished[n.index()] = true;
                self.summary.cancelled = true;
                self.summary.interrupted.push(id.clone());
                (self.cx.on_event)(RunEvent::Interrupted { id });
            }
            Err(e) => {
                let key = key_doc(self.cx.dag, n, &self.outputs, self.cx.paths).map(|d| d.key());
                let log = key.ok().map(|k| self.cx.store.log_path(&k)).filter(|l| l.is_file());
                self.fail(n, e.to_string(), log);
            }
        }
    }

    /// `n` finished (ran or was cached) with `rec`: record, show, release its consumers.
    fn done(&mut self, n: NodeIndex, rec: RunRecord) {
        self.finished[n.index()] = true;
        note_last(self.cx.store, self.cx.dag, n, &rec.key);
        let inst = self.cx.dag.instance(n);
        if let Some(Err(w)) = self.views.as_ref().map(|v| v.expose(&inst.stage, inst.fold, &rec.tree)) {
            self.stale_views.insert(inst.id.clone(), w.clone());
            self.warn(w);
        }
        self.outputs.insert(n, rec.output);
        self.trees.insert(n, (rec.tree, rec.meta));
        release(self.cx.dag, n, &mut self.waiting, &mut self.ready, &self.finished);
    }

    fn fail(&mut self, n: NodeIndex, error: String, log: Option<PathBuf>) {
        self.finished[n.index()] = true;
        self.failed_any = true;
        let id = self.cx.dag.instance(n).id.clone();
        (self.cx.on_event)(RunEvent::Failed {
            id: id.clone(),
            error: error.clone(),
            log: log.clone(),
        });
        self.summary.failed.push(Failure { stage: id, error, log });
    }

    /// The summary: instances never reached are skipped; stale views are swept.
    fn finish(mut self) -> RunSummary {
        for &n in &self.cx.dag.order {
            if self.wanted[n.index()] && !self.finished[n.index()] {
                let id = self.cx.dag.instance(n).id.clone();
                self.summary.skipped.push(id.clone());
                (self.cx.on_event)(RunEvent::Skipped { id });
            }
        }
        if self.cx.cancel.load(Ordering::Relaxed) {
            self.summary.cancelled = true;
        }
        if let Some(v) = &self.views {
            let mut stages: std::collections::BTreeMap<String, Option<u32>> = self
                .cx
                .dag
                .pipeline
                .stages
                .iter()
                .map(|d| (d.name.clone(), None))
                .collect();
            for i in self.cx.dag.graph.node_weights().filter(|i| i.fold.is_some()) {
                if let Some(folds) = stages.get_mut(&i.stage) {
                    *folds.get_or_insert(0) += 1;
                }
            }
            let mut warnings = v.sweep(&stages);
            let doc = crate::provenance::run_facts_doc(self.cx.dag, self.cx.store, &self.stale_views);
            warnings.extend(v.write_run_facts(&doc).err());
            for w in warnings {
                self.warn(w);
            }
        }
        self.summary
    }
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

/// Log path of an instance's last run (for messages).
pub fn log_of(store: &Store, key: &str) -> PathBuf {
    store.log_path(key)
}

// Scheduler and planner behaviour is tested in process on a fake stage kind, from the run's
// event log: engine/tests/scheduler.rs.

/// The message of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
