//! `flow compare`: experiments that share a split, side by side, with paired tests against
//! the first. Reads only fresh results; `--run` runs what is stale first.

use std::path::{Path, PathBuf};

use flow_engine::{Context, Dag, NotFresh};
use flow_stages::ports::{predictions, PREDICTIONS};
use flow_stages::report::compare;
use flow_stages::report::stage::Columns;

use crate::ctx::{print_json, Ctx};
use crate::exit::{Exit, Fail};

pub struct Args<'a> {
    pub files: &'a [PathBuf],
    pub stage: Option<&'a str>,
    pub run: bool,
    pub latex: Option<&'a Path>,
    pub html: Option<&'a Path>,
}

pub fn compare(ctx: &Ctx, a: &Args<'_>) -> Result<Exit, Fail> {
    for path in a.latex.iter().chain(&a.html) {
        // Before any work: a file inside out/ or the cache would alter a cache object, and
        // one of the compared pipeline files is the user's experiment.
        ctx.check_user_output(path)?;
        if a.files
            .iter()
            .any(|f| crate::ctx::resolved(f) == crate::ctx::resolved(path))
        {
            return Err(Fail::usage(format!(
                "refusing to write {}: it is one of the pipelines compared",
                path.display()
            )));
        }
    }
    let dags = a
        .files
        .iter()
        .map(|f| ctx.load_or_report(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut exps = Vec::new();
    let mut stale = Vec::new();
    for (f, dag) in a.files.iter().zip(&dags) {
        match experiment(ctx, f, dag, a)? {
            Ok(e) => exps.push(e),
            Err(why) => stale.push(why),
        }
    }
    if !stale.is_empty() {
        if !ctx.json {
            for s in &stale {
                eprintln!("stale: {s}");
            }
        }
        return Err(Fail::new(
            Exit::Failed,
            "stale",
            format!(
                "run the stale experiments first (`flow run FILE`), or pass --run: {}",
                stale.join("; ")
            ),
        ));
    }
    // The params diff against the first: what each experiment changes.
    let params: Vec<_> = exps.iter().map(|e| e.1.clone()).collect();
    let exps: Vec<compare::Experiment> = exps
        .into_iter()
        .map(|(mut e, p)| {
            e.changes = compare::params_diff(&params[0], &p);
            e
        })
        .collect();
    let baseline = exps[0].group.clone();
    let fail = |e: String| Fail::new(Exit::Failed, "compare", e);
    let c = compare::compare(&exps, &baseline, &compare::Options::default()).map_err(fail)?;
    if let Some(path) = a.latex {
        ctx.write_user_file(path, compare::latex(&c).as_bytes())?;
    }
    if let Some(path) = a.html {
        let figures = compare::figures(&c).map_err(|e| fail(e.to_string()))?;
        let title = format!("Comparison: {} against `{baseline}`", exps.len());
        let page = flow_stages::report::page::render_html(&compare::document(&c, &title, figures), "");
        ctx.write_user_file(path, page.as_bytes())?;
    }
    if ctx.json {
        print_json(&c);
    } else {
        print!("{}", compare::markdown(&c));
    }
    Ok(Exit::Ok)
}

/// One pipeline's experiment (its fresh predictions and params), or why it is stale.
/// With `--run`, a stale one is run first.
/// Its key params per stage come along, for the params diff.
type Loaded = (
    compare::Experiment,
    std::collections::BTreeMap<String, serde_json::Value>,
);

fn experiment(ctx: &Ctx, file: &Path, dag: &Dag, a: &Args<'_>) -> Result<Result<Loaded, String>, Fail> {
    let cx = if a.run { ctx.open()? } else { ctx.open_read_only()? };
    let stage = predictions_stage(dag, a.stage).map_err(Fail::usage)?;
    let mut got = fresh_predictions(&cx, dag, &stage);
    if a.run && matches!(got, Ok(Err(_))) {
        let args = super::run::Args {
            targets: a.stage.map(String::from).into_iter().collect(),
            ..super::run::Args::new(file)
        };
        let quiet = Ctx {
            json: false,
            ..ctx.clone()
        };
        let code = super::run::run(&quiet, &args)?;
        if code != Exit::Ok {
            return Err(Fail::new(
                code,
                "stage",
                format!("running {} for the comparison failed", file.display()),
            ));
        }
        got = fresh_predictions(&cx, dag, &stage);
    }
    Ok(got.map_err(Fail::usage)?.map(|predictions| {
        let e = compare::Experiment {
            name: dag.pipeline.name.clone(),
            group: dag.pipeline.name.clone(),
            seed: None,
            predictions,
            changes: Vec::new(),
            held_out: Default::default(),
            parameters: None,
        };
        let params = dag
            .pipeline
            .stages
            .iter()
            .map(|d| (d.name.clone(), d.config.key_params()))
            .collect();
        (e, params)
    }))
}

/// The stage to compare: the one named, or the pipeline's only predictions stage.
fn predictions_stage(dag: &Dag, stage: Option<&str>) -> Result<String, String> {
    if let Some(s) = stage {
        return Ok(s.to_string());
    }
    let v: Vec<&str> = dag
        .pipeline
        .stages
        .iter()
        .filter(|d| d.config.output() == PREDICTIONS)
        .map(|d| d.name.as_str())
        .collect();
    let name = &dag.pipeline.name;
    match v.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(format!(
            "pipeline `{name}` has no EnsembleInfer stage: name one with --stage"
        )),
        _ => Err(format!(
            "pipeline `{name}` has several EnsembleInfer stages ({}): pick one with --stage",
            v.join(", ")
        )),
    }
}

/// The fresh predictions of `stage` (outer `Err`: a usage error), or why they are stale
/// (inner `Err`).
fn fresh_predictions(cx: &Context, dag: &Dag, stage: &str) -> Result<Result<Columns, String>, String> {
    let rec = match cx.fresh_record(dag, stage) {
        Ok(r) => r,
        Err(NotFresh::Stale(why)) => return Ok(Err(why)),
        Err(e) => return Err(e.to_string()),
    };
    let entry = rec
        .tree
        .entries
        .get(predictions::ROWS)
        .ok_or_else(|| format!("{}: `{stage}` has no {}", dag.pipeline.name, predictions::ROWS))?;
    Columns::read_file(&cx.store.object_path(&entry.hash))
        .map(Ok)
        .map_err(|e| e.to_string())
}
