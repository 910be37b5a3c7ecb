//! What libtorch the torch worker runs on, as `flow-worker doctor` reports it (see
//! [`crate::worker`]). `flow` itself never links libtorch.

/// A snapshot of the worker's libtorch and what it can see.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TorchInfo {
    /// A worker with libtorch answered.
    pub available: bool,
    /// e.g. "2.13.0+cu130"; None without a worker.
    pub libtorch_version: Option<String>,
    /// At least one CUDA device is usable.
    pub cuda_available: bool,
    pub cuda_devices: i64,
    /// cuDNN is usable (implies `cuda_available`).
    pub cudnn: bool,
    /// Intra-op threads libtorch uses by default.
    pub threads: i32,
    /// Anything worth telling the user (why torch or CUDA is not there).
    pub note: Option<String>,
    /// The libtorch/c10 shared libraries the worker had loaded (from `/proc/self/maps`), so
    /// a cached answer can be checked against them by `stat` (see [`crate::worker`]).
    #[serde(default)]
    pub libs: Vec<std::path::PathBuf>,
}
