//! Planning: for each stage instance, is it fresh, stale or never run — and why.
//!
//! A stage instance is *fresh* when a run record exists for its key and the record's output
//! objects are all present with their recorded sizes. Its key needs its inputs' output
//! hashes; when an upstream instance is not fresh, the downstream key is unknown until the
//! upstream reruns (it may reproduce identical bytes: early cutoff), so such an instance is
//! reported stale with reason [`DirtyReason::UpstreamPending`], plus whatever changed in its
//! own params. Reasons come from diffing the key document against the one of the last run
//! of the same instance in the same pipeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use flow_cache::{FileStateCache, Hash, Store, Tree};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::dag::Dag;
use crate::key::{KeyDoc, KeyInputRec, KeyPathRec};

/// What `runs/<key>.json` holds. Written last, after every output object is in place.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub key: String,
    pub pipeline: String,
    pub instance: String,
    pub doc: KeyDoc,
    /// Tree hash of the outputs.
    pub output: Hash,
    pub tree: Tree,
    pub started_unix: f64,
    pub duration_s: f64,
    pub host: String,
    pub flow_version: String,
    /// Modification time (ns) of each output's object when it was published: a different one
    /// later means the object may have been written into (see [`outputs_problem`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mtimes: BTreeMap<String, i64>,
    /// What the stage said about its outputs that is *not* part of their content (e.g. where
    /// a dataset lives in the workspace). Downstream stages see it; keys never do.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    /// The run's git commit and pipeline file ([`crate::provenance`]); never in a key.
    #[serde(default)]
    pub facts: crate::provenance::RunFacts,
}

/// Pointer to the last run of an instance of a pipeline (for "why is this stale").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastRun {
    pub key: String,
}

pub fn last_run_name(pipeline: &str, instance: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_@.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("last/{}/{}", clean(pipeline), clean(instance))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Fresh,
    Stale,
    NeverRun,
}

/// Why an instance must run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DirtyReason {
    NeverRun,
    ParamChanged {
        name: String,
        old: String,
        new: String,
    },
    ParamAdded {
        name: String,
        new: String,
    },
    ParamRemoved {
        name: String,
        old: String,
    },
    InputChanged {
        port: String,
        from: String,
    },
    InputsChanged {
        port: String,
        before: usize,
        now: usize,
    },
    UpstreamPending {
        from: Vec<String>,
    },
    PathChanged {
        path: String,
    },
    PathMissing {
        path: String,
    },
    /// The path exists but cannot be digested: `detail` names the entry and what is wrong.
    PathUnreadable {
        path: String,
        detail: String,
    },
    VersionChanged {
        old: u32,
        new: u32,
    },
    EnvChanged {
        name: String,
        old: String,
        new: String,
    },
    OutputsBad {
        detail: String,
    },
    /// The experiment a describing stage shows changed (its pipeline's name, a stage's params).
    ExperimentChanged {
        detail: String,
    },
    /// Not a reason to run but how it will: a killed run left a checkpoint to resume from.
    Resumable {
        done: u64,
        of: u64,
        unit: String,
    },
    NotCached,
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverRun => write!(f, "never run"),
            DirtyReason::ParamChanged { name, old, new } => {
                let (o, n) = abbreviate_change(old, new);
                write!(f, "param {name} changed: {o} -> {n}")
            }
            DirtyReason::ParamAdded { name, new } => write!(f, "param {name} set: {new}"),
            DirtyReason::ParamRemoved { name, old } => write!(f, "param {name} unset (was {old})"),
            DirtyReason::InputChanged { port, from } => write!(f, "input {from} changed (param {port})"),
            DirtyReason::InputsChanged { port, before, now } => {
                write!(f, "inputs of {port} changed: {before} -> {now}")
            }
            DirtyReason::UpstreamPending { from } => write!(f, "upstream will run first: {}", from.join(", ")),
            DirtyReason::PathChanged { path } => write!(f, "workspace path {path} changed"),
            DirtyReason::PathMissing { path } => write!(f, "workspace path {path} does not exist"),
            DirtyReason::PathUnreadable { path, detail } => write!(f, "workspace path {path} cannot be read: {detail}"),
            DirtyReason::VersionChanged { old, new } => write!(f, "stage version changed: {old} -> {new}"),
            DirtyReason::EnvChanged { name, old, new } => write!(f, "{name} changed: {old} -> {new}"),
            DirtyReason::OutputsBad { detail } => write!(f, "cached outputs unusable: {detail}"),
            DirtyReason::Resumable { done, of, unit } if done >= of => write!(
                f,
                "resumable: a killed run finished all {of} {unit}s; the next run only finishes it off"
            ),
            DirtyReason::Resumable { done, of, unit } => write!(
                f,
                "resumable: a killed run finished {unit} {done} of {of}; the next run continues from {unit} {}",
                done + 1
            ),
            DirtyReason::ExperimentChanged { detail } => write!(f, "the experiment it describes changed: {detail}"),
            DirtyReason::NotCached => write!(f, "no cached result for these inputs"),
        }
    }
}

