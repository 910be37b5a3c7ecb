//! Run facts: what is true of how results were computed but is not part of them — when
//! each instance ran and for how long, on which host and device, by which flow, from which
//! git commit of the workspace and which bytes of the pipeline file.
//!
//! They are recorded per instance in its run record (never in a key or an output: see
//! [`crate::key`]), and after each run collected into `out/<pipeline>/run.json` (and
//! `run.js`, the same document for a report page opened from `out/`, which cannot read a
//! JSON file over `file://`). The collection is a function of the records alone, so a run
//! that reuses everything rewrites nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::dag::Dag;
use crate::plan::{last_run_name, LastRun, RunRecord};

/// The workspace's git state when an instance ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GitFacts {
    pub commit: String,
    /// Tracked files differ from the commit (untracked files are not looked at: a dataset
    /// directory may hold millions).
    pub dirty: bool,
}

/// The pipeline file a run read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileFacts {
    /// As the user named it.
    pub path: String,
    pub blake3: String,
}

/// Gathered once per run, stored in every record the run writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFacts {
    pub git: Option<GitFacts>,
    pub pipeline_file: Option<FileFacts>,
    /// The `--set` overrides the run applied to the file (its hash is of the file as it is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
}

impl RunFacts {
    /// The git state of `workspace` (`None` outside a work tree or without git) and the
    /// pipeline file's digest.
    pub fn gather(workspace: &Path, pipeline_file: &Path, set: &[String]) -> RunFacts {
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let git = git(&["rev-parse", "--verify", "-q", "HEAD"])
            .filter(|c| !c.is_empty())
            .map(|commit| GitFacts {
                commit,
                dirty: git(&["status", "--porcelain", "--untracked-files=no"]).is_none_or(|s| !s.is_empty()),
            });
        let pipeline_file = std::fs::read(pipeline_file).ok().map(|bytes| FileFacts {
            path: pipeline_file.display().to_string(),
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        });
        RunFacts {
            git,
            pipeline_file,
            set: set.to_vec(),
        }
    }
}

/// `2026-12-02T03:10:00Z` of unix seconds.
pub fn utc(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `out/<pipeline>/run.json`: the last-run record of every instance of the pipeline (what its
/// views show), per instance and summed per stage. Instances never run are listed as such;
/// `stale_views` (instance → why) marks those whose view under `out/` still shows an older
/// result, so a page there does not take these facts for its own.
pub fn run_facts_doc(
    dag: &Dag,
    store: &flow_cache::Store,
    stale_views: &std::collections::BTreeMap<String, String>,
) -> Value {
    let mut instances = Vec::new();
    let mut stages: Vec<(String, usize, f64, usize)> = Vec::new();
    for &n in &dag.order {
        let inst = dag.instance(n);
        let rec: Option<RunRecord> = store
            .read_meta::<LastRun>(&last_run_name(&dag.pipeline.name, &inst.id))
            .ok()
            .flatten()
            .and_then(|l| store.read_record::<RunRecord>(&l.key).ok().flatten());
        let at = match stages.iter().position(|s| s.0 == inst.stage) {
            Some(i) => i,
            None => {
                stages.push((inst.stage.clone(), 0, 0.0, 0));
                stages.len() - 1
            }
        };
        stages[at].1 += 1;
        // In a study: which variant's pipeline it belongs to, under which name there (a
        // variant's report finds its own rows by these).
        let study = |mut v: Value| {
            if !dag.pipeline.variants.is_empty() {
                let d = dag.decl(n);
                v["local"] = json!(d.local);
                v["experiment"] = json!(dag.experiment_name(n));
                v["variants"] = json!(d.variants);
            }
            v
        };
        let Some(r) = rec else {
            instances.push(study(json!({"id": inst.id, "stage": inst.stage, "ran": false})));
            continue;
        };
        stages[at].2 += r.duration_s;
        stages[at].3 += 1;
        let m = |k: &str| r.meta.get(k).cloned().unwrap_or(Value::Null);
        instances.push(study(json!({
            "id": inst.id,
            "stage": inst.stage,
            "ran": true,
            "key": r.key,
            "started": utc(r.started_unix),
            "started_unix": r.started_unix,
            "seconds": (r.duration_s * 1000.0).round() / 1000.0,
            "host": r.host,
            "flow_version": r.flow_version,
            "git": r.facts.git,
            "pipeline_file": r.facts.pipeline_file,
            "set": r.facts.set,
            "device": m("device"),
            "threads": m("threads"),
            "view_not_updated": stale_views.get(&inst.id),
        })));
    }
    json!({
        "pipeline": dag.pipeline.name,
        "what": "when and how each result of this pipeline's out/ was computed (run records; not part of any result)",
        "stages": stages.iter().map(|(s, n, secs, ran)| json!({
            "stage": s, "instances": n, "ran": ran, "seconds": (secs * 1000.0).round() / 1000.0,
        })).collect::<Vec<_>>(),
        "instances": instances,
    })
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_180_645.5), "2026-12-02T03:04:05Z");
    }
}
