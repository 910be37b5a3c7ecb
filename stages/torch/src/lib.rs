//! flow's libtorch side: the `flow-worker` process that runs torch-backed stage instances
//! (see `flow_stages::worker` for why it is a separate process).
//!
//! * [`run`]: `flow-worker run <spec.json>` — threads, device, dispatch on the kind;
//! * [`train`]: `Train` and `Retrain` per fold (loop, checkpoints, selection, outputs);
//! * [`infer`]: `EnsembleInfer` (out-of-fold, TTA, calibration, cascade);
//! * [`data`] / [`augment`]: memory-mapped u8 shards → normalised, augmented f32 batches,
//!   built on a separate thread one batch ahead;
//! * [`nets`]: backbones, weight files, pretrained weights (see `convert_weights.py`);
//! * [`optim`]: AdamW with checkpointable state, LR schedules, loss scaling.

pub mod augment;
pub mod backbones;
pub mod cam;
pub mod data;
#[cfg(test)]
mod e2e;
pub mod explain;
pub mod forensic;
pub mod infer;
pub mod nets;
pub mod optim;
pub mod run;
#[doc(hidden)]
pub mod testdata;
pub mod train;
pub mod util;

use flow_stages::torch_info::TorchInfo;

/// The libtorch version this binary was built against (compile-time; part of torch stages'
/// cache keys), "unknown" if the build script could not tell.
pub fn libtorch_version() -> &'static str {
    option_env!("FLOW_LIBTORCH_VERSION").unwrap_or("unknown")
}

/// What the linked libtorch can do here.
pub fn torch_info() -> TorchInfo {
    // has_cudart: the CUDA backend is registered, i.e. libtorch_cuda.so is loaded (true on a
    // GPU-less host with the CUDA wheel; false when the linker dropped libtorch_cuda, see
    // build/libtorch.rs, and with a CPU-only libtorch). `has_cuda` would also need a GPU.
    let cuda_built = tch::utils::has_cudart();
    let cuda_available = tch::Cuda::is_available();
    let cuda_devices = if cuda_available { tch::Cuda::device_count() } else { 0 };
    let cudnn = cuda_available && tch::Cuda::cudnn_is_available();
    let note = if !cuda_built {
        Some("libtorch without CUDA support (CPU-only build, or libtorch_cuda not linked)".to_string())
    } else if !cuda_available {
        Some("libtorch has CUDA support, but no CUDA device is visible".to_string())
    } else {
        None
    };
    TorchInfo {
        available: true,
        libtorch_version: Some(libtorch_version().to_string()),
        cuda_available,
        cuda_devices,
        cudnn,
        threads: tch::get_num_threads(),
        note,
        libs: loaded_torch_libs(),
    }
}

/// The libtorch and c10 libraries mapped into this process.
fn loaded_torch_libs() -> Vec<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<std::path::PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            name.starts_with("libtorch") || name.starts_with("libc10")
        })
        .map(std::path::PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Sets libtorch's intra-op threads to `n` (0 is ignored). The inter-op pool can only be sized
/// once, before any parallel work: the first call sizes it too, later calls leave it alone.
pub fn set_threads(n: usize) {
    if n == 0 {
        return;
    }
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    tch::set_num_threads(n);
    static INTEROP: std::sync::Once = std::sync::Once::new();
    INTEROP.call_once(|| {
        // libtorch refuses (tch panics) if inter-op work already ran; that is harmless here.
        let _ = std::panic::catch_unwind(|| tch::set_num_interop_threads(n));
    });
}

/// libtorch's RNG and intra-op thread count are process-wide, and the test harness runs
/// tests on parallel threads: every test that draws from the torch RNG (a model's initial
/// weights), seeds it or sets the thread count holds this lock, or a determinism test sees
/// another test's draws or a changed reduction order.
#[cfg(test)]
pub(crate) fn torch_serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_consistent() {
        let info = torch_info();
        assert!(info.available);
        assert!(!info.cudnn || info.cuda_available);
        assert!(info.cuda_devices >= 0);
        assert_ne!(libtorch_version(), "unknown");
        assert!(libtorch_version().starts_with("2.13.0"), "{}", libtorch_version());
    }

    #[test]
    fn threads_apply() {
        let _g = torch_serial();
        set_threads(1);
        assert_eq!(tch::get_num_threads(), 1);
    }
}
