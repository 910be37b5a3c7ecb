//! `Exec`: run an external command under flow's caching rules — the escape hatch for
//! users' own scripts (a Python face-cropper, say).
//!
//! ```ron
//! "crop": Exec(
//!     cmd: "python crop.py --in images --out crops",   // `sh -c`; or an argv list
//!     inputs: [Path("crop.py"), Stage("ingest")],      // workspace paths / other stages
//!     outputs: ["crops"],                              // files or dirs it creates
//!     folds: 5,                                        // optional: crop@fold0..4, {fold} substituted
//! )
//! ```
//! The command runs in a private work directory. Each input stage's output files are hard-
//! linked into it at their relative paths (read-only objects of the store); each workspace
//! path appears at its relative path as *one symlink* to the file or directory in the
//! workspace (per-file links cost ~1 s per 50k files; hard links would change the files' ctime
//! and defeat the stat cache), so list a directory input with `find -L ds` or `find ds/`.
//! The command runs under [`crate::process`]'s rules (its own process group, killed with
//! flow, on Ctrl-C and when it exits). Only the declared outputs are published. Environment: `FLOW_FOLD`, `FLOW_THREADS`,
//! `FLOW_WORKSPACE`, `OMP_NUM_THREADS`, plus `env`. stdout/stderr go to the instance's log.
//! Key params: `cmd`, `outputs`, `env`, `folds`; inputs enter by content. Not in the key:
//! `threads`, `description`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use flow_engine::{
    key_params_of, Code, ConfigProblem, ExecCtx, FanOut, Input, PortType, Resources, StageConfig, StageError, StageKind,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub cmd: Cmd,
    #[serde(default)]
    pub inputs: Vec<ExecInput>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub folds: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub description: Option<String>,
    /// The artifact type of the outputs, so typed stages can consume them: e.g. `"dataset"`
    /// for a face-cropper between Ingest and Preprocess that writes `manifest.csv` (the
    /// Ingest format, paths relative to its outputs) and the cropped images. Default `files`.
    #[serde(default)]
    pub produces: Option<String>,
}

/// Artifact types an `Exec` may declare with `produces`: every port type (one list, made
/// where the types are defined).
pub const EXEC_TYPES: &[PortType] = crate::ports::ALL;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExecInput {
    /// Another stage's outputs.
    Stage(String),
    /// A file or directory of the workspace.
    Path(String),
}

inventory::submit! { crate::Kind(|| StageKind::new::<Exec>("Exec", 1, "run an external command with declared inputs and outputs")) }

/// Whether a relative path stays inside its root (no absolute path, no `..` above the root,
/// not empty): [`flow_cache::normalize_rel`] accepts it.
pub fn stays_inside(p: &str) -> bool {
    flow_cache::normalize_rel(p).is_ok()
}

fn subst(s: &str, fold: Option<u32>) -> String {
    match fold {
        Some(f) => s.replace("{fold}", &f.to_string()),
        None => s.to_string(),
    }
}

fn problem(code: Code, message: String, needle: Option<&str>, help: &str) -> ConfigProblem {
    ConfigProblem {
        code,
        message,
        needle: needle.map(String::from),
        help: Some(help.to_string()).filter(|h| !h.is_empty()),
    }
}

