//! `flow` — the command line. Parsing arguments, rendering diagnostics and progress, exit
//! codes (0 ok, 1 a stage failed, 2 invalid pipeline or usage, 130 interrupted). All the
//! work is in the `flow-engine`, `flow-cache` and `flow-stages` crates.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flow_cache::{FileStateCache, LockEvent, Store};
use flow_engine::{Dag, DagFormat, Diagnostic, RunEvent, RunOptions, State};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

mod render;
use render::render_diag;

#[derive(Parser)]
#[command(
    name = "flow",
    version,
    about = "Content-keyed, cached dataflow pipelines for deepfake-detection research"
)]
struct Cli {
    /// Workspace root (relative paths in pipelines are resolved against it).
    #[arg(short = 'C', long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Cache directory (default: <workspace>/.flow).
    #[arg(long, global = true, env = "FLOW_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run what is stale, reuse what is cached.
    Run {
        pipeline: PathBuf,
        /// Instances running at once (default: number of cores).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// CPU threads shared by running stages (default: number of cores).
        #[arg(long)]
        cpus: Option<usize>,
        /// Only these stages/instances and what they need.
        #[arg(long = "target", value_name = "STAGE")]
        targets: Vec<String>,
        /// Keep running independent stages after a failure.
        #[arg(long)]
        keep_going: bool,
    },
    /// Fresh / stale / never-run for each stage instance, and why.
    Status { pipeline: PathBuf },
    /// Validate pipeline files: syntax, params, references, port types, cycles, paths.
    Check {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Print the DAG of stage instances.
    Dag {
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// libtorch version, CUDA devices, threads, cache location.
    Doctor,
    /// Re-hash every cached object. Damaged ones are moved to quarantine/ and the instances
    /// that produced them re-run next time instead of being trusted. Exit 1 if anything
    /// was wrong.
    Verify,
    /// Delete run records, objects, logs and checkpoints the named pipelines no longer reach
    /// (kept: each instance's current key and its last run).
    Gc {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep every run record of the named pipelines (older params too), not only the
        /// current and last ones.
        #[arg(long)]
        keep_history: bool,
    },
    /// Compare experiments that share a split: out-of-fold metrics side by side, DeLong,
    /// paired t and Wilcoxon tests against the first (the baseline), params diffs. Runs
    /// nothing unless --run: a stale experiment is named and the command fails.
    Compare {
        #[arg(required = true, num_args = 2..)]
        pipelines: Vec<PathBuf>,
        /// The predictions stage to compare (default: each pipeline's EnsembleInfer stage).
        #[arg(long)]
        stage: Option<String>,
        /// Run what is stale first instead of refusing.
        #[arg(long)]
        run: bool,
        /// Also write the table as LaTeX (booktabs) to this file.
        #[arg(long, value_name = "FILE")]
        latex: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FLOW_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let workspace = match &cli.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let cache_dir = cli.cache_dir.clone().unwrap_or_else(|| workspace.join(".flow"));
    let ctx = Ctx {
        json: cli.json,
        workspace,
        cache_dir,
    };
    let code = match &cli.cmd {
        Cmd::Check { pipelines } => cmd_check(&ctx, pipelines),
        Cmd::Dag { pipeline, format } => cmd_dag(&ctx, pipeline, *format),
        Cmd::Status { pipeline } => cmd_status(&ctx, pipeline),
        Cmd::Run {
            pipeline,
            jobs,
            cpus,
            targets,
            keep_going,
        } => cmd_run(&ctx, pipeline, *jobs, *cpus, targets, *keep_going),
        Cmd::Doctor => cmd_doctor(&ctx),
        Cmd::Verify => cmd_verify(&ctx),
        Cmd::Gc {
            pipelines,
            dry_run,
            keep_history,
        } => cmd_gc(&ctx, pipelines, *dry_run, *keep_history),
        Cmd::Compare {
            pipelines,
            stage,
            run,
            latex,
        } => cmd_compare(&ctx, pipelines, stage.as_deref(), *run, latex.as_deref()),
    };
    ExitCode::from(code)
}

#[derive(Clone)]
struct Ctx {
    json: bool,
    workspace: PathBuf,
    cache_dir: PathBuf,
}

impl Ctx {
    /// Pipeline paths are taken relative to the current directory, as the user typed them.
    fn load(&self, path: &Path) -> Result<Dag, Vec<Diagnostic>> {
        flow_engine::load_dag(path, &flow_stages::registry())
    }
    fn open_store(&self) -> Result<Store, u8> {
        let store = Store::open(&self.cache_dir).map_err(|e| {
            eprintln!("error: {e}");
            2
        })?;
        // The torch worker's answer (libtorch version for keys) is kept between runs.
        flow_stages::worker::set_info_cache_dir(store.root().join("state"));
        Ok(store)
    }

    /// The store, under its exclusive lock.
    fn open_locked(&self) -> Result<(Store, flow_cache::LockGuard), u8> {
        let store = self.open_store()?;
        let lock = lock_cache(&store)?;
        Ok((store, lock))
    }
}

// ---------- diagnostics ----------

fn report_diags(ctx: &Ctx, diags: &[Diagnostic]) -> u8 {
    if ctx.json {
        println!("{}", serde_json::json!({"ok": false, "diagnostics": diags}));
    } else {
        for d in diags {
            eprint!("{}", render_diag(d));
        }
    }
    2
}

// ---------- check / dag ----------

fn cmd_check(ctx: &Ctx, files: &[PathBuf]) -> u8 {
    let mut all_ok = true;
    let mut results = Vec::new();
    for f in files {
        match ctx.load(f) {
            Ok(dag) => {
                let stages = dag.pipeline.stages.len();
                let instances = dag.graph.node_count();
                if !ctx.json {
                    eprintln!(
                        "ok  {} — pipeline `{}`: {stages} stages, {instances} instances",
                        f.display(),
                        dag.pipeline.name
                    );
                }
                results.push(serde_json::json!({"file": f, "ok": true, "pipeline": dag.pipeline.name, "stages": stages, "instances": instances, "diagnostics": []}));
            }
            Err(diags) => {
                all_ok = false;
                if !ctx.json {
                    for d in &diags {
                        eprint!("{}", render_diag(d));
                    }
                    eprintln!(
                        "FAIL {} — {} problem{}",
                        f.display(),
                        diags.len(),
                        if diags.len() == 1 { "" } else { "s" }
                    );
                }
                results.push(serde_json::json!({"file": f, "ok": false, "diagnostics": diags}));
            }
        }
    }
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": all_ok, "files": results})).unwrap()
        );
    }
    if all_ok {
        0
    } else {
        2
    }
}

fn cmd_dag(ctx: &Ctx, file: &Path, format: Format) -> u8 {
    let dag = match ctx.load(file) {
        Ok(d) => d,
        Err(diags) => return report_diags(ctx, &diags),
    };
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&dag.to_json()).unwrap());
    } else {
        let f = match format {
            Format::Text => DagFormat::Text,
            Format::Dot => DagFormat::Dot,
            Format::Mermaid => DagFormat::Mermaid,
        };
        print!("{}", dag.render(f));
    }
    0
}

