//! `flow run`: run what is stale, reuse what is cached, expose outputs under `out/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flow_engine::run::{MAX_CPUS, MAX_JOBS};
use flow_engine::{Dag, RunOptions, RunSummary, State};

use crate::ctx::{print_json, Ctx};
use crate::exit::{Exit, Fail};
use crate::ui::Ui;

#[derive(Clone)]
pub struct Args {
    pub pipeline: PathBuf,
    pub jobs: Option<usize>,
    pub cpus: Option<usize>,
    pub targets: Vec<String>,
    /// A study's variants to run (with what they need); empty: all.
    pub variants: Vec<String>,
    pub keep_going: bool,
    /// Plan only: what would run and why.
    pub dry_run: bool,
}

impl Args {
    /// Everything of `pipeline`, with the default jobs and threads.
    pub fn new(pipeline: &Path) -> Args {
        Args {
            pipeline: pipeline.to_path_buf(),
            jobs: None,
            cpus: None,
            targets: Vec::new(),
            variants: Vec::new(),
            keep_going: false,
            dry_run: false,
        }
    }
}

pub fn run(ctx: &Ctx, a: &Args) -> Result<Exit, Fail> {
    let dag = ctx.load_or_report(&a.pipeline)?;
    check_args(&dag, a)?;
    let mut a = a.clone();
    for v in &a.variants {
        a.targets
            .extend(dag.pipeline.variant_stages(v).into_iter().map(String::from));
    }
    let a = &a;
    if a.dry_run {
        return dry_run(ctx, &dag, a);
    }
    let (cx, _lock) = ctx.open_locked()?;
    match cx.store.clean_stale_tmp() {
        Ok(n) if n > 0 => tracing::info!("removed {n} unfinished work dirs of interrupted runs"),
        Err(e) => tracing::warn!("cannot clean tmp: {e}"),
        _ => {}
    }
    let cancel = cancel_on_ctrl_c();
    let paths = cx.digest(&[&dag]).pop().unwrap_or_default();
    let opts = options(&cx, &dag, a);
    let ui = Ui::new(ctx.json);
    let result = flow_engine::run(&dag, &cx.store, &paths, &opts, &cancel, &|e| ui.event(e));
    ui.finish();
    let summary = result.map_err(|e| Fail::new(Exit::Failed, "engine", e.to_string()))?;
    if ctx.json {
        print_json(&summary);
    } else {
        print_summary(&cx, &summary);
    }
    Ok(if summary.cancelled {
        Exit::Interrupted
    } else if !summary.failed.is_empty() {
        Exit::Failed
    } else {
        Exit::Ok
    })
}

/// `flow run --dry-run`: the plan of a run (the instances it would consider, each would-run
/// or cached, with the planner's reasons) on stdout; reads the cache only, takes no lock.
fn dry_run(ctx: &Ctx, dag: &Dag, a: &Args) -> Result<Exit, Fail> {
    let cx = ctx.open_read_only()?;
    let targets = (!a.targets.is_empty()).then_some(a.targets.as_slice());
    let wanted = dag.wanted(targets);
    let plan: Vec<_> = cx
        .status(dag)
        .into_iter()
        .filter(|s| dag.by_id.get(&s.stage).is_some_and(|n| wanted[n.index()]))
        .collect();
    let (cached, stale): (Vec<_>, Vec<_>) = plan.iter().partition(|s| s.state == State::Fresh);
    if ctx.json {
        let would_run: Vec<_> = stale
            .iter()
            .map(|s| serde_json::json!({"stage": s.stage, "state": s.state, "reasons": s.reasons}))
            .collect();
        let cached: Vec<&str> = cached.iter().map(|s| s.stage.as_str()).collect();
        print_json(&serde_json::json!({
            "pipeline": dag.pipeline.name, "dry_run": true, "would_run": would_run, "cached": cached,
        }));
        return Ok(Exit::Ok);
    }
    for s in &stale {
        let why = if s.reasons.is_empty() {
            "never run".to_string()
        } else {
            s.reasons.join("; ")
        };
        println!("would run  {}  ({why})", s.stage);
    }
    for s in &cached {
        println!("cached     {}", s.stage);
    }
    println!(
        "{}: {} would run, {} cached (dry run: nothing ran)",
        dag.pipeline.name,
        stale.len(),
        cached.len()
    );
    Ok(Exit::Ok)
}