impl Exec {
    /// The outputs as each instance sees them (`{fold}` substituted): each inside the working
    /// directory, listed once, not inside another, and apart from every workspace input (that
    /// input is a link to the workspace, so the output would be the user's own files).
    fn output_problems(&self) -> Vec<ConfigProblem> {
        let mut v: Vec<ConfigProblem> = Vec::new();
        let mut push = |p: ConfigProblem| {
            if !v.iter().any(|q| q.message == p.message) {
                v.push(p);
            }
        };
        let inputs: Vec<(String, &String)> = self
            .inputs
            .iter()
            .filter_map(|i| match i {
                ExecInput::Path(p) => flow_cache::normalize_rel(p).ok().map(|n| (n, p)),
                ExecInput::Stage(_) => None,
            })
            .collect();
        // More folds than the engine allows are its error; never walk billions of them here.
        let folds: Box<dyn Iterator<Item = Option<u32>>> = match self.folds {
            Some(n) => Box::new((0..n.min(flow_engine::dag::MAX_FOLDS)).map(Some)),
            None => Box::new(std::iter::once(None)),
        };
        let inside = |a: &str, b: &str| a.starts_with(&format!("{b}/"));
        for fold in folds {
            let when = fold
                .filter(|_| self.outputs.iter().any(|o| o.contains("{fold}")))
                .map(|f| format!(" (for fold {f})"))
                .unwrap_or_default();
            let mut seen: Vec<(String, &String)> = Vec::new();
            for o in &self.outputs {
                let Ok(n) = flow_cache::normalize_rel(&subst(o, fold)) else {
                    push(problem(
                        Code::PathEscape,
                        format!("output `{o}` is outside the stage's output directory{when}"),
                        Some(o),
                        "outputs are paths relative to the command's working directory, without `..` above it",
                    ));
                    continue;
                };
                if let Some((_, first)) = seen.iter().find(|(m, _)| *m == n) {
                    let message = if *first == o {
                        format!("output `{o}` is listed twice")
                    } else {
                        format!("outputs `{first}` and `{o}` are the same path{when}")
                    };
                    push(problem(Code::InvalidValue, message, Some(o), "list each output once"));
                    continue;
                }
                if let Some((m, first)) = seen.iter().find(|(m, _)| inside(&n, m) || inside(m, &n)) {
                    let (outer, inner) = if n.len() > m.len() { (*first, o) } else { (o, *first) };
                    push(problem(
                        Code::InvalidValue,
                        format!("output `{inner}` is inside output `{outer}`{when}"),
                        Some(o),
                        "a directory output already publishes everything in it; list it once",
                    ));
                    continue;
                }
                for (pn, p) in &inputs {
                    if n == *pn || inside(&n, pn) || inside(pn, &n) {
                        push(problem(
                            Code::PathEscape,
                            format!(
                                "output `{o}` overlaps workspace input `{p}`{when}: the command sees that input as \
                                 a link to the workspace, so the output would be the workspace's own files"
                            ),
                            Some(o),
                            "write outputs under another name (e.g. `results/...`)",
                        ));
                    }
                }
                seen.push((n, o));
            }
        }
        v
    }

    /// What the OS would refuse at spawn time: an empty argv, NUL bytes, environment names
    /// that are empty or contain `=`.
    fn command_problems(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        let words: Vec<&String> = match &self.cmd {
            Cmd::Shell(s) => vec![s],
            Cmd::Argv(a) => a.iter().collect(),
        };
        if matches!(&self.cmd, Cmd::Argv(a) if a.is_empty()) {
            v.push(problem(
                Code::InvalidValue,
                "`cmd` is an empty list".into(),
                None,
                "give the program and its arguments",
            ));
        }
        if words.iter().any(|w| w.contains('\0')) {
            v.push(problem(
                Code::InvalidValue,
                "`cmd` contains a NUL byte".into(),
                None,
                "",
            ));
        }
        for (k, val) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                v.push(problem(
                    Code::InvalidValue,
                    format!("environment variable name {k:?} is empty or contains `=` or NUL"),
                    None,
                    "",
                ));
            }
            if val.contains('\0') {
                v.push(problem(
                    Code::InvalidValue,
                    format!("the value of `{k}` contains a NUL byte"),
                    None,
                    "",
                ));
            }
        }
        v
    }
}

