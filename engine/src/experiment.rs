//! The experiment a describing stage (a report) shows: the pipeline's name and every stage
//! upstream of the instance with its kind, params (what the file writes marked), environment
//! facts and the content hashes of its outputs.
//!
//! A stage opts in with [`StageConfig::describes_experiment`](crate::StageConfig). Its key
//! then includes this document (see [`crate::key`]): what a page shows is part of what it is,
//! so renaming the pipeline or editing a param that happens not to change any upstream
//! bytes still remakes the page. Everything here is a pure function of the pipeline file and
//! the upstream outputs — no dates, durations, hosts or paths, which belong to run records.

use std::collections::{BTreeMap, HashMap, HashSet};

use flow_cache::Hash;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dag::Dag;

/// See the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// The pipeline's name (`out/<name>/`).
    pub pipeline: String,
    /// The pipeline's `defaults:` (shared values such as `seed`), which stages take for params
    /// their declarations leave out.
    #[serde(default)]
    pub defaults: BTreeMap<String, Value>,
    /// The stages the instance depends on, in topological order, its own stage last.
    pub stages: Vec<ExperimentStage>,
}

/// One stage of an [`Experiment`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentStage {
    pub name: String,
    pub kind: String,
    pub version: u32,
    /// The params that enter its key ([`StageConfig::key_params`](crate::StageConfig)).
    pub params: Value,
    /// The params its declaration writes out; the others took their defaults.
    pub written: Vec<String>,
    /// Its [`StageConfig::env_facts`](crate::StageConfig) (e.g. the libtorch version).
    pub env: BTreeMap<String, String>,
    /// The output tree hash of each of its instances (`split`, `train@fold0`, …) upstream of
    /// the describing instance; empty for the describing stage itself.
    pub outputs: BTreeMap<String, String>,
}

impl Experiment {
    /// The experiment of instance `n`, given the output hashes of its upstream instances.
    pub fn of(dag: &Dag, n: NodeIndex, outputs: &HashMap<NodeIndex, Hash>) -> Experiment {
        let mut above: HashSet<NodeIndex> = HashSet::new();
        let mut todo = vec![n];
        while let Some(m) = todo.pop() {
            for u in dag.graph.neighbors_directed(m, petgraph::Direction::Incoming) {
                if above.insert(u) {
                    todo.push(u);
                }
            }
        }
        let mut stages: Vec<ExperimentStage> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for &m in dag.order.iter().filter(|m| above.contains(m) || **m == n) {
            let inst = dag.instance(m);
            let at = *index.entry(inst.stage_index).or_insert_with(|| {
                let d = dag.decl(m);
                stages.push(ExperimentStage {
                    name: d.local.clone(),
                    kind: d.kind.name.to_string(),
                    version: d.kind.version,
                    params: d.config.key_params(),
                    written: d.written.clone(),
                    env: d.config.env_facts().into_iter().collect(),
                    outputs: BTreeMap::new(),
                });
                stages.len() - 1
            });
            if m != n {
                if let Some(h) = outputs.get(&m) {
                    stages[at].outputs.insert(dag.local_id(m), h.to_hex());
                }
            }
        }
        // The describing stage last, even when a sibling fold of it sorts later.
        if let Some(own) = stages.iter().position(|s| s.name == dag.decl(n).local) {
            let s = stages.remove(own);
            stages.push(s);
        }
        Experiment {
            pipeline: dag.experiment_name(n),
            defaults: dag.pipeline.defaults.0.clone(),
            stages,
        }
    }

    /// What differs from `old`, for "why does it run": the first difference, in words.
    pub fn change_from(&self, old: &Experiment) -> Option<String> {
        if self.pipeline != old.pipeline {
            return Some(format!("pipeline name {} -> {}", old.pipeline, self.pipeline));
        }
        if self.defaults != old.defaults {
            return Some("the pipeline's defaults".into());
        }
        for s in &self.stages {
            match old.stages.iter().find(|o| o.name == s.name) {
                None => return Some(format!("stage `{}` added", s.name)),
                Some(o) if o != s => {
                    let what = if o.params != s.params || o.written != s.written {
                        "params"
                    } else if o.kind != s.kind || o.version != s.version {
                        "kind"
                    } else if o.env != s.env {
                        "environment"
                    } else {
                        "outputs"
                    };
                    return Some(format!("stage `{}` ({what})", s.name));
                }
                _ => {}
            }
        }
        old.stages
            .iter()
            .find(|o| !self.stages.iter().any(|s| s.name == o.name))
            .map(|o| format!("stage `{}` removed", o.name))
    }
}
