//! `StudyReport`: a study's comparison of its variants ([`flow_engine::study`]), cached like
//! any stage. The user writes the kind and what to read of each variant,
//!
//! ```ron
//! compare: StudyReport(predictions: "infer", split: "split"),
//! ```
//!
//! and the study adds `baseline` and `variants` (each variant's name, group, seed, changes
//! and the map from the base's stage names to its own), so the stage reads `infer` and
//! `split` *of every variant*. Output: `index.html` (self-contained), `study.md`,
//! `study.json`, `study.tex` (booktabs) and `plots/` — the numbers of
//! [`crate::report::compare`], which `flow compare` prints too.

use std::collections::{BTreeMap, BTreeSet};

use flow_engine::{Code, ConfigProblem, ExecCtx, Input, PortType, StageConfig, StageError, StageKind};
use serde::{Deserialize, Serialize};

use crate::ports::split::read_folds;
use crate::ports::{MODELS, PREDICTIONS, SPLIT, STUDY};
use crate::report::compare::{self, Experiment, Options};
use crate::report::page;
use crate::report::stage::Columns;

fn d_bootstrap() -> usize {
    1000
}
fn d_gap() -> f64 {
    0.05
}
fn d_level() -> f64 {
    0.95
}

/// One variant as the study passes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyVariant {
    pub name: String,
    pub group: String,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub changes: Vec<String>,
    /// Base stage name → this variant's stage (references: never in the key).
    #[serde(default)]
    pub stages: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyReport {
    /// The base's EnsembleInfer stage (its out-of-fold predictions).
    pub predictions: String,
    /// The base's Split stage: held-out sources, and which variants share folds.
    #[serde(default)]
    pub split: Option<String>,
    /// The base's Train/Retrain stage: each variant's parameter count (of its fold-0 weights)
    /// goes in the table and, when variants differ in it, an AUC-vs-parameters plot.
    #[serde(default)]
    pub models: Option<String>,
    /// Bootstrap resamples for CIs and unpaired comparisons.
    #[serde(default = "d_bootstrap")]
    pub bootstrap: usize,
    /// In-source minus held-out-source AUC above this is flagged.
    #[serde(default = "d_gap")]
    pub holdout_gap: f64,
    #[serde(default = "d_level")]
    pub level: f64,
    /// Filled in by the study: its name, its baseline group, its variants.
    #[serde(default)]
    pub study: String,
    #[serde(default)]
    pub baseline: String,
    #[serde(default)]
    pub variants: Vec<StudyVariant>,
}

inventory::submit! { crate::Kind(|| StageKind::new::<StudyReport>("StudyReport", 1, "a study's variants against its baseline: index.html, study.md, study.json, study.tex")) }

impl StudyReport {
    fn port(what: &str, v: &StudyVariant) -> String {
        format!("{what}[{}]", v.name)
    }
}

