//! The torch worker protocol. `flow` runs libtorch-backed stage instances in a separate
//! `flow-worker` process (crate `flow-stages-torch`; found next to the `flow` executable, or
//! at `$FLOW_WORKER`):
//!
//! * `flow-worker doctor` prints [`TorchInfo`] as JSON (libtorch version, CUDA devices).
//!
//! Why a process and not a thread: `flow` starts in milliseconds instead of loading ~1 GB of
//! libtorch/CUDA libraries for every `status` or no-op `run`; a crash or OOM inside libtorch
//! fails one stage instead of the scheduler; each instance gets its own thread count and GPU
//! (`CUDA_VISIBLE_DEVICES`) without global state; and the same command line is what a Slurm
//! executor submits.

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

/// What the worker reports about libtorch, asked once per process (spawning it loads
/// libtorch, ~0.5 s), only when something needs it.
pub fn worker_info() -> &'static TorchInfo {
    static INFO: OnceLock<TorchInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let unavailable = |note: String| TorchInfo {
            available: false,
            libtorch_version: None,
            cuda_available: false,
            cuda_devices: 0,
            cudnn: false,
            threads: 0,
            note: Some(note),
        };
        let Some(path) = worker_path() else {
            return unavailable(
                "no flow-worker next to flow (build it: scripts/setup, or cargo build --release)".into(),
            );
        };
        match std::process::Command::new(&path).arg("doctor").output() {
            Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| unavailable(format!("{} doctor printed unreadable JSON: {e}", path.display()))),
            Ok(out) => unavailable(format!(
                "{} doctor failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )),
            Err(e) => unavailable(format!("cannot run {}: {e}", path.display())),
        }
    })
}
