//! `flow` — the command line: arguments ([`Cli`]), then one command module each
//! ([`cmd`]); diagnostics ([`render`]), progress ([`ui`]) and exit codes ([`exit`]). All the
//! work is in the `flow-engine`, `flow-cache` and `flow-stages` crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use flow_engine::DagFormat;

mod cmd;
mod ctx;
mod exit;
mod render;
mod ui;

use ctx::Ctx;
use exit::{Exit, Fail};

#[derive(Parser)]
#[command(
    name = "flow",
    version,
    about = "Content-keyed, cached dataflow pipelines for deepfake-detection research"
)]
pub struct Cli {
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
    /// A one-off change of the pipeline, keyed as if the file said so: `--set train.lr=3e-4`,
    /// `--set train.model.width=8` (the value is RON; repeat for several).
    #[arg(long = "set", global = true, value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
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
        /// In a study: only this variant (repeatable) and what it needs, not the comparison.
        #[arg(long = "variant", value_name = "NAME")]
        variants: Vec<String>,
        /// Keep running independent stages after a failure.
        #[arg(long)]
        keep_going: bool,
        /// Say what would run and why, run nothing (like `make -n`, Snakemake's `-n`).
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
    /// Fresh / stale / never-run for each stage instance, and why (a study's grouped by variant).
    Status { pipeline: PathBuf },
    /// Validate pipeline files: syntax, params, references, port types, cycles, paths.
    Check {
        #[arg(required_unless_present = "list_kinds")]
        pipelines: Vec<PathBuf>,
        /// List the stage kinds this build knows (name, version, what it does) and exit.
        #[arg(long, conflicts_with_all = ["pipelines", "no_path_check"])]
        list_kinds: bool,
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
    /// Compare experiments: out-of-fold metrics side by side against the first (the
    /// baseline) — DeLong, paired t and Wilcoxon where they share items and folds, a bootstrap
    /// where not — Holm-adjusted, with params diffs. Runs nothing unless --run: a stale
    /// experiment is named and the command fails.
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
        /// Also write the comparison as a self-contained HTML page (tables, plots) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
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
            return Exit::Invalid.into();
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
    match Ctx::new(&cli).and_then(|ctx| dispatch(&ctx, &cli.cmd)) {
        Ok(exit) => exit.into(),
        Err(f) => {
            f.print(cli.json);
            f.exit.into()
        }
    }
}

fn dispatch(ctx: &Ctx, cmd: &Cmd) -> Result<Exit, Fail> {
    match cmd {
        Cmd::Check { list_kinds: true, .. } => Ok(cmd::check::list_kinds(ctx)),
        Cmd::Check {
            pipelines,
            no_path_check,
            ..
        } => Ok(cmd::check::check(ctx, pipelines, !no_path_check)),
        Cmd::Dag { pipeline, format } => cmd::check::dag(ctx, pipeline, (*format).into()),
        Cmd::Status { pipeline } => cmd::status::status(ctx, pipeline),
        Cmd::Run {
            pipeline,
            jobs,
            cpus,
            targets,
            variants,
            keep_going,
            dry_run,
        } => cmd::run::run(
            ctx,
            &cmd::run::Args {
                pipeline: pipeline.clone(),
                jobs: *jobs,
                cpus: *cpus,
                targets: targets.clone(),
                variants: variants.clone(),
                keep_going: *keep_going,
                dry_run: *dry_run,
            },
        ),
        Cmd::Doctor => Ok(cmd::doctor::doctor(ctx)),
        Cmd::Verify => cmd::maintain::verify(ctx),
        Cmd::Gc {
            pipelines,
            dry_run,
            keep_history,
        } => cmd::maintain::gc(ctx, pipelines, *dry_run, *keep_history),
        Cmd::Compare {
            pipelines,
            stage,
            run,
            latex,
            html,
        } => cmd::compare::compare(
            ctx,
            &cmd::compare::Args {
                files: pipelines,
                stage: stage.as_deref(),
                run: *run,
                latex: latex.as_deref(),
                html: html.as_deref(),
            },
        ),
    }
}

impl From<Format> for DagFormat {
    fn from(f: Format) -> DagFormat {
        match f {
            Format::Text => DagFormat::Text,
            Format::Dot => DagFormat::Dot,
            Format::Mermaid => DagFormat::Mermaid,
        }
    }
}