/// For long values (commands), show only what changed, with a little context:
/// `…lr=0.0001 '$2…` -> `…lr=0.0003 '$2…`.
pub fn abbreviate_change(old: &str, new: &str) -> (String, String) {
    const CTX: usize = 12;
    if old.chars().count() <= 40 && new.chars().count() <= 40 {
        return (old.to_string(), new.to_string());
    }
    let a: Vec<char> = old.chars().collect();
    let b: Vec<char> = new.chars().collect();
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suf = a.len().min(b.len()) - pre;
    let suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suf)
        .take_while(|(x, y)| x == y)
        .count();
    let cut = |v: &[char]| {
        let start = pre.saturating_sub(CTX);
        let end = (v.len() - suf + CTX).min(v.len());
        let mut s = String::new();
        if start > 0 {
            s.push('…');
        }
        s.extend(&v[start..end]);
        if end < v.len() {
            s.push('…');
        }
        s
    };
    (cut(&a), cut(&b))
}

/// The status of one instance.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub stage: String,
    pub state: State,
    pub reasons: Vec<String>,
    #[serde(skip)]
    pub reason_kinds: Vec<DirtyReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The digest of one workspace path: its content hash and, for a directory, the hash of
/// every file (so stages need not read unchanged files to know their hashes).
#[derive(Clone, Debug)]
pub struct PathState {
    pub hash: Hash,
    pub tree: Option<std::sync::Arc<Tree>>,
    /// Files under the path, and how many of them had to be read (stat cache misses).
    pub files: usize,
    pub rehashed: usize,
}

/// Digests of workspace paths (content, via the stat cache).
pub type PathDigests = HashMap<String, Result<PathState, PathProblem>>;

/// Digest every workspace path the DAG reads. Unchanged files are not re-read.
pub fn digest_paths(dag: &Dag, workspace: &Path, fsc: &mut FileStateCache) -> PathDigests {
    let mut rels = BTreeSet::new();
    for &n in &dag.order {
        for p in dag.paths_of(n) {
            rels.insert(p.rel);
        }
    }
    let mut out = HashMap::new();
    for rel in rels {
        let abs = workspace.join(&rel);
        let d = match std::fs::symlink_metadata(&abs) {
            Err(_) => Err(PathProblem::Missing),
            Ok(m) if m.file_type().is_symlink() && std::fs::metadata(&abs).is_err() => {
                let target = std::fs::read_link(&abs)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                let why = std::fs::metadata(&abs).err().map(|e| e.to_string()).unwrap_or_default();
                Err(PathProblem::Unreadable(format!(
                    "it is a symlink to `{target}` that cannot be followed ({why})"
                )))
            }
            Ok(_) => fsc
                .digest_path(&abs)
                .map(|d| PathState {
                    hash: d.hash,
                    tree: d.tree.map(std::sync::Arc::new),
                    files: d.files,
                    rehashed: d.rehashed,
                })
                .map_err(|e| PathProblem::Unreadable(relative_to(&e.to_string(), workspace))),
        };
        out.insert(rel, d);
    }
    out
}