impl StageConfig for StudyReport {
    fn inputs(&self) -> Vec<Input> {
        let mut out = Vec::new();
        for v in &self.variants {
            if let Some(s) = v.stages.get(&self.predictions) {
                out.push(Input::stage(Self::port("predictions", v), s.clone(), &[PREDICTIONS]));
            }
            if let Some(s) = self.split.as_ref().and_then(|s| v.stages.get(s)) {
                out.push(Input::stage(Self::port("split", v), s.clone(), &[SPLIT]));
            }
            if let Some(s) = self.models.as_ref().and_then(|s| v.stages.get(s)) {
                out.push(Input::stage(Self::port("models", v), s.clone(), &[MODELS]));
            }
        }
        out
    }
    fn output(&self) -> PortType {
        STUDY
    }
    fn key_params(&self) -> serde_json::Value {
        let mut j = flow_engine::key_params_of(self, &["predictions", "split", "models"]);
        for v in j["variants"].as_array_mut().into_iter().flatten() {
            if let Some(o) = v.as_object_mut() {
                o.remove("stages");
            }
        }
        j
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        let p = |m: String, needle: Option<String>| ConfigProblem {
            code: Code::MissingReference,
            message: m,
            needle,
            help: None,
        };
        if self.variants.is_empty() {
            v.push(p(
                "a StudyReport is made by a study (`compare:` of a `Study(…)` file), which names its variants".into(),
                None,
            ));
        }
        for (what, name) in [
            ("predictions", Some(&self.predictions)),
            ("split", self.split.as_ref()),
            ("models", self.models.as_ref()),
        ] {
            if let Some(n) = name {
                if self.variants.first().is_some_and(|x| !x.stages.contains_key(n)) {
                    v.push(p(
                        format!("`{what}: \"{n}\"` is not a stage of the base pipeline"),
                        Some(n.clone()),
                    ));
                }
            }
        }
        let mut c = crate::model::Checks::new();
        c.int(
            "bootstrap",
            self.bootstrap as u64,
            0,
            crate::report::stage::MAX_BOOTSTRAP as u64,
        );
        v.extend(c.0);
        if !(0.0..1.0).contains(&self.holdout_gap) {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: format!("`holdout_gap` {} is an AUC difference in [0, 1)", self.holdout_gap),
                needle: Some("holdout_gap:".into()),
                help: None,
            });
        }
        if !(0.5..1.0).contains(&self.level) {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: format!("`level` {} must be in [0.5, 1)", self.level),
                needle: Some("level:".into()),
                help: None,
            });
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let mut exps = Vec::new();
        let mut provenance = Vec::new();
        for (k, v) in self.variants.iter().enumerate() {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            (ctx.progress)(k as f64 / self.variants.len() as f64, &format!("reading {}", v.name));
            let port = Self::port("predictions", v);
            let input = ctx
                .inputs_of(&port)
                .next()
                .ok_or_else(|| StageError::msg(format!("no predictions of variant `{}`", v.name)))?;
            let predictions = Columns::read(&input.dir)?;
            let mut held_out = BTreeSet::new();
            let split_port = Self::port("split", v);
            let split = ctx.inputs_of(&split_port).next();
            provenance.push(serde_json::json!({
                "variant": v.name,
                "predictions": input.tree.hash().to_hex(),
                "split": split.map(|s| s.tree.hash().to_hex()),
            }));
            if let Some(s) = split {
                for r in read_folds(&s.dir).map_err(StageError::msg)? {
                    if r.holdout == 1 && r.label == 1 {
                        held_out.insert(r.item);
                    }
                }
            }
            // Fold 0's weights: every fold of a variant has the same architecture.
            let parameters = ctx
                .inputs_of(&Self::port("models", v))
                .next()
                .map(|m| crate::ports::models::parameter_count(&m.dir).map_err(StageError::msg))
                .transpose()?;
            exps.push(Experiment {
                name: v.name.clone(),
                group: v.group.clone(),
                seed: v.seed,
                predictions,
                changes: v.changes.clone(),
                held_out,
                parameters,
            });
        }
        (ctx.progress)(0.9, "comparing");
        let o = Options {
            bootstrap: self.bootstrap,
            seed: 0,
            holdout_gap: self.holdout_gap,
            level: self.level,
        };
        let mut c = compare::compare(&exps, &self.baseline, &o).map_err(StageError::msg)?;
        c["study"] = serde_json::json!(self.study);
        c["provenance"] = serde_json::json!(provenance);
        let figures = compare::figures(&c).map_err(|e| StageError::msg(e.to_string()))?;
        let doc = compare::document(
            &c,
            &format!("Study {}: variants against {}", self.study, self.baseline),
            figures,
        );
        let out = ctx.out_dir;
        let w = |name: &str, bytes: &[u8]| -> Result<(), StageError> {
            let p = out.join(name);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, bytes).map_err(StageError::from)
        };
        w("study.json", serde_json::to_string_pretty(&c).expect("json").as_bytes())?;
        w("study.md", page::render_md(&doc).as_bytes())?;
        w("study.tex", compare::latex(&c).as_bytes())?;
        w("index.html", page::render_html(&doc, "").as_bytes())?;
        for f in &doc.figures {
            w(&format!("plots/{}.svg", f.stem), f.plot.svg.as_bytes())?;
            w(&format!("plots/{}.png", f.stem), &f.plot.png)?;
        }
        Ok(())
    }
}
