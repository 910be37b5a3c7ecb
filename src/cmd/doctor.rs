//! `flow doctor`: libtorch, CUDA, threads, the worker, the cache, the stage kinds.

use flow_cache::Store;

use crate::ctx::{print_json, Ctx};
use crate::exit::Exit;

pub fn doctor(ctx: &Ctx) -> Exit {
    let info = flow_stages::worker::worker_info().clone();
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let writable = Store::open(&ctx.cache_dir).is_ok();
    let kinds: Vec<&str> = flow_stages::registry().names().collect();
    let v = serde_json::json!({
        "flow_version": env!("CARGO_PKG_VERSION"),
        "torch": info,
        "worker": flow_stages::worker::worker_path(),
        "cpu_threads": ncpu,
        "cache_dir": ctx.cache_dir,
        "cache_writable": writable,
        "workspace": ctx.workspace,
        "stage_kinds": kinds,
    });
    if ctx.json {
        print_json(&v);
    } else {
        println!("flow {}", env!("CARGO_PKG_VERSION"));
        match (&info.available, &info.libtorch_version) {
            (true, Some(ver)) => println!("libtorch     {ver}"),
            (true, None) => println!("libtorch     linked (version unknown)"),
            _ => println!(
                "libtorch     not available{}",
                info.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        }
        println!(
            "CUDA         {}",
            if info.cuda_available {
                format!(
                    "yes, {} device(s), cuDNN {}",
                    info.cuda_devices,
                    if info.cudnn { "yes" } else { "no" }
                )
            } else {
                "no (stages run on CPU)".into()
            }
        );
        println!("threads      {ncpu} cores; torch intra-op threads {}", info.threads);
        println!(
            "worker       {}",
            flow_stages::worker::worker_path().map_or("none (torch stages cannot run)".to_string(), |p| p
                .display()
                .to_string())
        );
        println!(
            "cache        {} ({})",
            ctx.cache_dir.display(),
            if writable { "writable" } else { "NOT writable" }
        );
        println!("stage kinds  {}", kinds.join(", "));
    }
    if writable {
        Exit::Ok
    } else {
        Exit::Invalid
    }
}