impl StageConfig for Exec {
    fn inputs(&self) -> Vec<Input> {
        self.inputs
            .iter()
            .map(|i| match i {
                ExecInput::Stage(s) => Input::stage("inputs", s.clone(), &[PortType::ANY]),
                ExecInput::Path(p) => Input::path("inputs", p.clone()),
            })
            .collect()
    }
    fn output(&self) -> PortType {
        self.produces
            .as_deref()
            .and_then(|p| EXEC_TYPES.iter().find(|t| t.0 == p).copied())
            .unwrap_or(PortType::FILES)
    }
    fn fan_out(&self) -> FanOut {
        match self.folds {
            Some(n) => FanOut::Foreach(n),
            None => FanOut::Single,
        }
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["inputs", "threads", "description", "produces"])
    }
    fn resources(&self) -> Resources {
        Resources {
            threads: self.threads.unwrap_or(1),
            gpu: false,
        }
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = self.output_problems();
        v.extend(self.command_problems());
        // Workspace-path inputs are checked by the engine, as every kind's are.
        if self.outputs.is_empty() {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`outputs` is empty: a stage must produce something".into(),
                needle: None,
                help: None,
            });
        }
        if let Some(p) = &self.produces {
            if !EXEC_TYPES.iter().any(|t| t.0 == p) {
                let known: Vec<&str> = EXEC_TYPES.iter().map(|t| t.0).collect();
                v.push(ConfigProblem {
                    code: Code::InvalidValue,
                    message: format!("unknown artifact type `{p}`"),
                    needle: Some(p.clone()),
                    help: Some(format!("one of: {}", known.join(", "))),
                });
            }
        }
        if self.folds == Some(0) {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`folds` must be at least 1".into(),
                needle: None,
                help: None,
            });
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let work = ctx.work_dir;
        let placed = place_stage_inputs(ctx, work)?;
        link_workspace_paths(ctx, work)?;
        let cmd = self.command(ctx, work)?;
        let stamps = input_stamps(ctx, &placed);
        let status = match crate::process::run(cmd, ctx.log_path, ctx.cancel, None)
            .map_err(|e| StageError::msg(format!("cannot start command: {e}")))?
        {
            crate::process::Ended::Cancelled => return Err(StageError::Cancelled),
            crate::process::Ended::Exited(s) => s,
        };
        // Inputs written in place are cache objects altered: take them out of service (the
        // producer re-runs next time) and fail, whatever the command's status.
        inputs_untouched(ctx, &placed, &stamps)?;
        if !status.success() {
            let tail = crate::process::log_tail(ctx.log_path, 8);
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("; last output:\n  {}", tail.join("\n  "))
            };
            return Err(StageError::msg(format!("command failed ({status}){tail}")));
        }
        self.take_outputs(ctx, work)?;
        let mut f = std::fs::OpenOptions::new().append(true).open(ctx.log_path)?;
        writeln!(f, "# ok")?;
        Ok(())
    }
}

/// Each input stage's output files, hard-linked at their relative paths (read-only objects:
/// `find -type f` sees them as files). Returns path → producing instance.
fn place_stage_inputs(ctx: &ExecCtx<'_>, work: &Path) -> Result<BTreeMap<String, String>, StageError> {
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for input in ctx.inputs {
        for (rel, entry) in &input.tree.entries {
            if let Some(prev) = placed.get(rel) {
                let same = ctx
                    .inputs
                    .iter()
                    .find(|i| i.from == *prev)
                    .and_then(|i| i.tree.entries.get(rel))
                    .map(|e| e.hash == entry.hash);
                if *prev != input.from && same != Some(true) {
                    return Err(StageError::msg(format!(
                        "inputs `{prev}` and `{}` both provide `{rel}` with different content",
                        input.from
                    )));
                }
                continue;
            }
            let dest = work.join(rel);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            let obj = ctx.store.object_path(&entry.hash);
            if std::fs::hard_link(&obj, &dest).is_err() {
                std::os::unix::fs::symlink(&obj, &dest)?;
            }
            placed.insert(rel.clone(), input.from.clone());
        }
    }
    Ok(placed)
}