// ---------- status ----------

fn cmd_status(ctx: &Ctx, file: &Path) -> u8 {
    let dag = match ctx.load(file) {
        Ok(d) => d,
        Err(diags) => return report_diags(ctx, &diags),
    };
    let store = match ctx.open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let mut fsc = FileStateCache::load(&store);
    let paths = flow_engine::plan::digest_paths(&dag, &ctx.workspace, &mut fsc);
    let _ = fsc.save(&store);
    let st = flow_engine::plan::status(&dag, &store, &paths);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap());
        return 0;
    }
    let width = st.iter().map(|s| s.stage.len()).max().unwrap_or(0);
    for s in &st {
        let state = match s.state {
            State::Fresh => "fresh",
            State::Stale => "stale",
            State::NeverRun => "never-run",
        };
        let why = if s.reasons.is_empty() {
            String::new()
        } else {
            format!("  {}", s.reasons.join("; "))
        };
        println!("{:width$}  {state:9}{why}", s.stage);
    }
    let fresh = st.iter().filter(|s| s.state == State::Fresh).count();
    println!("{fresh}/{} fresh", st.len());
    0
}

// ---------- compare ----------

/// The fresh predictions of `file`'s comparison stage, or why there are none.
fn fresh_predictions(
    ctx: &Ctx,
    store: &Store,
    dag: &Dag,
    stage: Option<&str>,
) -> Result<Result<flow_stages::report::stage::Predictions, String>, String> {
    let name = match stage {
        Some(s) => s.to_string(),
        None => {
            let v: Vec<&str> = dag
                .pipeline
                .stages
                .iter()
                .filter(|d| d.kind.name == "EnsembleInfer")
                .map(|d| d.name.as_str())
                .collect();
            match v.as_slice() {
                [one] => one.to_string(),
                [] => {
                    return Err(format!(
                        "pipeline `{}` has no EnsembleInfer stage: name one with --stage",
                        dag.pipeline.name
                    ))
                }
                _ => {
                    return Err(format!(
                        "pipeline `{}` has several EnsembleInfer stages ({}): pick one with --stage",
                        dag.pipeline.name,
                        v.join(", ")
                    ))
                }
            }
        }
    };
    let mut fsc = FileStateCache::load(store);
    let paths = flow_engine::plan::digest_paths(dag, &ctx.workspace, &mut fsc);
    let _ = fsc.save(store);
    let st = flow_engine::plan::status(dag, store, &paths);
    let s = st
        .iter()
        .find(|s| s.stage == name)
        .ok_or_else(|| format!("`{name}` is not a stage of pipeline `{}`", dag.pipeline.name))?;
    if s.state != State::Fresh {
        let why = if s.reasons.is_empty() {
            "never run".to_string()
        } else {
            s.reasons.join("; ")
        };
        return Ok(Err(format!("{}: `{name}` is not fresh ({why})", dag.pipeline.name)));
    }
    let key = s.key.clone().unwrap_or_default();
    let rec = flow_engine::plan::lookup(store, &key).map_err(|e| format!("{}: {e}", dag.pipeline.name))?;
    let entry = rec
        .tree
        .entries
        .get("predictions.csv")
        .ok_or_else(|| format!("{}: `{name}` has no predictions.csv", dag.pipeline.name))?;
    flow_stages::report::stage::read_predictions(&store.object_path(&entry.hash))
        .map(Ok)
        .map_err(|e| e.to_string())
}

