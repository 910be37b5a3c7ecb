//! The stage contract: what a stage kind declares (ports, fan-out, key params, resources)
//! and how it runs. `engine` knows nothing of what stages compute; `stages/` implements
//! [`StageKind`] and [`StageConfig`] and registers kinds in a [`Registry`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flow_cache::{Store, Tree};
use serde::Serialize;

/// The type of artifact a stage produces, e.g. `"dataset"`, `"split"`, `"models"`, `"files"`.
/// Open-ended so new kinds can add types without touching the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortType(pub &'static str);

impl PortType {
    /// Accepts every type (e.g. `Exec` inputs).
    pub const ANY: PortType = PortType("any");
    pub const FILES: PortType = PortType("files");
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Where an input comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InputSource {
    /// Another stage of the pipeline, by name.
    Stage(String),
    /// A file or directory of the workspace, relative to the workspace root.
    Path(String),
}

/// One input a stage reads.
#[derive(Clone, Debug)]
pub struct Input {
    /// The param that names it (`"data"`, `"models"`, `"inputs[2]"`). Used in diagnostics,
    /// and — for stage inputs — as the input's name in the key.
    pub port: String,
    pub source: InputSource,
    /// Artifact types this input accepts from a producing stage.
    pub accepts: Vec<PortType>,
}

impl Input {
    pub fn stage(port: impl Into<String>, stage: impl Into<String>, accepts: &[PortType]) -> Input {
        Input {
            port: port.into(),
            source: InputSource::Stage(stage.into()),
            accepts: accepts.to_vec(),
        }
    }
    pub fn path(port: impl Into<String>, path: impl Into<String>) -> Input {
        Input {
            port: port.into(),
            source: InputSource::Path(path.into()),
            accepts: vec![PortType::ANY],
        }
    }
}

/// How many instances a stage expands into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanOut {
    /// One instance, `name`.
    Single,
    /// One instance per fold of the named split stage: `name@fold0` … (the split stage's
    /// [`StageConfig::fold_count`] says how many).
    PerFold { split: String },
    /// A fixed number of instances, `name@fold0` … `name@fold{n-1}`.
    Foreach(u32),
}

/// CPU threads / GPU a stage instance asks the scheduler for. Never part of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Threads the instance wants; `0` = all the scheduler's CPU budget.
    pub threads: usize,
    /// Whether the instance can use a GPU (it gets one index if any is free).
    pub gpu: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { threads: 1, gpu: false }
    }
}

/// A problem a stage finds in its own params (reported by `flow check`).
#[derive(Clone, Debug)]
pub struct ConfigProblem {
    pub code: crate::diag::Code,
    pub message: String,
    /// Where to point in the file: the offending string value (`../x`, found as the literal
    /// `"../x"` after the stage's name), or a field name followed by `:` (`count:`) for a
    /// value that is not a string. `None`: the stage's name.
    pub needle: Option<String>,
    pub help: Option<String>,
}

/// Shared values of the pipeline's `defaults: (...)` that stages may take.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Defaults(pub BTreeMap<String, serde_json::Value>);

impl Defaults {
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(|v| v.as_u64())
    }
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(|v| v.as_f64())
    }
}

/// Error a stage returns from [`StageConfig::execute`].
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cache(#[from] flow_cache::CacheError),
}

impl StageError {
    pub fn msg(m: impl Into<String>) -> StageError {
        StageError::Failed(m.into())
    }
}

/// One resolved stage input at execution time.
#[derive(Clone, Debug)]
pub struct ResolvedInput {
    pub port: String,
    /// The producing instance, e.g. `train@fold2`.
    pub from: String,
    pub fold: Option<u32>,
    /// Read-only view of the producer's outputs (symlinks into the store).
    pub dir: PathBuf,
    pub tree: Tree,
    /// The producer's [`ExecCtx::meta`] (not part of its content hash).
    pub meta: serde_json::Value,
}

