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
        /// Do not require the workspace paths the pipelines read to exist (a CI machine
        /// without the data).
        #[arg(long)]
        no_path_check: bool,
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
    let json_requested = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json_requested && e.use_stderr() => {
            // clap's message without its usage/help footer, on one line.
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            Fail::usage(text.join(" ").trim_start_matches("error: ").to_string()).print(true);
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
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
    let code = match Ctx::new(&cli).and_then(|ctx| dispatch(&ctx, &cli.cmd)) {
        Ok(code) => code,
        Err(f) => {
            f.print(cli.json);
            f.exit
        }
    };
    ExitCode::from(code)
}

fn dispatch(ctx: &Ctx, cmd: &Cmd) -> Result<u8, Fail> {
    match cmd {
        Cmd::Check {
            pipelines,
            no_path_check,
        } => Ok(cmd_check(ctx, pipelines, !no_path_check)),
        Cmd::Dag { pipeline, format } => cmd_dag(ctx, pipeline, *format),
        Cmd::Status { pipeline } => cmd_status(ctx, pipeline),
        Cmd::Run {
            pipeline,
            jobs,
            cpus,
            targets,
            keep_going,
        } => cmd_run(ctx, pipeline, *jobs, *cpus, targets, *keep_going),
        Cmd::Doctor => Ok(cmd_doctor(ctx)),
        Cmd::Verify => cmd_verify(ctx),
        Cmd::Gc {
            pipelines,
            dry_run,
            keep_history,
        } => cmd_gc(ctx, pipelines, *dry_run, *keep_history),
        Cmd::Compare {
            pipelines,
            stage,
            run,
            latex,
        } => cmd_compare(ctx, pipelines, stage.as_deref(), *run, latex.as_deref()),
    }
}

/// A command that could not do its job: `error: <message>` on stderr, or with `--json`
/// `{"ok": false, "error": <message>, "code": <code>}` on stdout; exits with `exit`.
#[derive(Debug)]
struct Fail {
    exit: u8,
    /// Stable, kebab-case: `usage`, `cache`, `io`, `stale`, `compare`, `stage`, `engine`.
    code: &'static str,
    message: String,
}

impl Fail {
    fn new(exit: u8, code: &'static str, message: impl Into<String>) -> Fail {
        Fail {
            exit,
            code,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Fail {
        Fail::new(2, "usage", message)
    }
    fn cache(e: impl std::fmt::Display) -> Fail {
        Fail::new(2, "cache", e.to_string())
    }
    fn print(&self, json: bool) {
        if self.code == "printed" {
            return;
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": self.message, "code": self.code, "exit": self.exit})
            );
        } else {
            eprintln!("error: {}", self.message);
        }
    }
}

#[derive(Clone)]
struct Ctx {
    json: bool,
    /// Absolute (stage sandboxes link to workspace paths).
    workspace: PathBuf,
    cache_dir: PathBuf,
}

impl Ctx {
    fn new(cli: &Cli) -> Result<Ctx, Fail> {
        let workspace = match &cli.workspace {
            Some(w) => match std::fs::metadata(w) {
                Ok(m) if m.is_dir() => std::fs::canonicalize(w)
                    .map_err(|e| Fail::usage(format!("cannot resolve workspace {}: {e}", w.display())))?,
                Ok(_) => return Err(Fail::usage(format!("-C {}: not a directory", w.display()))),
                Err(e) => return Err(Fail::usage(format!("-C {}: {e}", w.display()))),
            },
            None => {
                std::env::current_dir().map_err(|e| Fail::usage(format!("cannot tell the current directory: {e}")))?
            }
        };
        let cache_dir = cli.cache_dir.clone().unwrap_or_else(|| workspace.join(".flow"));
        Ok(Ctx {
            json: cli.json,
            workspace,
            cache_dir,
        })
    }

    /// Pipeline paths are taken relative to the current directory, as the user typed them.
    fn load(&self, path: &Path) -> Result<Dag, Vec<Diagnostic>> {
        flow_engine::load_dag(path, &flow_stages::registry())
    }

