//! The torch worker protocol. `flow` runs libtorch-backed stage instances in a separate
//! `flow-worker` process (crate `flow-stages-torch`; found next to the `flow` executable, or
//! at `$FLOW_WORKER`):
//!
//! * `flow-worker doctor` prints [`TorchInfo`] as JSON (libtorch version, CUDA devices, the
//!   libraries it mapped) and exits 0.
//! * `flow-worker run <spec.json>` runs one stage instance described by a [`WorkerSpec`] (kind,
//!   params, inputs' directories, output/work/resume directories, threads, GPU). On stdout it
//!   prints one JSON [`WorkerEvent`] per line: `Progress` (fraction done and a message, shown
//!   by `flow`) and `Meta` (facts for the run record, merged key by key). stderr is the
//!   instance's log. Exit 0: the outputs are in the out dir; otherwise the last stderr line
//!   `error: <message>` is the message `flow` shows.
//! * It runs under [`crate::process`]'s rules: its own process group, `CUDA_VISIBLE_DEVICES`
//!   set to the one GPU it was given (or empty), `OMP_NUM_THREADS` to its thread share;
//!   killed on Ctrl-C, and terminated when `flow` dies.
//!
//! Why a process and not a thread: `flow` starts in milliseconds instead of loading ~1 GB of
//! libtorch/CUDA libraries for every `status` or no-op `run`; a crash or OOM inside libtorch
//! fails one stage instead of the scheduler; each instance gets its own thread count and GPU
//! without global state; and the same command line is what a Slurm executor submits.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::torch_info::TorchInfo;

/// Where the worker binary is: `$FLOW_WORKER`, else `flow-worker` beside the running binary.
pub fn worker_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOW_WORKER") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // Test binaries live in target/<profile>/deps; the worker in target/<profile>.
    [dir.join("flow-worker"), dir.join("../flow-worker")]
        .into_iter()
        .find(|p| p.is_file())
}

static INFO_CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where [`worker_info`] may keep its answer between processes (`flow` passes its cache's
/// `state/` directory). Without it, every process asks the worker.
pub fn set_info_cache_dir(dir: PathBuf) {
    let _ = INFO_CACHE_DIR.set(dir);
}

/// What the worker reports about libtorch, asked once per process, only when something needs
/// it. Spawning the worker loads libtorch (~0.5 s), more than a whole no-op run, so the
/// answer is kept in `<state>/worker-info.json` together with the `stat` identity (size,
/// mtime, inode) of the worker binary and of every libtorch/c10 library it had loaded, the
/// value of `CUDA_VISIBLE_DEVICES` and the `/dev/nvidia*` device nodes. A later process
/// trusts the file only while all of those are unchanged: replacing the binary or the torch
/// wheel, or changing the visible GPUs, asks the worker again.
pub fn worker_info() -> &'static TorchInfo {
    static INFO: OnceLock<TorchInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let Some(path) = worker_path() else {
            return unavailable(
                "no flow-worker next to flow (build it: scripts/setup, or cargo build --release)".into(),
            );
        };
        let cache = INFO_CACHE_DIR.get().map(|d| d.join("worker-info.json"));
        if let Some(info) = cache.as_deref().and_then(|c| cached_info(c, &path)) {
            return info;
        }
        let info = ask_worker(&path);
        if let (Some(c), true) = (cache, info.available) {
            let fp = fingerprint(&path, &info.libs);
            let entry = serde_json::json!({ "fingerprint": fp, "info": info });
            // Best effort: a read-only cache just means asking again next time.
            let tmp = c.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, entry.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, &c);
            }
        }
        info
    })
}

fn unavailable(note: String) -> TorchInfo {
    TorchInfo {
        available: false,
        libtorch_version: None,
        cuda_available: false,
        cuda_devices: 0,
        cudnn: false,
        threads: 0,
        note: Some(note),
        libs: Vec::new(),
    }
}

fn ask_worker(path: &std::path::Path) -> TorchInfo {
    match std::process::Command::new(path).arg("doctor").output() {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| unavailable(format!("{} doctor printed unreadable JSON: {e}", path.display()))),
        Ok(out) => unavailable(format!(
            "{} doctor failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => unavailable(format!("cannot run {}: {e}", path.display())),
    }
}

/// What a cached answer depends on, as one comparable string.
fn fingerprint(worker: &std::path::Path, libs: &[PathBuf]) -> String {
    use std::os::unix::fs::MetadataExt;
    let ident = |p: &std::path::Path| match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}:{}:{}.{}:{}",
            p.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ),
        Err(_) => format!("{}:missing", p.display()),
    };
    let mut parts = vec![ident(worker)];
    parts.extend(libs.iter().map(|l| ident(l)));
    parts.push(format!(
        "CUDA_VISIBLE_DEVICES={}",
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into())
    ));
    let mut nodes: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("nvidia"))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    parts.push(format!("dev={}", nodes.join(",")));
    parts.join("\n")
}

fn cached_info(cache: &std::path::Path, worker: &std::path::Path) -> Option<TorchInfo> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(cache).ok()?).ok()?;
    let info: TorchInfo = serde_json::from_value(v.get("info")?.clone()).ok()?;
    if info.libs.is_empty() || v.get("fingerprint")?.as_str()? != fingerprint(worker, &info.libs) {
        return None;
    }
    Some(info)
}