fn cmd_compare(ctx: &Ctx, files: &[PathBuf], stage: Option<&str>, run: bool, latex: Option<&Path>) -> u8 {
    use flow_stages::report::compare;
    let mut dags = Vec::new();
    for f in files {
        match ctx.load(f) {
            Ok(d) => dags.push(d),
            Err(diags) => return report_diags(ctx, &diags),
        }
    }
    let mut exps = Vec::new();
    let mut stale = Vec::new();
    for (f, dag) in files.iter().zip(&dags) {
        let store = match ctx.open_store() {
            Ok(s) => s,
            Err(c) => return c,
        };
        let mut got = fresh_predictions(ctx, &store, dag, stage);
        if run && matches!(got, Ok(Err(_))) {
            let target = stage.map(String::from).into_iter().collect::<Vec<_>>();
            let code = cmd_run(
                &Ctx {
                    json: false,
                    ..ctx.clone()
                },
                f,
                None,
                None,
                &target,
                false,
            );
            if code != 0 {
                return code;
            }
            got = fresh_predictions(ctx, &store, dag, stage);
        }
        match got {
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
            Ok(Err(why)) => stale.push(why),
            Ok(Ok(p)) => exps.push(compare::Experiment {
                name: dag.pipeline.name.clone(),
                predictions: p,
                params: dag
                    .pipeline
                    .stages
                    .iter()
                    .map(|d| (d.name.clone(), d.config.key_params()))
                    .collect(),
            }),
        }
    }
    if !stale.is_empty() {
        for s in &stale {
            eprintln!("stale: {s}");
        }
        eprintln!("error: run the stale experiments first (`flow run FILE`), or pass --run");
        return 1;
    }
    let c = match compare::compare(&exps) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Some(path) = latex {
        if let Err(e) = std::fs::write(path, compare::latex(&c)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&c).unwrap());
    } else {
        print!("{}", compare::markdown(&c));
    }
    0
}

// ---------- run ----------

struct Ui {
    mp: Option<MultiProgress>,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
    overall: Option<ProgressBar>,
    plain: bool,
}