    /// [`Ctx::load`], or the diagnostics printed and exit 2.
    fn load_or_report(&self, path: &Path) -> Result<Dag, Fail> {
        self.load(path).map_err(|diags| {
            report_diags(self, &diags);
            Fail::new(2, "invalid-pipeline", "").printed()
        })
    }

    fn open_store(&self) -> Result<Store, Fail> {
        let store = Store::open(&self.cache_dir).map_err(Fail::cache)?;
        // The torch worker's answer (libtorch version for keys) is kept between runs.
        flow_stages::worker::set_info_cache_dir(store.root().join("state"));
        Ok(store)
    }

    /// The cache for commands that only read it (`status`, `verify`, `compare`): works on a
    /// read-only cache and creates nothing.
    fn open_store_read_only(&self) -> Result<Store, Fail> {
        let store = Store::open_read_only(&self.cache_dir).map_err(Fail::cache)?;
        flow_stages::worker::set_info_cache_dir(store.root().join("state"));
        Ok(store)
    }

    /// The store, under its exclusive lock.
    fn open_locked(&self) -> Result<(Store, flow_cache::LockGuard), Fail> {
        let store = self.open_store()?;
        let lock = lock_cache(&store)?;
        Ok((store, lock))
    }

    /// Where user-facing commands may not write: the cache and `out/` (whose files are the
    /// cache's objects).
    fn check_user_output(&self, path: &Path) -> Result<(), Fail> {
        let abs = std::path::absolute(path).map_err(|e| Fail::usage(format!("{}: {e}", path.display())))?;
        let resolved = match std::fs::canonicalize(&abs) {
            Ok(p) => p,
            Err(_) => match (abs.parent(), abs.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf()).join(name),
                _ => abs.clone(),
            },
        };
        let forbidden = [
            (self.cache_dir.clone(), "the cache"),
            (self.workspace.join("out"), "out/ (its files are the cache's objects)"),
        ];
        for (root, what) in forbidden {
            let root = std::fs::canonicalize(&root).unwrap_or(root);
            if resolved.starts_with(&root) {
                return Err(Fail::usage(format!(
                    "refusing to write {}: it is inside {what}; write it somewhere else",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

impl Fail {
    /// A failure whose message was already shown (diagnostics): nothing more is printed.
    fn printed(self) -> Fail {
        Fail {
            code: "printed",
            ..self
        }
    }
}

/// Write a user-requested file (`--latex FILE`): never inside the cache or `out/`, and by
/// tmp file + rename, so that an existing file's inode (which may be a hard link to a cache
/// object) is never written through.
fn write_user_file(ctx: &Ctx, path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    ctx.check_user_output(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Fail::usage(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let io = |e: std::io::Error| Fail::new(1, "io", format!("cannot write {}: {e}", path.display()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
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

fn cmd_check(ctx: &Ctx, files: &[PathBuf], check_paths: bool) -> u8 {
    let mut all_ok = true;
    let mut results = Vec::new();
    for f in files {
        let loaded = ctx.load(f).and_then(|dag| {
            let missing = if check_paths {
                let flow_dirs = [
                    (ctx.cache_dir.clone(), "the cache"),
                    (ctx.workspace.join("out"), "out/"),
                ];
                dag.check_paths(&ctx.workspace, &flow_dirs)
            } else {
                Vec::new()
            };
            if missing.is_empty() {
                Ok(dag)
            } else {
                Err(missing)
            }
        });
        match loaded {
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

fn cmd_dag(ctx: &Ctx, file: &Path, format: Format) -> Result<u8, Fail> {
    let dag = ctx.load_or_report(file)?;
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
    Ok(0)
}

// ---------- status ----------

fn cmd_status(ctx: &Ctx, file: &Path) -> Result<u8, Fail> {
    let dag = ctx.load_or_report(file)?;
    // Reads only: works on a cache it cannot write (the stat cache is saved if it can be).
    let store = ctx.open_store_read_only()?;
    let mut fsc = FileStateCache::load(&store);
    let paths = flow_engine::plan::digest_paths(&dag, &ctx.workspace, &mut fsc);
    let _ = fsc.save(&store);
    let st = flow_engine::plan::status(&dag, &store, &paths);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap());
        return Ok(0);
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
    Ok(0)
}

// ---------- compare ----------

/// The fresh predictions of `file`'s comparison stage, or why there are none.
fn fresh_predictions(
    ctx: &Ctx,
    store: &Store,
    dag: &Dag,
    stage: Option<&str>,
) -> Result<Result<flow_stages::report::stage::Columns, String>, String> {
    let name = match stage {
        Some(s) => s.to_string(),
        None => {
            let v: Vec<&str> = dag
                .pipeline
                .stages
                .iter()
                .filter(|d| d.config.output() == flow_stages::ports::PREDICTIONS)
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
        .get(flow_stages::ports::predictions::ROWS)
        .ok_or_else(|| {
            format!(
                "{}: `{name}` has no {}",
                dag.pipeline.name,
                flow_stages::ports::predictions::ROWS
            )
        })?;
    flow_stages::report::stage::Columns::read_file(&store.object_path(&entry.hash))
        .map(Ok)
        .map_err(|e| e.to_string())
}

fn cmd_compare(ctx: &Ctx, files: &[PathBuf], stage: Option<&str>, run: bool, latex: Option<&Path>) -> Result<u8, Fail> {
    use flow_stages::report::compare;
    if let Some(path) = latex {
        // Before any work: a LaTeX file inside out/ or the cache would alter a cache object.
        ctx.check_user_output(path)?;
    }
    let mut dags = Vec::new();
    for f in files {
        dags.push(ctx.load_or_report(f)?);
    }
    let mut exps = Vec::new();
    let mut stale = Vec::new();
    for (f, dag) in files.iter().zip(&dags) {
        let store = if run {
            ctx.open_store()?
        } else {
            ctx.open_store_read_only()?
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
            )?;
            if code != 0 {
                return Err(Fail::new(
                    code,
                    "stage",
                    format!("running {} for the comparison failed", f.display()),
                ));
            }
            got = fresh_predictions(ctx, &store, dag, stage);
        }
        match got {
            Err(e) => return Err(Fail::usage(e)),
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
        if !ctx.json {
            for s in &stale {
                eprintln!("stale: {s}");
            }
        }
        return Err(Fail::new(
            1,
            "stale",
            format!(
                "run the stale experiments first (`flow run FILE`), or pass --run: {}",
                stale.join("; ")
            ),
        ));
    }
    let c = compare::compare(&exps).map_err(|e| Fail::new(1, "compare", e.to_string()))?;
    if let Some(path) = latex {
        write_user_file(ctx, path, compare::latex(&c).as_bytes())?;
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&c).unwrap());
    } else {
        print!("{}", compare::markdown(&c));
    }
    Ok(0)
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
                let log = log
                    .map(|l| format!("\n          log: {}", l.display()))
                    .unwrap_or_default();
                let msg = format!("  FAILED  {id}: {error}{log}");
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
            RunEvent::Interrupted { id } => {
                if let Some(pb) = self.bars.lock().unwrap().remove(&id) {
                    pb.finish_and_clear();
                }
                self.println(format!("  interrupted {id} (nothing of it was kept)"));
            }
            RunEvent::Warning { message } => {
                // Shown even with --json (on stderr); also in the summary's `warnings`.
                let msg = format!("warning: {message}");
                if self.mp.is_some() || self.plain {
                    self.println(msg);
                } else {
                    eprintln!("{msg}");
                }
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
) -> Result<u8, Fail> {
    let dag = ctx.load_or_report(file)?;
    for t in targets {
        if !dag.by_id.contains_key(t) && dag.pipeline.stage(t).is_none() {
            return Err(Fail::usage(format!(
                "--target `{t}` is not a stage or instance of pipeline `{}`",
                dag.pipeline.name
            )));
        }
    }
    // Bounds before anything is spawned or locked.
    for (flag, v, max) in [
        ("--jobs", jobs, flow_engine::run::MAX_JOBS),
        ("--cpus", cpus, flow_engine::run::MAX_CPUS),
    ] {
        if let Some(v) = v.filter(|v| *v == 0 || *v > max) {
            return Err(Fail::usage(format!("{flag} {v} is out of range: 1..={max}")));
        }
    }
    let (store, _lock) = ctx.open_locked()?;
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
        launcher: None,
    };
    let ui = Ui::new(json);
    let result = flow_engine::run(&dag, &store, &paths, &opts, &cancel, &|e| ui.event(e));
    ui.finish();
    let summary = result.map_err(|e| Fail::new(1, "engine", e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    } else {
        let interrupted = if summary.interrupted.is_empty() {
            String::new()
        } else {
            format!(", {} interrupted", summary.interrupted.len())
        };
        eprintln!(
            "{}: {} executed, {} cached, {} failed, {} skipped{interrupted} in {:.1}s — outputs in {}",
            summary.pipeline,
            summary.executed.len(),
            summary.cached.len(),
            summary.failed.len(),
            summary.skipped.len(),
            summary.seconds,
            Path::new("out").join(&summary.pipeline).display()
        );
        for f in &summary.failed {
            let log = f
                .log
                .as_ref()
                .map(|l| format!("\n  log: {}", l.display()))
                .unwrap_or_default();
            eprintln!("failed: {} — {}{log}", f.stage, f.error);
        }
    }
    Ok(if summary.cancelled {
        130
    } else if !summary.failed.is_empty() {
        1
    } else {
        0
    })
}

/// Take the cache lock, saying so while waiting for another process.
fn lock_cache(store: &Store) -> Result<flow_cache::LockGuard, Fail> {
    store.lock(&mut on_lock_event).map_err(Fail::cache)
}

fn on_lock_event(e: LockEvent) {
    match e {
        LockEvent::Waiting { pid } => eprintln!(
            "waiting for another flow run on this cache{} …",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        LockEvent::TookOverStale { pid } => {
            eprintln!("note: took over the cache lock of pid {pid}, which is no longer running")
        }
    }
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

fn cmd_verify(ctx: &Ctx) -> Result<u8, Fail> {
    // A cache this user cannot write is verified all the same (damage is reported, only not
    // moved to quarantine); the lock keeps runs from publishing meanwhile.
    let store = ctx.open_store_read_only()?;
    if !store.root().join("objects").is_dir() {
        return Err(Fail::cache(format!("no cache at {}", store.root().display())));
    }
    let _lock = store.lock_for_reading(&mut on_lock_event).map_err(Fail::cache)?;
    let out = flow_engine::maintain::verify(&store).map_err(Fail::cache)?;
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
                if let Some(e) = &b.quarantine_error {
                    println!("    not moved to quarantine: {e}");
                }
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
    Ok(if out.clean() { 0 } else { 1 })
}

fn cmd_gc(ctx: &Ctx, files: &[PathBuf], dry_run: bool, keep_history: bool) -> Result<u8, Fail> {
    let mut dags = Vec::new();
    for f in files {
        dags.push(ctx.load_or_report(f)?);
    }
    // No run may publish or read while records and objects go.
    let (store, _lock) = ctx.open_locked()?;
    let mut fsc = FileStateCache::load(&store);
    let paths: Vec<_> = dags
        .iter()
        .map(|d| flow_engine::plan::digest_paths(d, &ctx.workspace, &mut fsc))
        .collect();
    let _ = fsc.save(&store);
    let pairs: Vec<_> = dags.iter().zip(paths.iter()).collect();
    let live = flow_engine::maintain::live_keys(&pairs, &store);
    let names: std::collections::BTreeSet<String> = dags.iter().map(|d| d.pipeline.name.clone()).collect();
    let out = flow_engine::maintain::gc(&store, &live, keep_history.then_some(&names), dry_run).map_err(Fail::cache)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        return Ok(0);
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
    Ok(0)
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
