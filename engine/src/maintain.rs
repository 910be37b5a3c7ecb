//! Cache upkeep: `flow verify` (re-hash everything, take damaged objects out of service) and
//! `flow gc` (delete what the named pipelines can no longer reach). Both are meant to run
//! under the cache lock, so no run is publishing or reading while they change the store.
//!
//! * **verify** re-hashes every object. An object whose content no longer matches its name
//!   (edited through an `out/` hard link, bit rot) or that cannot be read is moved to
//!   `quarantine/`; every run record that needs it is then *unusable*, so the next run
//!   re-executes those instances instead of trusting them. Records that point at objects
//!   that are missing altogether are reported the same way.
//! * **gc** keeps, for every instance of the named pipelines, the record of its current key
//!   (what `flow status` computes) and of its last run; with `keep_history`, every record
//!   whose pipeline is one of them. Everything else goes: other records, their logs and
//!   resume checkpoints, objects no kept record reaches, quarantined objects.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use flow_cache::{CacheError, Hash, Store};
use serde::Serialize;

use crate::dag::Dag;
use crate::plan::{last_run_name, outputs_problem, status, LastRun, PathDigests, RunRecord};

/// A run record, by what it ran.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordRef {
    pub pipeline: String,
    pub instance: String,
    pub key: String,
}

