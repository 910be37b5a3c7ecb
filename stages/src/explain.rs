//! `Explain`: class-activation maps of each fold's model on the items it never trained on.
//!
//! ```ron
//! "explain": Explain(models: "train", data: "preprocess", split: "split"),
//! // all params, with their defaults:
//! "explain": Explain(models: "train", data: "preprocess", split: "split",
//!     methods: [GradCam, GradCamPlusPlus, MultiScale], layer: None, target: Fake,
//!     per_cell: 12, hard: 12, threshold: 0.5, items: []),
//! ```
//!
//! One instance per fold. Instance k loads fold k's model and explains fold k's test items
//! (out of fold): which ones, deterministically ([`select`]):
//! * `per_cell` per outcome (TP / FP / FN / TN at `threshold` on the model's P(fake)) × source,
//!   in the order of a hash of the item name (a fixed pseudo-random sample, not the first
//!   names);
//! * the `hard` most confident mistakes (largest |P(fake) − threshold| among FP and FN);
//! * every item of `items` held out in this fold (an item no fold holds is an error, by name).
//!
//! Methods (`flow-worker`'s `cam.rs`, checked against pytorch-grad-cam): `GradCam`,
//! `GradCamPlusPlus` at `layer` (default: the deepest the model declares, see
//! `Model::cam_layers`), `MultiScale` (seed 001: Grad-CAMs at strides 8/16/32 fused
//! 0.3/0.3/0.4 on the stride-8 grid), `Attention` (Spotter's own spatial attention).
//! `target: Fake` explains the fake logit ("where is the evidence of a fake"); `Predicted`
//! the predicted class (pytorch-grad-cam's default).
//!
//! Localisation: every held-out item with a manipulation mask (not only the gallery) gets each
//! method's energy-in-mask and pointing-game hit (`ports::explanations`), summarised per method
//! × source next to their chance levels.

use flow_engine::{
    key_params_of, Code, ConfigProblem, ExecCtx, FanOut, Input, PortType, Resources, StageConfig, StageError, StageKind,
};
use serde::{Deserialize, Serialize};

