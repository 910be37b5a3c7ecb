//! `flow status`: fresh / stale / never-run for each instance, and why.

use std::path::Path;

use flow_engine::State;

use crate::ctx::{print_json, Ctx};
use crate::exit::{Exit, Fail};

pub fn status(ctx: &Ctx, file: &Path) -> Result<Exit, Fail> {
    let dag = ctx.load_or_report(file)?;
    // Reads only: works on a cache it cannot write (the stat cache is saved if it can be).
    let cx = ctx.open_read_only()?;
    let st = cx.status(&dag);
    if ctx.json {
        print_json(&st);
        return Ok(Exit::Ok);
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
    Ok(Exit::Ok)
}
