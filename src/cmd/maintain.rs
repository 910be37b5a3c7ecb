//! `flow verify` (re-hash the cache, quarantine damage) and `flow gc` (remove what the named
//! pipelines no longer reach).

use std::path::PathBuf;

use crate::ctx::{human_size, on_lock_event, print_json, Ctx};
use crate::exit::{Exit, Fail};

pub fn verify(ctx: &Ctx) -> Result<Exit, Fail> {
    // A cache this user cannot write is verified all the same (damage is reported, only not
    // moved to quarantine); the lock keeps runs from publishing meanwhile.
    let store = ctx.open_read_only()?.store;
    if !store.root().join("objects").is_dir() {
        return Err(Fail::cache(format!("no cache at {}", store.root().display())));
    }
    let _lock = store.lock_for_reading(&mut on_lock_event).map_err(Fail::cache)?;
    let out = flow_engine::maintain::verify(&store).map_err(Fail::cache)?;
    if ctx.json {
        print_json(&out);
    } else {
        println!(
            "verified {} objects ({}) and {} run records in {}",
            out.objects_checked,
            human_size(out.bytes_checked),
            out.records_checked,
            store.root().display()
        );
        let stuck = out.bad_objects.iter().filter(|b| b.quarantine_error.is_some()).count();
        if !out.bad_objects.is_empty() {
            let moved = if stuck == 0 {
                format!(", moved to {}", store.root().join("quarantine").display())
            } else {
                format!(", {stuck} of them NOT moved to quarantine")
            };
            println!("{} damaged object(s){moved}:", out.bad_objects.len());
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
        if stuck > 0 {
            println!(
                "a damaged object left in place is still trusted by `flow run`: run `flow verify` as a user who can write {}",
                store.root().display()
            );
        }
        if !out.broken_records.is_empty() {
            let when = if stuck == 0 {
                "will re-run on the next `flow run`"
            } else {
                "will re-run once their damaged objects are quarantined"
            };
            println!("{when} (outputs damaged or missing):");
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
    Ok(if out.clean() { Exit::Ok } else { Exit::Failed })
}

pub fn gc(ctx: &Ctx, files: &[PathBuf], dry_run: bool, keep_history: bool) -> Result<Exit, Fail> {
    let mut dags = Vec::new();
    for f in files {
        dags.push(ctx.load_or_report(f)?);
    }
    // No run may publish or read while records and objects go.
    let (cx, _lock) = ctx.open_locked()?;
    let store = &cx.store;
    let paths = cx.digest(&dags.iter().collect::<Vec<_>>());
    let pairs: Vec<_> = dags.iter().zip(paths.iter()).collect();
    let live = flow_engine::maintain::live_keys(&pairs, store);
    let names: std::collections::BTreeSet<String> = dags.iter().map(|d| d.pipeline.name.clone()).collect();
    let out = flow_engine::maintain::gc(store, &live, keep_history.then_some(&names), dry_run).map_err(Fail::cache)?;
    if ctx.json {
        print_json(&out);
        return Ok(Exit::Ok);
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
    Ok(Exit::Ok)
}