use crate::model::{per_fold, torch_env, torch_resources, Checks, Device, Model};
use crate::ports::explanations::Outcome;
use crate::ports::{EXPLANATIONS, MODELS, SPLIT, TENSORS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CamMethod {
    GradCam,
    GradCamPlusPlus,
    MultiScale,
    Attention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CamTarget {
    /// The fake logit, whatever the prediction.
    #[default]
    Fake,
    /// The predicted class: the logit for predicted fakes, its negative for predicted reals.
    Predicted,
}

/// The most items per cell, hard examples, and named items a stage may ask for.
pub const MAX_PER_CELL: u32 = 1000;
pub const MAX_BATCH: usize = 4096;

fn d_methods() -> Vec<CamMethod> {
    vec![CamMethod::GradCam, CamMethod::GradCamPlusPlus, CamMethod::MultiScale]
}
fn d_twelve() -> u32 {
    12
}
fn d_threshold() -> f64 {
    0.5
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    /// A per-fold model stage (Train, Retrain).
    pub models: String,
    pub data: String,
    pub split: String,
    #[serde(default = "d_methods")]
    pub methods: Vec<CamMethod>,
    /// Grad-CAM's layer (one of the model's `cam_layers`); default the deepest.
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub target: CamTarget,
    #[serde(default = "d_twelve")]
    pub per_cell: u32,
    #[serde(default = "d_twelve")]
    pub hard: u32,
    #[serde(default = "d_threshold")]
    pub threshold: f64,
    /// Items to explain besides the chosen ones (each by the fold model that held it out).
    #[serde(default)]
    pub items: Vec<String>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub device: Device,
}

inventory::submit! { crate::Kind(|| StageKind::new::<Explain>("Explain", 1, "Grad-CAM maps, overlays and localisation per fold (libtorch)")) }

impl Explain {
    /// Problems of the params against the model the `models` stage trains.
    pub fn model_problems(&self, model: &Model) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let Some(layers) = model.cam_layers() else {
            v.push((
                "models:",
                format!(
                    "{} declares no Grad-CAM layers (flow cannot see inside it); explain a model that does (SimpleCnn, ResNet, EfficientNet, ConvNeXt, MobileNetV3/V4, ViT, Radar, Spotter)",
                    model_kind(model)
                ),
            ));
            return v;
        };
        if let Some(l) = &self.layer {
            if !layers.contains(l) {
                v.push((
                    "layer:",
                    format!(
                        "{} has no Grad-CAM layer `{l}`; its layers: {}",
                        model_kind(model),
                        layers.join(", ")
                    ),
                ));
            }
        }
        if self.methods.contains(&CamMethod::MultiScale) && layers.len() < 3 {
            v.push((
                "methods:",
                format!(
                    "MultiScale fuses three layers; {} has {} ({})",
                    model_kind(model),
                    layers.len(),
                    layers.join(", ")
                ),
            ));
        }
        if self.methods.contains(&CamMethod::Attention) && !matches!(model, Model::Spotter(s) if s.attention) {
            v.push((
                "methods:",
                format!(
                    "Attention maps need Spotter(attention: true); the model is {}",
                    model_kind(model)
                ),
            ));
        }
        v
    }

    /// The index of the Grad-CAM layer among `layers`.
    pub fn layer_index(&self, layers: &[String]) -> Result<usize, String> {
        match &self.layer {
            None => Ok(layers.len().saturating_sub(1)),
            Some(l) => layers
                .iter()
                .position(|x| x == l)
                .ok_or_else(|| format!("no Grad-CAM layer `{l}`; the model's layers: {}", layers.join(", "))),
        }
    }
}

fn model_kind(m: &Model) -> String {
    let s = format!("{m:?}");
    s.split(['(', ' ', '{']).next().unwrap_or(&s).to_string()
}

impl StageConfig for Explain {
    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("models", self.models.clone(), &[MODELS]),
            Input::stage("data", self.data.clone(), &[TENSORS]),
            Input::stage("split", self.split.clone(), &[SPLIT]),
        ]
    }
    fn output(&self) -> PortType {
        EXPLANATIONS
    }
    fn fan_out(&self) -> FanOut {
        per_fold(&self.split)
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["models", "data", "split", "device", "batch_size"])
    }
    fn env_facts(&self) -> Vec<(String, String)> {
        torch_env()
    }
    fn resources(&self) -> Resources {
        torch_resources(self.device)
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut c = Checks::new();
        c.int("per_cell", u64::from(self.per_cell), 0, u64::from(MAX_PER_CELL));
        c.int("hard", u64::from(self.hard), 0, u64::from(MAX_PER_CELL));
        c.float("threshold", self.threshold, 0.0, 1.0, true);
        if let Some(b) = self.batch_size {
            c.int("batch_size", b as u64, 1, MAX_BATCH as u64);
        }
        let mut v = c.0;
        let mut problem = |needle: &str, message: String| {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message,
                needle: Some(needle.into()),
                help: None,
            })
        };
        if self.methods.is_empty() {
            problem(
                "methods:",
                "`methods` is empty; name at least one of GradCam, GradCamPlusPlus, MultiScale, Attention".into(),
            );
        }
        if let Some(m) = first_repeat(&self.methods) {
            problem("methods:", format!("`methods` lists {m:?} twice"));
        }
        if let Some(i) = first_repeat(&self.items) {
            problem("items:", format!("`items` lists `{i}` twice"));
        }
        if self.items.len() > 100_000 {
            problem(
                "items:",
                format!("`items` names {} items; at most 100000", self.items.len()),
            );
        }
        v
    }
    fn validate_inputs(&self, inputs: &[(String, serde_json::Value)]) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        for (_, facts) in inputs.iter().filter(|(port, _)| port == "models") {
            let Ok(model) = serde_json::from_value::<Model>(facts["model"].clone()) else {
                continue;
            };
            for (needle, message) in self.model_problems(&model) {
                v.push(ConfigProblem {
                    code: Code::InvalidValue,
                    message: format!("{message} (the model of `{}`)", self.models),
                    needle: Some(needle.into()),
                    help: None,
                });
            }
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        crate::worker::run_in_worker("Explain", self, ctx)
    }
}

fn first_repeat<T: PartialEq>(v: &[T]) -> Option<&T> {
    v.iter().enumerate().find(|(i, x)| v[..*i].contains(x)).map(|(_, x)| x)
}

/// A held-out item the fold model scored.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub item: String,
    pub label: u8,
    pub source: String,
    pub score: f64,
}

/// Why an item was chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Why {
    pub cell: bool,
    pub hard: bool,
    pub requested: bool,
}

