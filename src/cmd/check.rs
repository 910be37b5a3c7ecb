//! `flow check` (validate pipeline files) and `flow dag` (print the instance graph).

use std::path::{Path, PathBuf};

use flow_engine::{Dag, DagFormat, Diagnostic};

use crate::ctx::{print_json, Ctx};
use crate::exit::{Exit, Fail};
use crate::render::render_diag;

pub fn check(ctx: &Ctx, files: &[PathBuf], check_paths: bool) -> Exit {
    let mut all_ok = true;
    let mut results = Vec::new();
    for f in files {
        match ctx.load(f).and_then(|dag| paths_exist(ctx, dag, check_paths)) {
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
                    let s = if diags.len() == 1 { "" } else { "s" };
                    eprintln!("FAIL {} — {} problem{s}", f.display(), diags.len());
                }
                results.push(serde_json::json!({"file": f, "ok": false, "diagnostics": diags}));
            }
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({"ok": all_ok, "files": results}));
    }
    if all_ok {
        Exit::Ok
    } else {
        Exit::Invalid
    }
}

/// The DAG, or a diagnostic for each workspace path it reads that is missing (or reaches
/// the cache or `out/`).
fn paths_exist(ctx: &Ctx, dag: Dag, check_paths: bool) -> Result<Dag, Vec<Diagnostic>> {
    if !check_paths {
        return Ok(dag);
    }
    let flow_dirs = [
        (ctx.cache_dir.clone(), "the cache"),
        (ctx.workspace.join("out"), "out/"),
    ];
    let missing = dag.check_paths(&ctx.workspace, &flow_dirs);
    if missing.is_empty() {
        Ok(dag)
    } else {
        Err(missing)
    }
}

pub fn dag(ctx: &Ctx, file: &Path, format: DagFormat) -> Result<Exit, Fail> {
    let dag = ctx.load_or_report(file)?;
    if ctx.json {
        print_json(&dag.to_json());
    } else {
        print!("{}", dag.render(format));
    }
    Ok(Exit::Ok)
}

/// `flow check --list-kinds`: every stage kind this build knows.
pub fn list_kinds(ctx: &Ctx) -> Exit {
    let reg = flow_stages::registry();
    if ctx.json {
        let kinds: Vec<_> = reg
            .kinds()
            .map(|k| serde_json::json!({"kind": k.name, "version": k.version, "summary": k.summary}))
            .collect();
        print_json(&kinds);
    } else {
        let width = reg.names().map(str::len).max().unwrap_or(0);
        for k in reg.kinds() {
            println!("{:width$}  v{}  {}", k.name, k.version, k.summary);
        }
    }
    Exit::Ok
}