/// One symlink per workspace path, file or directory: O(1) however many files a dataset holds
/// (a farm of per-file links cost ~1 s per 50k files and stage). Outermost paths first: `data`
/// covers `data/sub`, whichever order they were listed in.
fn link_workspace_paths(ctx: &ExecCtx<'_>, work: &Path) -> Result<(), StageError> {
    let mut paths: Vec<&flow_engine::ResolvedPath> = ctx.paths.iter().collect();
    paths.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut linked: Vec<&str> = Vec::new();
    for p in paths {
        if linked
            .iter()
            .any(|l| p.rel == *l || p.rel.starts_with(&format!("{l}/")))
        {
            continue;
        }
        let dest = work.join(&p.rel);
        if dest.symlink_metadata().is_ok() {
            return Err(StageError::msg(format!(
                "workspace input `{}` and a stage input's files both want the path `{}` in the \
                 command's directory; rename one of them",
                p.rel, p.rel
            )));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(&p.abs, &dest)?;
        linked.push(&p.rel);
    }
    Ok(())
}

/// Fails (and quarantines the objects) if the command wrote into a linked input in place.
fn inputs_untouched(
    ctx: &ExecCtx<'_>,
    placed: &BTreeMap<String, String>,
    before: &[(String, Option<(u64, i64, i64)>)],
) -> Result<(), StageError> {
    let now = input_stamps(ctx, placed);
    let altered: Vec<&String> = before
        .iter()
        .zip(&now)
        .filter(|(b, n)| b.1.is_some() && n.1.is_some() && b.1 != n.1)
        .map(|(b, _)| &b.0)
        .collect();
    if altered.is_empty() {
        return Ok(());
    }
    for rel in &altered {
        if let Some(e) = ctx.inputs.iter().find_map(|i| i.tree.entries.get(*rel)) {
            let _ = ctx.store.quarantine_object(&e.hash);
        }
    }
    let names: Vec<&str> = altered.iter().map(|s| s.as_str()).collect();
    Err(StageError::msg(format!(
        "the command wrote into its input file(s) {} in place: they are read-only objects of the cache \
         (writable only because flow runs as root). They were taken out of service and their stage \
         will re-run; write to a new file instead",
        names.join(", ")
    )))
}

impl Exec {
    /// The command under its `sh` guard (see [`crate::process`]): if flow dies, the guard is
    /// sent SIGTERM and kills its whole group — the command *and* everything it started, which
    /// a death signal to the direct child alone would leave running.
    fn command(&self, ctx: &ExecCtx<'_>, work: &Path) -> Result<Command, StageError> {
        const GUARD: &str = "trap 'kill -KILL 0' TERM; \"$@\" & wait $!";
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(GUARD).arg("flow-exec");
        match &self.cmd {
            Cmd::Shell(s) => {
                cmd.arg("sh").arg("-c").arg(subst(s, ctx.fold));
            }
            Cmd::Argv(a) if !a.is_empty() => {
                cmd.args(a.iter().map(|x| subst(x, ctx.fold)));
            }
            Cmd::Argv(_) => return Err(StageError::msg("`cmd` is an empty list")),
        }
        cmd.current_dir(work)
            .env("FLOW_WORKSPACE", ctx.workspace)
            .env("FLOW_THREADS", ctx.threads.to_string())
            .env("OMP_NUM_THREADS", ctx.threads.to_string());
        if let Some(f) = ctx.fold {
            cmd.env("FLOW_FOLD", f.to_string());
        }
        for (k, v) in &self.env {
            cmd.env(k, subst(v, ctx.fold));
        }
        Ok(cmd)
    }

    /// Move the declared outputs into the out dir — never through a link the sandbox made (a
    /// workspace path input): that would move the workspace's own files into the cache.
    /// `validate` refuses such outputs; this holds for one written at run time too.
    fn take_outputs(&self, ctx: &ExecCtx<'_>, work: &Path) -> Result<(), StageError> {
        for o in &self.outputs {
            let rel = flow_cache::normalize_rel(&subst(o, ctx.fold))
                .map_err(|why| StageError::msg(format!("output `{o}` (fold substituted): {why}")))?;
            let src = work.join(&rel);
            if let Some(link) = link_on_the_way(work, &rel) {
                return Err(StageError::msg(format!(
                    "declared output `{rel}` lies inside `{link}`, a link to the workspace or the cache: \
                     not taking it (outputs must be files the command wrote)"
                )));
            }
            if src.symlink_metadata().is_err() {
                return Err(StageError::msg(format!(
                    "declared output `{rel}` was not created by the command"
                )));
            }
            let dest = ctx.out_dir.join(&rel);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::rename(&src, &dest)?;
        }
        Ok(())
    }
}

/// The first ancestor of `work/rel` (below `work`) that is a symlink, if any.
fn link_on_the_way(work: &Path, rel: &str) -> Option<String> {
    let mut at = work.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
        at.push(part);
        if at.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(parts[..=i].join("/"));
        }
    }
    None
}

/// Size and modification time of the cache object behind every linked input file: a command
/// that writes into one in place (possible as root, though objects are read-only) alters the
/// object; one that replaces the file (a new inode at the same path) does not.
fn input_stamps(ctx: &ExecCtx<'_>, placed: &BTreeMap<String, String>) -> Vec<(String, Option<(u64, i64, i64)>)> {
    use std::os::unix::fs::MetadataExt;
    placed
        .iter()
        .map(|(rel, from)| {
            let obj = ctx
                .inputs
                .iter()
                .find(|i| i.from == *from)
                .and_then(|i| i.tree.entries.get(rel))
                .map(|e| ctx.store.object_path(&e.hash));
            let m = obj.and_then(|o| std::fs::metadata(o).ok());
            (rel.clone(), m.map(|m| (m.len(), m.mtime(), m.mtime_nsec())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn paths_that_escape_are_caught() {
        assert!(stays_inside("a/b"));
        assert!(stays_inside("./a"));
        assert!(stays_inside("a/../b"));
        assert!(!stays_inside("../a"));
        assert!(!stays_inside("a/../../b"));
        assert!(!stays_inside("/etc/passwd"));
        assert!(!stays_inside("."));
        assert!(!stays_inside(""));
    }
}