/// The items to explain, as indices into `cands` with why: cells first (outcome, then source,
/// each in hash order), then the hard examples, then the requested ones; an item chosen
/// twice appears once with both reasons. Deterministic in its inputs.
pub fn select(cands: &[Candidate], p: &Explain) -> Vec<(usize, Why)> {
    let mut out: Vec<(usize, Why)> = Vec::new();
    let mut at: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut add = |i: usize, f: &dyn Fn(&mut Why)| match at.get(&i) {
        Some(&k) => f(&mut out[k].1),
        None => {
            let mut w = Why::default();
            f(&mut w);
            at.insert(i, out.len());
            out.push((i, w));
        }
    };
    let outcome = |c: &Candidate| Outcome::of(c.label, c.score, p.threshold);
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by_key(|&i| {
        let c = &cands[i];
        (
            outcome(c),
            c.source.clone(),
            blake3::hash(c.item.as_bytes()).to_hex().to_string(),
        )
    });
    let mut taken = 0usize;
    let mut cell: Option<(Outcome, &str)> = None;
    for &i in &order {
        let c = &cands[i];
        let here = (outcome(c), c.source.as_str());
        if cell != Some(here) {
            cell = Some(here);
            taken = 0;
        }
        if taken < p.per_cell as usize {
            add(i, &|w| w.cell = true);
            taken += 1;
        }
    }
    let mut mistakes: Vec<usize> = (0..cands.len()).filter(|&i| outcome(&cands[i]).is_mistake()).collect();
    mistakes.sort_by(|&a, &b| {
        let conf = |i: usize| (cands[i].score - p.threshold).abs();
        conf(b)
            .total_cmp(&conf(a))
            .then_with(|| cands[a].item.cmp(&cands[b].item))
    });
    for &i in mistakes.iter().take(p.hard as usize) {
        add(i, &|w| w.hard = true);
    }
    for name in &p.items {
        if let Some(i) = cands.iter().position(|c| &c.item == name) {
            add(i, &|w| w.requested = true);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(per_cell: u32, hard: u32) -> Explain {
        ron::from_str::<Explain>(&format!(
            "(models: \"train\", data: \"p\", split: \"s\", per_cell: {per_cell}, hard: {hard})"
        ))
        .unwrap()
    }

    fn cands() -> Vec<Candidate> {
        let mut v = Vec::new();
        for i in 0..40u32 {
            let label = (i % 2) as u8;
            let source = if label == 0 {
                "real"
            } else if i % 4 == 1 {
                "a"
            } else {
                "b"
            };
            v.push(Candidate {
                item: format!("img_{i:03}"),
                label,
                source: source.into(),
                score: f64::from((i * 37) % 100) / 100.0,
            });
        }
        v
    }

    #[test]
    fn selection_fills_each_cell_and_adds_the_most_confident_mistakes() {
        let c = cands();
        let p = params(2, 3);
        let s = select(&c, &p);
        let mut cells = std::collections::BTreeMap::new();
        for (i, w) in &s {
            if w.cell {
                *cells
                    .entry((Outcome::of(c[*i].label, c[*i].score, 0.5), c[*i].source.clone()))
                    .or_insert(0) += 1;
            }
        }
        assert!(cells.values().all(|&n| n == 2), "{cells:?}");
        assert_eq!(cells.len(), 6, "TP/FN × a,b and FP/TN × real: {cells:?}");
        let hard: Vec<f64> = s.iter().filter(|(_, w)| w.hard).map(|(i, _)| c[*i].score).collect();
        assert_eq!(hard.len(), 3);
        let worst = c
            .iter()
            .filter(|x| Outcome::of(x.label, x.score, 0.5).is_mistake())
            .map(|x| (x.score - 0.5).abs())
            .fold(0.0f64, f64::max);
        assert!(hard.iter().any(|s| ((s - 0.5).abs() - worst).abs() < 1e-12));
        // Deterministic, and independent of the candidates' order.
        let mut r = c.clone();
        r.reverse();
        let names = |c: &[Candidate], s: &[(usize, Why)]| {
            let mut v: Vec<String> = s.iter().map(|(i, _)| c[*i].item.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&c, &s), names(&r, &select(&r, &p)));
    }

    #[test]
    fn an_item_chosen_twice_appears_once_with_both_reasons() {
        let c = cands();
        let mut p = params(100, 100);
        p.items = vec![c[3].item.clone()];
        let s = select(&c, &p);
        assert_eq!(s.len(), c.len());
        let w = s.iter().find(|(i, _)| *i == 3).unwrap().1;
        assert!(w.cell && w.requested);
    }

    #[test]
    fn models_without_layers_and_unknown_layers_are_problems() {
        let p = params(1, 1);
        assert!(p.model_problems(&Model::MobileNetV2)[0]
            .1
            .contains("declares no Grad-CAM layers"));
        let mut q = p.clone();
        q.layer = Some("layer9".into());
        let e = q.model_problems(&Model::ResNet18);
        assert!(
            e[0].1.contains("no Grad-CAM layer `layer9`") && e[0].1.contains("layer4"),
            "{e:?}"
        );
        let mut v = p.clone();
        v.methods = vec![CamMethod::MultiScale];
        assert!(v.model_problems(&Model::VitS16)[0].1.contains("three layers"));
        v.methods = vec![CamMethod::Attention];
        assert!(v.model_problems(&Model::ResNet18)[0].1.contains("Spotter"));
        assert!(p.model_problems(&Model::ResNet18).is_empty());
    }
}