/// Targets that exist and bounds that hold, before anything is spawned or locked.
fn check_args(dag: &Dag, a: &Args) -> Result<(), Fail> {
    for t in &a.targets {
        if !dag.by_id.contains_key(t) && dag.pipeline.stage(t).is_none() {
            return Err(Fail::usage(format!(
                "--target `{t}` is not a stage or instance of pipeline `{}`",
                dag.pipeline.name
            )));
        }
    }
    for v in &a.variants {
        if dag.pipeline.variants.is_empty() {
            return Err(Fail::usage(format!(
                "--variant {v}: `{}` is a pipeline, not a study",
                dag.pipeline.name
            )));
        }
        if !dag.pipeline.variants.contains(v) {
            let hint = flow_engine::diag::did_you_mean(v, dag.pipeline.variants.iter().map(String::as_str))
                .unwrap_or_else(|| format!("its variants: {}", dag.pipeline.variants.join(", ")));
            return Err(Fail::usage(format!(
                "--variant {v} is not a variant of study `{}`; {hint}",
                dag.pipeline.name
            )));
        }
    }
    for (flag, v, max) in [("--jobs", a.jobs, MAX_JOBS), ("--cpus", a.cpus, MAX_CPUS)] {
        if let Some(v) = v.filter(|v| *v == 0 || *v > max) {
            return Err(Fail::usage(format!("{flag} {v} is out of range: 1..={max}")));
        }
    }
    Ok(())
}

/// First Ctrl-C: stop running stages (finished ones stay cached). Second: leave now.
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if c.swap(true, Ordering::SeqCst) {
            // Nothing partial was published.
            std::process::exit(Exit::Interrupted as i32);
        }
        eprintln!("\ninterrupted: stopping running stages; finished ones stay cached (Ctrl-C again to quit now)");
    });
    cancel
}

fn options(cx: &flow_engine::Context, dag: &Dag, a: &Args) -> RunOptions {
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // Only a pipeline with GPU-capable stages asks the torch worker for devices.
    let wants_gpu = dag.pipeline.stages.iter().any(|s| s.config.resources().gpu);
    let gpus = if wants_gpu {
        flow_stages::worker::worker_info().cuda_devices.max(0) as usize
    } else {
        0
    };
    RunOptions {
        jobs: a.jobs.unwrap_or(ncpu),
        cpus: a.cpus.unwrap_or(ncpu),
        gpus: (0..gpus).collect(),
        workspace: cx.workspace.clone(),
        out_root: Some(cx.out_root()),
        targets: (!a.targets.is_empty()).then(|| a.targets.clone()),
        keep_going: a.keep_going,
        launcher: None,
    }
}

fn print_summary(cx: &flow_engine::Context, s: &RunSummary) {
    let interrupted = if s.interrupted.is_empty() {
        String::new()
    } else {
        format!(", {} interrupted", s.interrupted.len())
    };
    eprintln!(
        "{}: {} executed, {} cached, {} failed, {} skipped{interrupted} in {:.1}s — outputs in {}",
        s.pipeline,
        s.executed.len(),
        s.cached.len(),
        s.failed.len(),
        s.skipped.len(),
        s.seconds,
        cx.shown(&Path::new("out").join(&s.pipeline)).display()
    );
    for f in &s.failed {
        let log = f
            .log
            .as_ref()
            .map(|l| format!("\n  log: {}", l.display()))
            .unwrap_or_default();
        eprintln!("failed: {} — {}{log}", f.stage, f.error);
    }
}