/// A workspace path input at execution time.
#[derive(Clone, Debug)]
pub struct ResolvedPath {
    pub port: String,
    /// As written in the pipeline (relative to the workspace).
    pub rel: String,
    pub abs: PathBuf,
    /// For a directory: every file's content hash by relative path, from the stat cache.
    pub tree: Option<std::sync::Arc<Tree>>,
}

/// Progress callback: fraction done (0..=1, or negative if unknown) and a short message.
pub type ProgressFn<'a> = &'a (dyn Fn(f64, &str) + Sync);

/// Everything an executing stage instance may use.
pub struct ExecCtx<'a> {
    /// `name` or `name@foldK`.
    pub instance: &'a str,
    pub fold: Option<u32>,
    /// Write outputs here (a fresh private directory); everything in it is published.
    pub out_dir: &'a Path,
    /// Scratch space private to this instance (not published; removed afterwards).
    pub work_dir: &'a Path,
    /// Survives a killed run of the same key (e.g. per-epoch checkpoints); removed once the
    /// instance is published.
    pub resume_dir: &'a Path,
    pub workspace: &'a Path,
    pub inputs: &'a [ResolvedInput],
    pub paths: &'a [ResolvedPath],
    pub store: &'a Store,
    pub threads: usize,
    pub gpu: Option<usize>,
    /// The instance's log file (stdout/stderr of external commands go here too).
    pub log_path: &'a Path,
    pub cancel: &'a AtomicBool,
    pub progress: ProgressFn<'a>,
    /// For a stage that [describes its experiment](StageConfig::describes_experiment): the
    /// pipeline and its upstream stages (part of the key). `None` for every other stage.
    pub experiment: Option<&'a crate::Experiment>,
    /// Facts about the outputs that are not part of their content (e.g. a dataset's root in
    /// the workspace). Stored in the run record and passed to consumers; never in a key.
    pub meta: &'a std::sync::Mutex<serde_json::Value>,
}

impl ExecCtx<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    /// Inputs read through the given port.
    pub fn inputs_of<'b>(&'b self, port: &'b str) -> impl Iterator<Item = &'b ResolvedInput> + 'b {
        self.inputs.iter().filter(move |i| i.port == port)
    }
}

