//! Planner and scheduler behaviour, in process, on a fake stage kind: every assertion is on
//! the event log a run emits (salsa-style: which instances executed, which were reused), or
//! on the planner's reasons — never on timings, and no process is spawned.
//!
//! The kind `T` writes `o.txt` = its `content` param followed by what it read; `salt` enters
//! its key but not its output (an edit that changes nothing downstream sees: early cutoff).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use flow_cache::Store;
use flow_engine::stage::{parse_as, ExecCtx, FanOut, Input, PortType, Registry, StageConfig, StageError, StageKind};
use flow_engine::{Context, DirtyReason, RunEvent, RunOptions, RunSummary, State};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct T {
    #[serde(default)]
    folds: Option<u32>,
    #[serde(default)]
    reads: Vec<String>,
    /// Read again on a second port.
    #[serde(default)]
    also: Vec<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    content: String,
    #[serde(default)]
    salt: u32,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    panic: bool,
}

/// Per workspace: instances running now, and the most seen at once.
fn running() -> &'static Mutex<BTreeMap<PathBuf, (usize, usize)>> {
    static R: OnceLock<Mutex<BTreeMap<PathBuf, (usize, usize)>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl StageConfig for T {
    fn inputs(&self) -> Vec<Input> {
        let stages = (self.reads.iter().map(|s| ("reads", s)))
            .chain(self.also.iter().map(|s| ("also", s)))
            .map(|(port, s)| Input::stage(port, s.clone(), &[PortType::ANY]));
        let files = self.files.iter().map(|f| Input::path("files", f.clone()));
        stages.chain(files).collect()
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
        {
            let mut r = running().lock().unwrap();
            let e = r.entry(ctx.workspace.to_path_buf()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        // Long enough for siblings to overlap when the scheduler lets them.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut text = self.content.clone();
        for i in ctx.inputs {
            text.push_str(&std::fs::read_to_string(i.dir.join("o.txt")).unwrap_or_default());
        }
        for p in ctx.paths {
            text.push_str(&std::fs::read_to_string(&p.abs).unwrap_or_default());
        }
        running().lock().unwrap().get_mut(ctx.workspace).unwrap().0 -= 1;
        if self.fail {
            return Err(StageError::Failed("asked to fail".into()));
        }
        assert!(!self.panic, "asked to panic");
        std::fs::write(ctx.out_dir.join("o.txt"), text)?;
        Ok(())
    }
}

/// A scratch workspace with a pipeline of `T` stages, run in process.
struct Harness {
    dir: tempfile::TempDir,
    registry: Registry,
}

/// What one run did, from its event log.
struct Log {
    executed: BTreeSet<String>,
    cached: BTreeSet<String>,
    failed: BTreeSet<String>,
    skipped: BTreeSet<String>,
    summary: RunSummary,
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Harness {
    fn new() -> Harness {
        let mut registry = Registry::new();
        registry.register(StageKind {
            name: "T",
            version: 1,
            summary: "test stage",
            parse: parse_as::<T>,
        });
        Harness {
            dir: tempfile::tempdir().unwrap(),
            registry,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.root().join(rel), text).unwrap();
    }

    /// `stages` is the body of a RON `stages: { … }` map.
    fn pipeline(&self, stages: &str) {
        self.write("p.ron", &format!("Pipeline(name: \"p\", stages: {{ {stages} }})"));
    }

    fn context(&self) -> (flow_engine::Dag, Context) {
        let dag = flow_engine::load_dag(&self.root().join("p.ron"), &self.registry).unwrap_or_else(|d| panic!("{d:?}"));
        let store = Store::open(&self.root().join(".flow")).unwrap();
        (dag, Context::new(self.root().to_path_buf(), store, false))
    }

    fn run_with(&self, jobs: usize, targets: Option<&[&str]>, keep_going: bool) -> Log {
        let (dag, cx) = self.context();
        let paths = cx.digest(&[&dag]).pop().unwrap();
        let opts = RunOptions {
            jobs,
            cpus: jobs,
            gpus: vec![],
            workspace: cx.workspace.clone(),
            out_root: Some(cx.out_root()),
            targets: targets.map(|t| t.iter().map(|s| s.to_string()).collect()),
            keep_going,
            launcher: None,
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let summary = flow_engine::run(&dag, &cx.store, &paths, &opts, &AtomicBool::new(false), &move |e| {
            ev.lock().unwrap().push(e)
        })
        .unwrap();
        let mut log = Log {
            executed: BTreeSet::new(),
            cached: BTreeSet::new(),
            failed: BTreeSet::new(),
            skipped: BTreeSet::new(),
            summary,
        };
        for e in events.lock().unwrap().drain(..) {
            match e {
                RunEvent::Finished { id, .. } => log.executed.insert(id),
                RunEvent::Cached { id } => log.cached.insert(id),
                RunEvent::Failed { id, .. } => log.failed.insert(id),
                RunEvent::Skipped { id } => log.skipped.insert(id),
                _ => false,
            };
        }
        // The summary tells the same story as the events.
        let of = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
        assert_eq!(of(&log.summary.executed), log.executed);
        assert_eq!(of(&log.summary.cached), log.cached);
        log
    }

    fn run(&self) -> Log {
        self.run_with(4, None, false)
    }

    fn out(&self, instance_dir: &str) -> String {
        std::fs::read_to_string(self.root().join("out/p").join(instance_dir).join("o.txt")).unwrap()
    }

    fn max_running(&self) -> usize {
        let root = std::fs::canonicalize(self.root()).unwrap();
        let r = running().lock().unwrap();
        r.get(&root).or_else(|| r.get(self.root())).map_or(0, |e| e.1)
    }
}

const CHAIN: &str = r#""a": T(content: "a"), "b": T(reads: ["a"], content: "b"), "c": T(reads: ["b"], content: "c"), "x": T(content: "x"),"#;

#[test]
fn a_second_run_reuses_everything() {
    let h = Harness::new();
    h.pipeline(CHAIN);
    let first = h.run();
    assert_eq!(first.executed, set(&["a", "b", "c", "x"]));
    assert_eq!(h.out("c"), "cba");
    let second = h.run();
    assert!(second.executed.is_empty(), "{:?}", second.executed);
    assert_eq!(second.cached, set(&["a", "b", "c", "x"]));
}

#[test]
fn a_param_edit_reruns_the_stage_and_what_reads_it_only() {
    let h = Harness::new();
    h.pipeline(CHAIN);
    h.run();
    h.pipeline(&CHAIN.replace(r#"content: "b""#, r#"content: "B""#));
    let (dag, cx) = h.context();
    let st = cx.status(&dag);
    let b = st.iter().find(|s| s.stage == "b").unwrap();
    assert!(
        matches!(&b.reason_kinds[..], [DirtyReason::ParamChanged { name, .. }] if name == "content"),
        "{:?}",
        b.reason_kinds
    );
    let c = st.iter().find(|s| s.stage == "c").unwrap();
    assert!(
        matches!(&c.reason_kinds[..], [DirtyReason::UpstreamPending { from }] if from == &["b"]),
        "{:?}",
        c.reason_kinds
    );
    let log = h.run();
    assert_eq!(log.executed, set(&["b", "c"]));
    assert_eq!(log.cached, set(&["a", "x"]));
    assert_eq!(h.out("c"), "cBa");
}

#[test]
fn an_edit_that_leaves_the_output_unchanged_stops_at_that_stage() {
    let h = Harness::new();
    h.pipeline(CHAIN);
    h.run();
    // `salt` changes b's key but not what it writes: c's inputs are unchanged (early cutoff).
    h.pipeline(&CHAIN.replace(r#"content: "b""#, r#"content: "b", salt: 7"#));
    let log = h.run();
    assert_eq!(log.executed, set(&["b"]));
    assert_eq!(log.cached, set(&["a", "c", "x"]));
}

#[test]
fn a_changed_workspace_file_reruns_its_readers_only() {
    let h = Harness::new();
    h.write("in.txt", "1");
    h.pipeline(r#""r": T(files: ["in.txt"]), "s": T(reads: ["r"]), "u": T(content: "u"),"#);
    h.run();
    h.write("in.txt", "2");
    let (dag, cx) = h.context();
    let r = cx.status(&dag).into_iter().find(|s| s.stage == "r").unwrap();
    assert!(
        matches!(&r.reason_kinds[..], [DirtyReason::PathChanged { path }] if path == "in.txt"),
        "{:?}",
        r.reason_kinds
    );
    let log = h.run();
    assert_eq!(log.executed, set(&["r", "s"]));
    assert_eq!(log.cached, set(&["u"]));
    assert_eq!(h.out("s"), "2");
}

#[test]
fn a_fold_edit_reruns_every_fold_and_the_consumer_waits_for_all() {
    let h = Harness::new();
    h.pipeline(r#""f": T(folds: 3, content: "f"), "g": T(reads: ["f"]),"#);
    let first = h.run();
    assert_eq!(first.executed, set(&["f@fold0", "f@fold1", "f@fold2", "g"]));
    assert_eq!(h.out("g"), "fff");
    h.pipeline(r#""f": T(folds: 3, content: "F"), "g": T(reads: ["f"]),"#);
    let log = h.run();
    assert_eq!(log.executed, set(&["f@fold0", "f@fold1", "f@fold2", "g"]));
    assert_eq!(h.out("g"), "FFF");
}

#[test]
fn a_panicking_stage_fails_its_instance_and_the_run_ends() {
    let h = Harness::new();
    h.pipeline(r#""a": T(panic: true), "b": T(reads: ["a"]), "x": T(content: "x"),"#);
    // Before: the worker thread died and the scheduler waited for it forever.
    let log = h.run_with(2, None, true);
    assert_eq!(log.failed, set(&["a"]));
    assert_eq!(log.skipped, set(&["b"]));
    assert_eq!(log.executed, set(&["x"]));
    let again = h.run_with(1, None, true);
    assert_eq!(again.failed, set(&["a"]), "nothing of a panicked instance is trusted");
}

#[test]
fn a_failure_skips_what_depends_on_it_and_keep_going_runs_the_rest() {
    let h = Harness::new();
    h.pipeline(r#""a": T(fail: true), "b": T(reads: ["a"]), "x": T(content: "x"), "y": T(reads: ["x"]),"#);
    let log = h.run_with(1, None, true);
    assert_eq!(log.failed, set(&["a"]));
    assert_eq!(log.skipped, set(&["b"]));
    assert_eq!(log.executed, set(&["x", "y"]));
    // Nothing of a failed instance is trusted: the next run tries it again.
    let again = h.run_with(1, None, true);
    assert_eq!(again.failed, set(&["a"]));
    assert_eq!(again.cached, set(&["x", "y"]));
}

#[test]
fn a_target_runs_only_what_it_needs() {
    let h = Harness::new();
    h.pipeline(CHAIN);
    let log = h.run_with(4, Some(&["b"]), false);
    assert_eq!(log.executed, set(&["a", "b"]));
    let (dag, cx) = h.context();
    let st = cx.status(&dag);
    let never: Vec<_> = st
        .iter()
        .filter(|s| s.state == State::NeverRun)
        .map(|s| s.stage.as_str())
        .collect();
    assert_eq!(never, ["c", "x"]);
}

#[test]
fn no_more_instances_run_at_once_than_jobs() {
    let h = Harness::new();
    h.pipeline(r#""f": T(folds: 6, content: "f"),"#);
    h.run_with(2, None, false);
    let most = h.max_running();
    assert!(
        (1..=2).contains(&most),
        "six independent folds with --jobs 2: {most} at once"
    );
    let h1 = Harness::new();
    h1.pipeline(r#""f": T(folds: 4, content: "f"),"#);
    h1.run_with(1, None, false);
    assert_eq!(h1.max_running(), 1);
}

// A consumer reading one per-fold producer through two ports has 2 × folds incoming edges.
// The scheduler once decremented its count by the edges between the pair once per *edge*,
// so it was ready after 2 of 3 folds and failed ("upstream will run first").
#[test]
fn a_consumer_of_one_producer_on_two_ports_waits_for_every_fold() {
    let h = Harness::new();
    h.pipeline(r#""p": T(folds: 3, content: "p"), "c": T(reads: ["p"], also: ["p"]),"#);
    let log = h.run();
    assert!(log.failed.is_empty(), "{:?}", log.summary.failed);
    assert_eq!(log.executed, set(&["c", "p@fold0", "p@fold1", "p@fold2"]));
    assert_eq!(h.out("c"), "pppppp");
}