impl Ui {
    fn new(json: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        if tty && !json {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = mp.add(ProgressBar::new(0));
            overall.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} stages  {elapsed}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            overall.set_prefix("flow");
            Ui {
                mp: Some(mp),
                bars: Mutex::new(Default::default()),
                overall: Some(overall),
                plain: false,
            }
        } else {
            Ui {
                mp: None,
                bars: Mutex::new(Default::default()),
                overall: None,
                plain: !json,
            }
        }
    }
    fn println(&self, s: String) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(s);
            }
            None if self.plain => eprintln!("{s}"),
            None => {}
        }
    }
    fn event(&self, e: RunEvent) {
        match e {
            RunEvent::Planned { total } => {
                if let Some(o) = &self.overall {
                    o.set_length(total as u64);
                }
            }
            RunEvent::Cached { id } => {
                self.println(format!("  cached  {id}"));
                self.tick();
            }
            RunEvent::Started { id, threads, gpu, .. } => {
                let dev = gpu.map(|g| format!(", cuda:{g}")).unwrap_or_default();
                if let Some(mp) = &self.mp {
                    let pb = mp.add(ProgressBar::new(1000));
                    pb.set_style(ProgressStyle::with_template("  {spinner} {prefix:20} {wide_msg} {elapsed}").unwrap());
                    pb.set_prefix(id.clone());
                    pb.set_message(format!("({threads} threads{dev})"));
                    pb.enable_steady_tick(Duration::from_millis(120));
                    self.bars.lock().unwrap().insert(id, pb);
                } else {
                    self.println(format!("  run     {id} ({threads} threads{dev})"));
                }
            }
            RunEvent::Progress { id, frac, msg } => {
                if let Some(pb) = self.bars.lock().unwrap().get(&id) {
                    if frac >= 0.0 {
                        pb.set_message(format!("{:>3.0}% {msg}", frac * 100.0));
                    } else {
                        pb.set_message(msg);
                    }
                }
            }
            RunEvent::Finished { id, secs } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                self.println(format!("  done    {id} ({secs:.1}s)"));
                self.tick();
            }
            RunEvent::Failed { id, error, log } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                // Failures are shown even with --json (on stderr).
                let msg = format!("  FAILED  {id}: {error}\n          log: {}", log.display());
                if self.mp.is_some() || self.plain {
                    self.println(msg);
                } else {
                    eprintln!("{msg}");
                }
                self.tick();
            }
            RunEvent::Skipped { id } => {
                self.println(format!("  skipped {id}"));
            }
        }
    }
    fn tick(&self) {
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }
    fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}

fn cmd_run(
    ctx: &Ctx,
    file: &Path,
    jobs: Option<usize>,
    cpus: Option<usize>,
    targets: &[String],
    keep_going: bool,
) -> u8 {
    let dag = match ctx.load(file) {
        Ok(d) => d,
        Err(diags) => return report_diags(ctx, &diags),
    };
    for t in targets {
        if !dag.by_id.contains_key(t) && dag.pipeline.stage(t).is_none() {
            eprintln!(
                "error: --target `{t}` is not a stage or instance of pipeline `{}`",
                dag.pipeline.name
            );
            return 2;
        }
    }
    let (store, _lock) = match ctx.open_locked() {
        Ok(x) => x,
        Err(c) => return c,
    };
    let json = ctx.json;
    match store.clean_stale_tmp() {
        Ok(n) if n > 0 => tracing::info!("removed {n} unfinished work dirs of interrupted runs"),
        Err(e) => tracing::warn!("cannot clean tmp: {e}"),
        _ => {}
    }

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if c.swap(true, Ordering::SeqCst) {
                // Second Ctrl-C: leave now. Nothing partial was published.
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping running stages; finished ones stay cached (Ctrl-C again to quit now)");
        });
    }

    let mut fsc = FileStateCache::load(&store);
    let paths = flow_engine::plan::digest_paths(&dag, &ctx.workspace, &mut fsc);
    if let Err(e) = fsc.save(&store) {
        tracing::warn!("cannot save file-state cache: {e}");
    }

    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // Only a pipeline with GPU-capable stages asks the torch worker for devices.
    let wants_gpu = dag.pipeline.stages.iter().any(|s| s.config.resources().gpu);
    let gpus = if wants_gpu {
        flow_stages::worker::worker_info().cuda_devices.max(0) as usize
    } else {
        0
    };
    let opts = RunOptions {
        jobs: jobs.unwrap_or(ncpu),
        cpus: cpus.unwrap_or(ncpu),
        gpus: (0..gpus).collect(),
        workspace: ctx.workspace.clone(),
        out_root: Some(ctx.workspace.join("out")),
        targets: if targets.is_empty() {
            None
        } else {
            Some(targets.to_vec())
        },
        keep_going,
    };
    let ui = Ui::new(json);
    let result = flow_engine::run(&dag, &store, &paths, &opts, &cancel, &|e| ui.event(e));
    ui.finish();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    } else {
        eprintln!(
            "{}: {} executed, {} cached, {} failed, {} skipped in {:.1}s — outputs in {}",
            summary.pipeline,
            summary.executed.len(),
            summary.cached.len(),
            summary.failed.len(),
            summary.skipped.len(),
            summary.seconds,
            Path::new("out").join(&summary.pipeline).display()
        );
        for f in &summary.failed {
            eprintln!("failed: {} — {}\n  log: {}", f.stage, f.error, f.log.display());
        }
    }
    if summary.cancelled {
        130
    } else if !summary.failed.is_empty() {
        1
    } else {
        0
    }
}

