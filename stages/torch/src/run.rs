//! `flow-worker run <spec.json>`: read the [`WorkerSpec`], set threads, dispatch on the kind.

use std::path::Path;

use flow_stages::model::{Device as Want, EnsembleInfer, Retrain, Train};
use flow_stages::worker::{WorkerInput, WorkerSpec};
use tch::Device;

use crate::train::Hooks;
use crate::util::{Context, Res};

/// Runs the stage instance a spec file describes.
pub fn run_spec_file(path: &Path) -> Res<()> {
    let bytes = std::fs::read(path).ctx(|| format!("cannot read worker spec {}", path.display()))?;
    let spec: WorkerSpec = serde_json::from_slice(&bytes).ctx(|| format!("bad worker spec {}", path.display()))?;
    run_spec(&spec, &Hooks::default())
}

/// Runs one stage instance.
pub fn run_spec(spec: &WorkerSpec, hooks: &Hooks) -> Res<()> {
    crate::set_threads(spec.threads);
    std::fs::create_dir_all(&spec.out_dir).ctx(|| format!("cannot create {}", spec.out_dir.display()))?;
    fn params<T: serde::de::DeserializeOwned>(spec: &WorkerSpec) -> Res<T> {
        serde_json::from_value(spec.params.clone()).ctx(|| {
            format!(
                "{} params do not match this flow-worker (rebuild it with flow)",
                spec.kind
            )
        })
    }
    match spec.kind.as_str() {
        "Train" => crate::train::run_train(spec, &params::<Train>(spec)?, hooks),
        "Retrain" => crate::train::run_retrain(spec, &params::<Retrain>(spec)?, hooks),
        "EnsembleInfer" => crate::infer::run_infer(spec, &params::<EnsembleInfer>(spec)?),
        "Explain" => crate::explain::run_explain(spec, &params::<flow_stages::explain::Explain>(spec)?),
        other => Err(format!(
            "flow-worker cannot run `{other}` (it runs Train, Retrain, EnsembleInfer and Explain)"
        )),
    }
}

/// The device a stage asked for: Auto → `cuda:0` when CUDA is usable (flow sets
/// `CUDA_VISIBLE_DEVICES` to the GPU it assigned), else CPU.
pub fn pick_device(want: Want) -> Res<Device> {
    match want {
        Want::Cpu => Ok(Device::Cpu),
        Want::Auto => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        Want::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                let why = if !tch::utils::has_cudart() {
                    "this libtorch has no CUDA support"
                } else {
                    "no CUDA device is visible"
                };
                Err(format!(
                    "device: Cuda was asked for, but {why} (CUDA_VISIBLE_DEVICES={:?}); use device: Auto or Cpu",
                    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
                ))
            }
        }
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The input on `port`: for a fold, the one of that fold if there is one, else a fold-less one.
pub fn find_input<'a>(spec: &'a WorkerSpec, port: &str, fold: Option<u32>) -> Res<&'a WorkerInput> {
    let mut of_port = spec.inputs.iter().filter(|i| i.port == port);
    let all: Vec<&WorkerInput> = of_port.by_ref().collect();
    if let Some(k) = fold {
        if let Some(i) = all.iter().find(|i| i.fold == Some(k)) {
            return Ok(i);
        }
    }
    if let Some(i) = all.iter().find(|i| i.fold.is_none()) {
        return Ok(i);
    }
    match (all.first(), fold) {
        (Some(i), Some(k)) => Err(format!("input `{}` ({port}) has no output for fold {k}", i.from)),
        (Some(i), None) => Ok(i),
        (None, _) => Err(format!("{} has no `{port}` input", spec.instance)),
    }
}
