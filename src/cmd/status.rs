//! `flow status`: fresh / stale / never-run for each instance, and why. A study's instances
//! are grouped: what every variant shares, then each variant's own, then the comparison.

use std::path::Path;

use flow_engine::{Dag, InstanceStatus, State};

use crate::ctx::{print_json, Ctx};
use crate::exit::{Exit, Fail};

pub fn status(ctx: &Ctx, file: &Path) -> Result<Exit, Fail> {
    let dag = ctx.load_or_report(file)?;
    // Reads only: works on a cache it cannot write (the stat cache is saved if it can be).
    let cx = ctx.open_read_only()?;
    let st = cx.status(&dag);
    let study = !dag.pipeline.variants.is_empty();
    if ctx.json {
        if !study {
            print_json(&st);
        } else {
            // Each instance also says which variants hold it.
            let rows: Vec<serde_json::Value> = st
                .iter()
                .map(|s| {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["variants"] = serde_json::json!(variants_of(&dag, &s.stage));
                    v
                })
                .collect();
            print_json(&rows);
        }
        return Ok(Exit::Ok);
    }
    let width = st.iter().map(|s| s.stage.len()).max().unwrap_or(0);
    if !study {
        for s in &st {
            print_line(s, width, "");
        }
    } else {
        let all = dag.pipeline.variants.len();
        let shared: Vec<&InstanceStatus> = st
            .iter()
            .filter(|s| variants_of(&dag, &s.stage).len() == all && !is_comparison(&dag, s))
            .collect();
        if !shared.is_empty() {
            println!("shared by every variant ({}/{} fresh):", fresh(&shared), shared.len());
            for s in shared {
                print_line(s, width, "  ");
            }
        }
        for v in &dag.pipeline.variants {
            let own: Vec<&InstanceStatus> = st
                .iter()
                .filter(|s| {
                    let vs = variants_of(&dag, &s.stage);
                    vs.len() < all && vs.contains(&v.as_str())
                })
                .collect();
            let mine: Vec<&str> = dag.pipeline.variant_stages(v);
            let whole: Vec<&InstanceStatus> = st.iter().filter(|s| mine.contains(&stage_of(&dag, s))).collect();
            println!(
                "variant {v} ({}/{} fresh with what it shares):",
                fresh(&whole),
                whole.len()
            );
            for s in own {
                print_line(s, width, "  ");
            }
        }
        for s in st.iter().filter(|s| is_comparison(&dag, s)) {
            println!("comparison:");
            print_line(s, width, "  ");
        }
    }
    let all: Vec<&InstanceStatus> = st.iter().collect();
    println!("{}/{} fresh", fresh(&all), st.len());
    Ok(Exit::Ok)
}

fn print_line(s: &InstanceStatus, width: usize, indent: &str) {
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
    println!("{indent}{:width$}  {state:9}{why}", s.stage);
}

fn fresh(v: &[&InstanceStatus]) -> usize {
    v.iter().filter(|s| s.state == State::Fresh).count()
}

/// The stage of an instance (`train.x@fold2` → `train.x`).
fn stage_of<'a>(dag: &'a Dag, s: &InstanceStatus) -> &'a str {
    dag.by_id.get(&s.stage).map_or("", |n| dag.instance(*n).stage.as_str())
}

fn variants_of<'a>(dag: &'a Dag, id: &str) -> Vec<&'a str> {
    dag.by_id
        .get(id)
        .map(|n| dag.decl(*n).variants.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn is_comparison(dag: &Dag, s: &InstanceStatus) -> bool {
    dag.pipeline.comparison.as_deref() == Some(stage_of(dag, s))
}