/// `msg` with the workspace prefix of paths removed (`/home/u/ws/data/x` → `data/x`).
fn relative_to(msg: &str, workspace: &Path) -> String {
    let prefix = format!("{}/", workspace.display());
    msg.replace(&prefix, "")
}

/// Why a workspace path has no digest.
#[derive(Clone, Debug, PartialEq)]
pub enum PathProblem {
    Missing,
    /// Names the offending entry and what is wrong with it.
    Unreadable(String),
}

impl PathProblem {
    fn reason(&self, path: &str) -> DirtyReason {
        match self {
            PathProblem::Missing => DirtyReason::PathMissing { path: path.to_string() },
            PathProblem::Unreadable(detail) => DirtyReason::PathUnreadable {
                path: path.to_string(),
                detail: detail.clone(),
            },
        }
    }
}

/// Build the key document of `n`, given its upstream outputs. `Err` lists the upstream
/// instances whose output is not known yet (or a missing path).
pub fn key_doc(
    dag: &Dag,
    n: NodeIndex,
    outputs: &HashMap<NodeIndex, Hash>,
    paths: &PathDigests,
) -> Result<KeyDoc, Vec<DirtyReason>> {
    let decl = dag.decl(n);
    let inst = dag.instance(n);
    let mut pending = Vec::new();
    let mut inputs = Vec::new();
    for (port, m) in dag.inputs_of(n) {
        match outputs.get(&m) {
            Some(h) => inputs.push(KeyInputRec {
                port,
                fold: dag.instance(m).fold,
                hash: h.to_hex(),
                from: dag.instance(m).id.clone(),
            }),
            // One producer may feed several ports (a study's shared split): named once.
            None if pending.contains(&dag.instance(m).id) => {}
            None => pending.push(dag.instance(m).id.clone()),
        }
    }
    let mut missing = Vec::new();
    let mut prec = Vec::new();
    for p in dag.paths_of(n) {
        match paths.get(&p.rel) {
            Some(Ok(st)) => prec.push(KeyPathRec {
                port: p.port,
                path: p.rel,
                hash: st.hash.to_hex(),
            }),
            Some(Err(problem)) => missing.push(problem.reason(&p.rel)),
            None => missing.push(DirtyReason::PathMissing { path: p.rel }),
        }
    }
    if !pending.is_empty() || !missing.is_empty() {
        let mut r = missing;
        if !pending.is_empty() {
            r.push(DirtyReason::UpstreamPending { from: pending });
        }
        return Err(r);
    }
    inputs.sort();
    prec.sort();
    Ok(KeyDoc {
        kind: decl.kind.name.to_string(),
        version: decl.kind.version,
        fold: inst.fold,
        params: decl.config.key_params(),
        inputs,
        paths: prec,
        env: decl.config.env_facts().into_iter().collect(),
        experiment: decl
            .config
            .describes_experiment()
            .then(|| crate::Experiment::of(dag, n, outputs)),
    })
}

/// The record for `key` if its outputs are intact; otherwise why not. Objects whose mtime
/// moved but whose bytes are intact get their new mtime recorded (best effort: a read-only
/// cache just re-hashes them next time).
pub fn lookup(store: &Store, key: &str) -> Result<RunRecord, DirtyReason> {
    match store.read_record::<RunRecord>(key) {
        Ok(Some(mut rec)) => match check_outputs(store, &rec) {
            Ok(restamped) => {
                if !restamped.is_empty() {
                    rec.mtimes.extend(restamped);
                    let _ = store.write_record(key, &rec);
                }
                Ok(rec)
            }
            Err(detail) => Err(DirtyReason::OutputsBad { detail }),
        },
        Ok(None) => Err(DirtyReason::NotCached),
        Err(e) => Err(DirtyReason::OutputsBad { detail: e.to_string() }),
    }
}

/// Why a record's outputs cannot be used, or None: every object present with its recorded
/// size and, where its mtime moved since publishing, its bytes intact; and the output
/// manifest present.
pub fn outputs_problem(store: &Store, rec: &RunRecord) -> Option<String> {
    check_outputs(store, rec).err()
}