fn rref(r: &RunRecord) -> RecordRef {
    RecordRef {
        pipeline: r.pipeline.clone(),
        instance: r.instance.clone(),
        key: r.key.clone(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BadObject {
    pub hash: String,
    /// "content does not match its hash", or the read error.
    pub problem: String,
    /// Output paths of records that use it (`train@fold2: model.safetensors`).
    pub used_by: Vec<String>,
    /// Why it could not be moved to `quarantine/` (a cache that is not writable); `null`
    /// when it was moved.
    pub quarantine_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BrokenRecord {
    #[serde(flatten)]
    pub record: RecordRef,
    pub problem: String,
}

/// What `flow verify` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyOutcome {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub records_checked: usize,
    /// Damaged objects, moved to `quarantine/`.
    pub bad_objects: Vec<BadObject>,
    /// Records that cannot be trusted any more: they will re-run.
    pub broken_records: Vec<BrokenRecord>,
    /// `runs/*.json` files that do not parse (ignored by every lookup already).
    pub unreadable_records: Vec<String>,
}

impl VerifyOutcome {
    pub fn clean(&self) -> bool {
        self.bad_objects.is_empty() && self.broken_records.is_empty() && self.unreadable_records.is_empty()
    }
}

fn all_records(store: &Store) -> Result<(Vec<RunRecord>, Vec<String>), CacheError> {
    let mut recs = Vec::new();
    let mut bad = Vec::new();
    for k in store.record_keys()? {
        match store.read_record::<RunRecord>(&k)? {
            Some(r) => recs.push(r),
            None => bad.push(k),
        }
    }
    Ok((recs, bad))
}

/// Re-hash every object; quarantine the damaged ones; list the records that lose outputs.
pub fn verify(store: &Store) -> Result<VerifyOutcome, CacheError> {
    let objects = store.list_objects()?;
    let rep = store.verify_all()?;
    let (recs, unreadable) = all_records(store)?;

    // Who uses which object.
    let mut users: BTreeMap<Hash, Vec<String>> = BTreeMap::new();
    for r in &recs {
        users
            .entry(r.output)
            .or_default()
            .push(format!("{}: (output manifest)", r.instance));
        for (path, e) in &r.tree.entries {
            users.entry(e.hash).or_default().push(format!("{}: {path}", r.instance));
        }
    }
    let mut out = VerifyOutcome {
        objects_checked: rep.checked,
        bytes_checked: objects.iter().map(|(_, n)| n).sum(),
        records_checked: recs.len(),
        unreadable_records: unreadable,
        ..Default::default()
    };
    let damaged = rep
        .corrupt
        .iter()
        .map(|h| (*h, "content does not match its hash".to_string()))
        .chain(rep.unreadable.iter().cloned());
    let mut left_in_place = HashSet::new();
    for (h, problem) in damaged {
        // A cache we may not write (read-only mount, another user's) is still verified:
        // the damage is reported, only not taken out of service.
        let quarantine_error = store.quarantine_object(&h).err().map(|e| e.to_string());
        if quarantine_error.is_some() {
            left_in_place.insert(h);
        }
        let mut used_by = users.get(&h).cloned().unwrap_or_default();
        used_by.sort();
        used_by.dedup();
        out.bad_objects.push(BadObject {
            hash: h.to_hex(),
            problem,
            used_by,
            quarantine_error,
        });
    }
    // After quarantine, every record whose outputs are not all there is broken, and so is
    // one that uses a damaged object that could not be moved.
    for r in &recs {
        let damaged_here = std::iter::once(&r.output)
            .chain(r.tree.entries.values().map(|e| &e.hash))
            .find(|h| left_in_place.contains(*h));
        if let Some(h) = damaged_here {
            out.broken_records.push(BrokenRecord {
                record: rref(r),
                problem: format!(
                    "uses damaged object {} (not quarantined: the cache is not writable)",
                    h.short()
                ),
            });
        } else if let Some(problem) = outputs_problem(store, r) {
            out.broken_records.push(BrokenRecord {
                record: rref(r),
                problem,
            });
        }
    }
    out.broken_records.sort_by(|a, b| a.record.cmp(&b.record));
    Ok(out)
}

/// What `flow gc` removed (or, dry, would remove) and kept.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcOutcome {
    pub dry_run: bool,
    pub records_kept: usize,
    pub records_removed: Vec<RecordRef>,
    pub objects_kept: usize,
    pub bytes_kept: u64,
    pub objects_removed: usize,
    pub bytes_removed: u64,
    /// Resume checkpoints of instances no kept record or current key needs.
    pub resume_dirs_removed: usize,
    pub quarantine_files_removed: usize,
}

/// The record keys the named pipelines still need: each instance's current key and the key
/// of its last run.
pub fn live_keys(dags: &[(&Dag, &PathDigests)], store: &Store) -> HashSet<String> {
    let mut keys = HashSet::new();
    for (dag, paths) in dags {
        for s in status(dag, store, paths) {
            if let Some(k) = s.key {
                keys.insert(k);
            }
        }
        for &n in &dag.order {
            let name = last_run_name(&dag.pipeline.name, &dag.instance(n).id);
            if let Ok(Some(l)) = store.read_meta::<LastRun>(&name) {
                keys.insert(l.key);
            }
        }
    }
    keys
}

/// Delete every record not in `live` (or, with `keep_pipelines`, not of those pipelines),
/// then every object no remaining record reaches. Run it under the cache lock.
pub fn gc(
    store: &Store,
    live: &HashSet<String>,
    keep_pipelines: Option<&BTreeSet<String>>,
    dry_run: bool,
) -> Result<GcOutcome, CacheError> {
    let (recs, unreadable) = all_records(store)?;
    let mut out = GcOutcome {
        dry_run,
        ..Default::default()
    };
    let mut reachable: HashSet<Hash> = HashSet::new();
    let mut removed = Vec::new();
    for r in &recs {
        let keep = live.contains(&r.key) || keep_pipelines.is_some_and(|p| p.contains(&r.pipeline));
        if keep {
            out.records_kept += 1;
            reachable.insert(r.output);
            reachable.extend(r.tree.entries.values().map(|e| e.hash));
        } else {
            removed.push(r.key.clone());
            out.records_removed.push(rref(r));
        }
    }
    out.records_removed.sort();
    // Unparsable records reach nothing and are never trusted: they go too — if the name is
    // one flow gives (a key), so that a stranger's file in runs/ stays.
    removed.extend(unreadable.iter().filter(|k| flow_cache::is_key_name(k)).cloned());
    if !dry_run {
        // Records first: an object is never gone while a record that needs it is there.
        for k in &removed {
            store.remove_record(k)?;
            let _ = std::fs::remove_file(store.log_path(k));
        }
    }
    for (h, size) in store.list_objects()? {
        if reachable.contains(&h) {
            out.objects_kept += 1;
            out.bytes_kept += size;
        } else {
            out.objects_removed += 1;
            out.bytes_removed += size;
            if !dry_run {
                store.remove_object(&h)?;
            }
        }
    }
    let resume = store.root().join("resume");
    if let Ok(rd) = std::fs::read_dir(&resume) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only checkpoint directories flow made (named by their key; never through a link).
            let is_dir = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir());
            if is_dir && flow_cache::is_key_name(&name) && !live.contains(&name) {
                out.resume_dirs_removed += 1;
                if !dry_run {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    for (p, size) in store.quarantined()? {
        out.quarantine_files_removed += 1;
        out.bytes_removed += size;
        if !dry_run {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(out)
}