/// A stage's parsed, typed params plus what the engine needs to know about it. Every method
/// but `execute` is called while planning (`flow check`, `status`) and must be cheap, pure
/// and free of I/O: the same params give the same answer on every machine.
pub trait StageConfig: fmt::Debug + Send + Sync + 'static {
    /// Inputs: other stages by name, or workspace paths (relative; the engine normalises and
    /// confines them).
    fn inputs(&self) -> Vec<Input>;
    /// The type of artifact this stage produces (checked against consumers' `accepts`).
    fn output(&self) -> PortType;
    /// How many instances the stage expands into (one, one per fold of a split, or `n`).
    fn fan_out(&self) -> FanOut {
        FanOut::Single
    }
    /// For stages that define folds (a split): how many.
    fn fold_count(&self) -> Option<u32> {
        None
    }
    /// Take shared values from the pipeline's `defaults` for params left unset.
    fn resolve_defaults(&mut self, _defaults: &Defaults) {}
    /// The params that affect the output, as a JSON object. Must not contain input
    /// references (their content hashes go into the key instead), thread counts, device
    /// indices, paths of the machine, or anything else that does not change the bytes
    /// the stage produces. See [`crate::key`].
    fn key_params(&self) -> serde_json::Value;
    /// Facts of the environment the output depends on (e.g. `("libtorch", "2.13.0")`).
    fn env_facts(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Whether the output shows the experiment it belongs to (a report's provenance: the
    /// pipeline's name, the upstream stages and their params). When true the engine passes
    /// [`ExecCtx::experiment`] and keys the instance on it too. Default: false — a stage's
    /// key never sees names.
    fn describes_experiment(&self) -> bool {
        false
    }
    /// The param that seeds the randomness of fitting a model (initialisation, batch order,
    /// augmentation) but not of the data (sampling, splitting): what a study's `seeds: [...]`
    /// sets in each repetition ([`crate::study`]). Default: none (the stage is not repeated
    /// per seed; it is shared by every seed when its inputs are).
    fn seed_param(&self) -> Option<&'static str> {
        None
    }
    /// Problems of the params alone (ranges, combinations), each positioned at the text it
    /// names; reported by `flow check` and before any run. Default: none.
    fn validate(&self) -> Vec<ConfigProblem> {
        Vec::new()
    }
    /// What is known of this stage's output before it runs, for consumers'
    /// [`StageConfig::validate_inputs`] (Preprocess: `{"image_size": 64}`). Default: nothing.
    fn output_facts(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Problems only the producers can reveal, found without running anything: `inputs`
    /// pairs each stage input's param with its producer's [`StageConfig::output_facts`]
    /// (`Null` when the producer says nothing). Reported by `flow check` like `validate`.
    fn validate_inputs(&self, _inputs: &[(String, serde_json::Value)]) -> Vec<ConfigProblem> {
        Vec::new()
    }
    /// What one instance needs from the scheduler (threads wanted, whether it can use a
    /// GPU). Never part of the key: outputs must not depend on it.
    fn resources(&self) -> Resources {
        Resources::default()
    }
    /// Make the outputs: read only `ctx.inputs` and `ctx.paths`, write only into
    /// `ctx.out_dir` (published) and `ctx.work_dir` / `ctx.resume_dir` (scratch). The bytes
    /// written must be a function of the key alone (no timings, thread counts or absolute
    /// paths: those go to `ctx.meta`), so a re-run makes identical objects and consumers are
    /// cut off. Return [`StageError::Cancelled`] soon after `ctx.cancel` is set; an `Err`
    /// publishes nothing.
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError>;
}

/// Parse function of a kind: reads the kind's params from a (type-erased) deserializer.
pub type ParseFn = fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<Box<dyn StageConfig>, erased_serde::Error>;

/// A stage kind: its name in pipeline files, its implementation version and its parser.
#[derive(Clone)]
pub struct StageKind {
    /// As written in RON: `Exec`, `Train`, …
    pub name: &'static str,
    /// Bump when the implementation changes what it outputs: invalidates every key.
    pub version: u32,
    /// One line for `flow check --list-kinds` and "did you mean".
    pub summary: &'static str,
    pub parse: ParseFn,
}

impl StageKind {
    /// The kind whose params are the typed struct `T` (parsed with [`parse_as`]).
    pub fn new<T>(name: &'static str, version: u32, summary: &'static str) -> StageKind
    where
        T: StageConfig + serde::de::DeserializeOwned,
    {
        StageKind {
            name,
            version,
            summary,
            parse: parse_as::<T>,
        }
    }
}

/// Helper for kinds: parse typed params `T` (derive `Deserialize` with `deny_unknown_fields`).
pub fn parse_as<T>(de: &mut dyn erased_serde::Deserializer<'_>) -> Result<Box<dyn StageConfig>, erased_serde::Error>
where
    T: StageConfig + serde::de::DeserializeOwned,
{
    let v: T = erased_serde::deserialize(de)?;
    Ok(Box::new(v))
}

/// Helper for [`StageConfig::key_params`]: serialize `v` and drop the named fields.
pub fn key_params_of<T: Serialize>(v: &T, exclude: &[&str]) -> serde_json::Value {
    let mut j = serde_json::to_value(v).expect("stage params serialize to JSON");
    if let Some(o) = j.as_object_mut() {
        for e in exclude {
            o.remove(*e);
        }
    }
    j
}

/// The set of stage kinds a binary knows.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, StageKind>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }
    pub fn register(&mut self, kind: StageKind) {
        self.kinds.insert(kind.name, kind);
    }
    pub fn get(&self, name: &str) -> Option<&StageKind> {
        self.kinds.get(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
    pub fn kinds(&self) -> impl Iterator<Item = &StageKind> {
        self.kinds.values()
    }
}

/// Shared handle to a stage's config.
pub type Config = Arc<dyn StageConfig>;