/// Take the cache lock, saying so while waiting for another process.
fn lock_cache(store: &Store) -> Result<flow_cache::LockGuard, u8> {
    store
        .lock(&mut |e| match e {
            LockEvent::Waiting { pid } => eprintln!(
                "waiting for another flow run on this cache{} …",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
            LockEvent::TookOverStale { pid } => {
                eprintln!("note: took over the cache lock of pid {pid}, which is no longer running")
            }
        })
        .map_err(|e| {
            eprintln!("error: {e}");
            2
        })
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

// ---------- verify / gc ----------

fn cmd_verify(ctx: &Ctx) -> u8 {
    let (store, _lock) = match ctx.open_locked() {
        Ok(x) => x,
        Err(c) => return c,
    };
    let out = match flow_engine::maintain::verify(&store) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        println!(
            "verified {} objects ({}) and {} run records in {}",
            out.objects_checked,
            human_size(out.bytes_checked),
            out.records_checked,
            store.root().display()
        );
        if !out.bad_objects.is_empty() {
            println!(
                "{} damaged object(s), moved to {}:",
                out.bad_objects.len(),
                store.root().join("quarantine").display()
            );
            for b in &out.bad_objects {
                let used = if b.used_by.is_empty() {
                    "unused".to_string()
                } else {
                    format!("used by {}", b.used_by.join(", "))
                };
                println!("  {} {} — {used}", &b.hash[..16], b.problem);
            }
        }
        if !out.broken_records.is_empty() {
            println!("will re-run on the next `flow run` (outputs damaged or missing):");
            for r in &out.broken_records {
                println!("  {}/{}  {}", r.record.pipeline, r.record.instance, r.problem);
            }
        }
        for k in &out.unreadable_records {
            println!("unreadable run record (ignored by every run): runs/{k}.json");
        }
        if out.clean() {
            println!("all good");
        }
    }
    if out.clean() {
        0
    } else {
        1
    }
}

fn cmd_gc(ctx: &Ctx, files: &[PathBuf], dry_run: bool, keep_history: bool) -> u8 {
    let mut dags = Vec::new();
    for f in files {
        match ctx.load(f) {
            Ok(d) => dags.push(d),
            Err(diags) => return report_diags(ctx, &diags),
        }
    }
    // No run may publish or read while records and objects go.
    let (store, _lock) = match ctx.open_locked() {
        Ok(x) => x,
        Err(c) => return c,
    };
    let mut fsc = FileStateCache::load(&store);
    let paths: Vec<_> = dags
        .iter()
        .map(|d| flow_engine::plan::digest_paths(d, &ctx.workspace, &mut fsc))
        .collect();
    let _ = fsc.save(&store);
    let pairs: Vec<_> = dags.iter().zip(paths.iter()).collect();
    let live = flow_engine::maintain::live_keys(&pairs, &store);
    let names: std::collections::BTreeSet<String> = dags.iter().map(|d| d.pipeline.name.clone()).collect();
    let out = match flow_engine::maintain::gc(&store, &live, keep_history.then_some(&names), dry_run) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        return 0;
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} run record(s), {} object(s) ({}), {} resume checkpoint(s), {} quarantined file(s)",
        out.records_removed.len(),
        out.objects_removed,
        human_size(out.bytes_removed),
        out.resume_dirs_removed,
        out.quarantine_files_removed,
    );
    for r in &out.records_removed {
        println!("  {}/{}  {}", r.pipeline, r.instance, &r.key[..16.min(r.key.len())]);
    }
    println!(
        "kept {} run record(s) and {} object(s) ({}) for {}",
        out.records_kept,
        out.objects_kept,
        human_size(out.bytes_kept),
        names.into_iter().collect::<Vec<_>>().join(", ")
    );
    0
}

// ---------- doctor ----------

fn cmd_doctor(ctx: &Ctx) -> u8 {
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
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
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
        0
    } else {
        2
    }
}
