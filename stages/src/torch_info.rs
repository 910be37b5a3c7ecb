//! What libtorch this build runs on: for `flow` diagnostics, and the libtorch version that
//! goes into the cache keys of torch-backed stages.
//!
//! The version is fixed at build time by `stages/build.rs` (from the libtorch directory that
//! torch-sys links: `build-version`, the pip wheel's `version.py`, or `torch/version.h`), so
//! it costs nothing and needs no libtorch call; the rest is queried from libtorch at run time.

/// A snapshot of the linked libtorch and what it can see.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TorchInfo {
    /// Built with the `torch` feature (libtorch linked).
    pub available: bool,
    /// e.g. "2.13.0+cu130"; None without the feature.
    pub libtorch_version: Option<String>,
    /// At least one CUDA device is usable.
    pub cuda_available: bool,
    pub cuda_devices: i64,
    /// cuDNN is usable (implies `cuda_available`).
    pub cudnn: bool,
    /// Intra-op threads libtorch uses now.
    pub threads: i32,
    /// Anything worth telling the user (why torch or CUDA is not there).
    pub note: Option<String>,
}

/// The libtorch version this binary was built against (compile-time; part of torch stages'
/// cache keys). `Some("unknown")` if the build script could not tell, None without the
/// `torch` feature.
pub fn libtorch_version() -> Option<&'static str> {
    #[cfg(feature = "torch")]
    {
        Some(option_env!("FLOW_LIBTORCH_VERSION").unwrap_or("unknown"))
    }
    #[cfg(not(feature = "torch"))]
    {
        None
    }
}

#[cfg(feature = "torch")]
pub fn torch_info() -> TorchInfo {
    // has_cudart: the CUDA backend is registered, i.e. libtorch_cuda.so is loaded (checked: true
    // on a GPU-less host with the CUDA wheel, false when the linker dropped libtorch_cuda, see
    // stages/build/libtorch.rs, and with a CPU-only libtorch). `has_cuda` would also need a GPU.
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
        libtorch_version: libtorch_version().map(str::to_string),
        cuda_available,
        cuda_devices,
        cudnn,
        threads: tch::get_num_threads(),
        note,
    }
}

#[cfg(not(feature = "torch"))]
pub fn torch_info() -> TorchInfo {
    TorchInfo {
        available: false,
        libtorch_version: None,
        cuda_available: false,
        cuda_devices: 0,
        cudnn: false,
        threads: 0,
        note: Some("built without the torch feature".to_string()),
    }
}

/// Sets libtorch's intra-op threads to `n` (0 is ignored). The inter-op pool can only be sized
/// once, before any parallel work: the first call sizes it too, later calls leave it alone.
#[cfg(feature = "torch")]
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

/// No-op without the `torch` feature.
#[cfg(not(feature = "torch"))]
pub fn set_threads(_n: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_consistent() {
        let info = torch_info();
        assert_eq!(info.available, cfg!(feature = "torch"));
        assert_eq!(info.libtorch_version.as_deref(), libtorch_version());
        assert!(!info.cudnn || info.cuda_available);
        assert!(info.cuda_devices >= 0);
        if !info.available {
            assert!(info.note.is_some());
        }
    }

    #[cfg(feature = "torch")]
    #[test]
    fn threads_apply() {
        set_threads(1);
        assert_eq!(tch::get_num_threads(), 1);
        assert_ne!(libtorch_version(), Some("unknown"));
    }
}