/// Everything a worker needs to run one stage instance; written as JSON into the instance's
/// work dir and passed as `flow-worker run <spec.json>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerSpec {
    pub kind: String,
    /// The stage's params (its config struct as JSON, defaults resolved).
    pub params: serde_json::Value,
    pub instance: String,
    pub fold: Option<u32>,
    pub out_dir: PathBuf,
    pub work_dir: PathBuf,
    pub resume_dir: PathBuf,
    pub workspace: PathBuf,
    pub inputs: Vec<WorkerInput>,
    pub paths: Vec<WorkerPath>,
    pub threads: usize,
    /// Physical GPU index; the worker sees it as `cuda:0` (`CUDA_VISIBLE_DEVICES`).
    pub gpu: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerInput {
    pub port: String,
    pub from: String,
    pub fold: Option<u32>,
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerPath {
    pub port: String,
    pub rel: String,
    pub abs: PathBuf,
}

/// A line the worker prints on stdout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerEvent {
    Progress {
        frac: f64,
        msg: String,
    },
    /// Run-record meta of the instance (see `ExecCtx::meta`): facts of this run that are not
    /// determined by the key (seconds, threads, resumes). Objects merge key by key.
    Meta(serde_json::Value),
}

/// Merge a worker's meta event into the instance's run-record meta (objects key by key;
/// anything else replaces).
fn merge_meta(into: &mut serde_json::Value, m: serde_json::Value) {
    match (into.as_object_mut(), m) {
        (Some(o), serde_json::Value::Object(n)) => o.extend(n),
        (_, m) => *into = m,
    }
}

/// Run a torch stage instance in a `flow-worker` process: the `execute` of every torch kind.
/// Progress lines are forwarded, stderr goes to the instance's log, Ctrl-C kills the worker's
/// process group, and a dead `flow` takes the worker with it.
pub fn run_in_worker<P: serde::Serialize>(
    kind: &str,
    params: &P,
    ctx: &flow_engine::ExecCtx<'_>,
) -> Result<(), flow_engine::StageError> {
    use flow_engine::StageError;

    let worker = worker_path().ok_or_else(|| {
        StageError::msg(format!(
            "`{kind}` needs libtorch, which runs in flow-worker, and there is no flow-worker next to flow \
             (build it with scripts/setup or `cargo build --release`)"
        ))
    })?;
    let spec = WorkerSpec {
        kind: kind.to_string(),
        params: serde_json::to_value(params).map_err(|e| StageError::msg(e.to_string()))?,
        instance: ctx.instance.to_string(),
        fold: ctx.fold,
        out_dir: ctx.out_dir.to_path_buf(),
        work_dir: ctx.work_dir.to_path_buf(),
        resume_dir: ctx.resume_dir.to_path_buf(),
        workspace: ctx.workspace.to_path_buf(),
        inputs: ctx
            .inputs
            .iter()
            .map(|i| WorkerInput {
                port: i.port.clone(),
                from: i.from.clone(),
                fold: i.fold,
                dir: i.dir.clone(),
                meta: i.meta.clone(),
            })
            .collect(),
        paths: ctx
            .paths
            .iter()
            .map(|p| WorkerPath {
                port: p.port.clone(),
                rel: p.rel.clone(),
                abs: p.abs.clone(),
            })
            .collect(),
        threads: ctx.threads,
        gpu: ctx.gpu,
    };
    let spec_path = ctx.work_dir.join("worker-spec.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).expect("json"))?;
    let mut cmd = std::process::Command::new(&worker);
    cmd.arg("run")
        .arg(&spec_path)
        .current_dir(ctx.work_dir)
        .env("OMP_NUM_THREADS", ctx.threads.max(1).to_string());
    match ctx.gpu {
        Some(g) => cmd.env("CUDA_VISIBLE_DEVICES", g.to_string()),
        None => cmd.env("CUDA_VISIBLE_DEVICES", ""),
    };
    let mut on_line = |line: &str| match serde_json::from_str::<WorkerEvent>(line) {
        Ok(WorkerEvent::Progress { frac, msg }) => (ctx.progress)(frac, &msg),
        Ok(WorkerEvent::Meta(m)) => merge_meta(&mut ctx.meta.lock().expect("meta"), m),
        Err(_) => tracing::debug!("worker: {line}"),
    };
    let result = match crate::process::run(cmd, ctx.log_path, ctx.cancel, Some(&mut on_line))
        .map_err(|e| StageError::msg(format!("cannot start {}: {e}", worker.display())))?
    {
        crate::process::Ended::Cancelled => return Err(StageError::Cancelled),
        crate::process::Ended::Exited(s) => s,
    };
    if !result.success() {
        // The worker's last `error: ` line is its message; else the end of its output.
        let tail = crate::process::log_tail(ctx.log_path, 200);
        let msg = match tail.iter().rev().find(|l| l.starts_with("error: ")) {
            Some(e) => e.trim_start_matches("error: ").to_string(),
            None => format!(
                "flow-worker {result}; last output:\n  {}",
                tail[tail.len().saturating_sub(6)..].join("\n  ")
            ),
        };
        return Err(StageError::msg(msg));
    }
    Ok(())
}