fn check_outputs(store: &Store, rec: &RunRecord) -> Result<BTreeMap<String, i64>, String> {
    // A record edited by hand (or by a bug) must not smuggle other content in under a hash
    // that consumers' keys already use: its tree must be the one its output hash names.
    if rec.tree.hash() != rec.output {
        return Err("the record's file list does not hash to its output hash (edited?)".into());
    }
    if let Some((path, why)) = rec
        .tree
        .entries
        .keys()
        .find_map(|p| flow_cache::rel_path_problem(p).map(|w| (p, w)))
    {
        return Err(format!("the record lists an invalid path {path:?} ({why})"));
    }
    let (problems, restamped) = store.check_tree_stamped(&rec.tree, &rec.mtimes);
    if let Some(p) = problems.first() {
        Err(format!("{} ({})", p.path, p.what))
    } else if !store.has_object(&rec.output) {
        Err("output manifest missing".into())
    } else {
        Ok(restamped)
    }
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Diff two key documents into reasons. `new_params` etc. come from the current config;
/// `new` may be partial (no inputs known) when upstream is pending.
pub fn diff_docs(
    old: &KeyDoc,
    new_kind: (&str, u32),
    new_params: &serde_json::Value,
    new_env: &BTreeMap<String, String>,
    new: Option<&KeyDoc>,
) -> Vec<DirtyReason> {
    let mut r = Vec::new();
    if old.version != new_kind.1 || old.kind != new_kind.0 {
        r.push(DirtyReason::VersionChanged {
            old: old.version,
            new: new_kind.1,
        });
    }
    flatten_diff("", &old.params, new_params, &mut r);
    for (k, v) in new_env {
        match old.env.get(k) {
            Some(o) if o != v => r.push(DirtyReason::EnvChanged {
                name: k.clone(),
                old: o.clone(),
                new: v.clone(),
            }),
            None => r.push(DirtyReason::EnvChanged {
                name: k.clone(),
                old: "-".into(),
                new: v.clone(),
            }),
            _ => {}
        }
    }
    if let Some(new) = new {
        let ports: BTreeSet<&str> = old.inputs.iter().chain(&new.inputs).map(|i| i.port.as_str()).collect();
        for port in ports {
            let o: Vec<&KeyInputRec> = old.inputs.iter().filter(|i| i.port == port).collect();
            let n: Vec<&KeyInputRec> = new.inputs.iter().filter(|i| i.port == port).collect();
            if o.len() != n.len() {
                r.push(DirtyReason::InputsChanged {
                    port: port.into(),
                    before: o.len(),
                    now: n.len(),
                });
                continue;
            }
            for (a, b) in o.iter().zip(&n) {
                if a.hash != b.hash || a.fold != b.fold {
                    r.push(DirtyReason::InputChanged {
                        port: port.into(),
                        from: b.from.clone(),
                    });
                }
            }
        }
        for p in &new.paths {
            match old.paths.iter().find(|q| q.path == p.path) {
                Some(q) if q.hash == p.hash => {}
                _ => r.push(DirtyReason::PathChanged { path: p.path.clone() }),
            }
        }
        // Only when nothing above explains it: an input change changes the experiment too.
        if r.is_empty() {
            let change = match (&old.experiment, &new.experiment) {
                (Some(o), Some(n)) => n.change_from(o),
                (None, Some(_)) => Some("not described before".into()),
                _ => None,
            };
            if let Some(detail) = change {
                r.push(DirtyReason::ExperimentChanged { detail });
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::abbreviate_change;
    #[test]
    fn long_changes_are_abbreviated_around_the_difference() {
        let a = "paste -d, folds.csv pre/shard0 | awk -F, -v f=1 -v lr=0.0001 '$2 != f { s += $3 }' > m.txt";
        let b = a.replace("0.0001", "0.0003");
        let (x, y) = abbreviate_change(a, &b);
        assert_eq!(x, "… -v lr=0.0001 '$2 != f { …");
        assert_eq!(y, "… -v lr=0.0003 '$2 != f { …");
        assert_eq!(
            abbreviate_change("0.0001", "0.0003"),
            ("0.0001".into(), "0.0003".into())
        );
    }
}

fn flatten_diff(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, r: &mut Vec<DirtyReason>) {
    use serde_json::Value::Object;
    match (old, new) {
        (Object(a), Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => flatten_diff(&name, x, y, r),
                    (None, Some(y)) if !y.is_null() => r.push(DirtyReason::ParamAdded { name, new: show(y) }),
                    (Some(x), None) if !x.is_null() => r.push(DirtyReason::ParamRemoved { name, old: show(x) }),
                    _ => {}
                }
            }
        }
        (a, b) => {
            if crate::key::canonical_json(a) != crate::key::canonical_json(b) {
                r.push(DirtyReason::ParamChanged {
                    name: prefix.to_string(),
                    old: show(a),
                    new: show(b),
                });
            }
        }
    }
}

/// Reasons for an instance that is not fresh.
pub fn explain(
    store: &Store,
    dag: &Dag,
    n: NodeIndex,
    doc: Result<&KeyDoc, &[DirtyReason]>,
    miss: Option<DirtyReason>,
) -> (State, Vec<DirtyReason>) {
    let decl = dag.decl(n);
    let last: Option<RunRecord> = store
        .read_meta::<LastRun>(&last_run_name(&dag.pipeline.name, &dag.instance(n).id))
        .ok()
        .flatten()
        .and_then(|l| store.read_record::<RunRecord>(&l.key).ok().flatten());
    let params = decl.config.key_params();
    let env: BTreeMap<String, String> = decl.config.env_facts().into_iter().collect();
    let mut reasons = Vec::new();
    let state = match &last {
        None => {
            reasons.push(DirtyReason::NeverRun);
            State::NeverRun
        }
        Some(l) => {
            reasons.extend(diff_docs(
                &l.doc,
                (decl.kind.name, decl.kind.version),
                &params,
                &env,
                doc.ok(),
            ));
            State::Stale
        }
    };
    if let Err(pre) = doc {
        for p in pre {
            if !reasons.contains(p) {
                reasons.push(p.clone());
            }
        }
    }
    if let Some(m) = miss {
        if state == State::Stale && (reasons.is_empty() || matches!(m, DirtyReason::OutputsBad { .. })) {
            reasons.push(m);
        }
    }
    (state, reasons)
}

/// Status of every instance without running anything (`flow status`).
pub fn status(dag: &Dag, store: &Store, paths: &PathDigests) -> Vec<InstanceStatus> {
    let mut outputs: HashMap<NodeIndex, Hash> = HashMap::new();
    let mut res = Vec::new();
    for &n in &dag.order {
        let id = dag.instance(n).id.clone();
        match key_doc(dag, n, &outputs, paths) {
            Ok(doc) => {
                let key = doc.key();
                match lookup(store, &key) {
                    Ok(rec) => {
                        outputs.insert(n, rec.output);
                        res.push(InstanceStatus {
                            stage: id,
                            state: State::Fresh,
                            reasons: vec![],
                            reason_kinds: vec![],
                            key: Some(key),
                        });
                    }
                    Err(miss) => {
                        let (state, mut reasons) = explain(store, dag, n, Ok(&doc), Some(miss));
                        if let Some(r) = crate::launch::ResumeProgress::of_key(store, &key) {
                            reasons.push(DirtyReason::Resumable {
                                done: r.done,
                                of: r.of,
                                unit: r.unit,
                            });
                        }
                        res.push(InstanceStatus {
                            stage: id,
                            state,
                            reasons: reasons.iter().map(|r| r.to_string()).collect(),
                            reason_kinds: reasons,
                            key: Some(key),
                        });
                    }
                }
            }
            Err(pre) => {
                let (state, reasons) = explain(store, dag, n, Err(&pre), None);
                res.push(InstanceStatus {
                    stage: id,
                    state,
                    reasons: reasons.iter().map(|r| r.to_string()).collect(),
                    reason_kinds: reasons,
                    key: None,
                });
            }
        }
    }
    res
}
