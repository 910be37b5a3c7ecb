//! Studies: one file that runs many variants of a base pipeline, and compares them.
//!
//! ```ron
//! Study(
//!     name: "phase2",
//!     base: "../../pipelines/full.ron",           // relative to this file
//!     baseline: "original",                       // default: the first variant
//!     variants: {
//!         "original": {},
//!         "real_norm": {"preprocess.normalize": RealOnly},
//!         "no_gan": {"split.holdout": Holdout(sources: ["gan_upsample"])},
//!     },
//!     grid: {"train.lr": [1e-3, 3e-3]},            // optional: every variant × every point
//!     seeds: [1, 2, 3],                           // optional: every variant × grid point × seed
//!     compare: StudyReport(predictions: "infer", split: "split"),
//! )
//! ```
//!
//! **Expansion.** Each variant is the base with its overrides applied exactly as `--set` applies
//! them ([`crate::overrides`]): to the text of the file that declares the stage, before parsing.
//! So a variant *is* the pipeline its edited file would be — the same typed params, errors and
//! keys — and shares cache with an `extends` file or a `--set` run that says the same. A grid
//! point adds `stage.param=value` for each of its params; a seed sets the seed param
//! ([`crate::StageConfig::seed_param`]) of the stages that fit models (or of `seed_stages`),
//! never of a split unless asked, so the folds of every seed are the same and pair.
//!
//! **Merging.** The variants' DAGs become one: a stage of one variant *is* a stage already
//! taken from an earlier variant when kind, version, key params, env facts, instance count,
//! workspace paths and (recursively) producers are all equal — then their keys are equal on
//! every run, so the stage runs once and every variant reads it. A stage that describes its
//! experiment (a report) is never merged: its page names its variant. A stage held by every
//! variant keeps its name (`ingest`); any other is named after the first variant holding it
//! (`train.real_norm`, instances `train.real_norm@fold2`, outputs in
//! `out/<study>/train.real_norm/fold2/`). While it executes, a stage sees the names of its
//! own pipeline (`train@fold2`), so what it writes does not depend on the study around it.
//!
//! **Comparison.** `compare:` names a stage kind; the study appends to its params
//! `baseline: "…"` and `variants: [(name, group, seed, changes, stages), …]`, where `stages`
//! maps every stage name of the base to that variant's stage, and adds it as the stage
//! `study`, which reads what it names of every variant.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use ron::value::RawValue;
use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;

use crate::dag::{build_dag, stable_toposort, stage_problem, Dag, Instance};
use crate::diag::{did_you_mean, Code, Diagnostic, SourceFile};
use crate::overrides::Override;
use crate::spec::{find_string_lit, load_pipeline_with, Pipeline, StageDecl};
use crate::stage::{FanOut, InputSource, PortType, Registry};

/// The most instances a study may expand to (checked before anything is built).
pub const MAX_STUDY_INSTANCES: usize = 10_000;

/// Whether `text` holds a study (its first value is `Study(…)`) rather than a pipeline.
pub fn is_study(text: &str) -> bool {
    let mut i = 0;
    while i < text.len() {
        if let Some(j) = crate::ron_text::skip_literal(text, i).filter(|_| text.as_bytes()[i] == b'/') {
            i = j;
            continue;
        }
        if text.as_bytes()[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        return rest.starts_with("Study") && rest[5..].trim_start().starts_with('(');
    }
    false
}

/// A map read in file order; a key written twice is an error (serde's maps keep the last).
struct Ordered<V>(Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

const TWICE: &str = "is listed twice";

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of names, e.g. { \"name\": … }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<V>, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == k) {
                        return Err(de::Error::custom(format!("`{k}` {TWICE}")));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(rename = "Study", deny_unknown_fields)]
struct RawStudy {
    name: String,
    base: String,
    #[serde(default)]
    baseline: Option<String>,
    #[serde(default)]
    variants: Ordered<Ordered<Box<RawValue>>>,
    #[serde(default)]
    grid: Ordered<Vec<Box<RawValue>>>,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    seed_stages: Option<Vec<String>>,
    /// Every variant must keep the baseline's split, so that each comparison pairs by fold.
    #[serde(default)]
    paired: bool,
    #[serde(default)]
    compare: Option<Box<RawValue>>,
}

/// One override of a variant, with where the study file writes it.
#[derive(Clone, Debug)]
struct Change {
    set: Override,
    span: (usize, usize),
}

/// One expanded variant: a pipeline of the study.
#[derive(Clone, Debug)]
pub struct Variant {
    /// `real_norm`, `lr=1e-3,size=32`, `real_norm,seed=2`.
    pub name: String,
    /// The name without its seed: what the comparison aggregates seeds over.
    pub group: String,
    pub seed: Option<u64>,
    changes: Vec<Change>,
}

impl Variant {
    /// Its overrides as `stage.param=value`.
    pub fn changes(&self) -> Vec<String> {
        self.changes.iter().map(|c| c.set.arg.clone()).collect()
    }
}

/// Load a study file into one DAG (see the module doc). `set`: `--set` overrides for every
/// variant, applied before the variant's own.
pub fn load_study(path: &Path, registry: &Registry, set: &[Override]) -> Result<Dag, Vec<Diagnostic>> {
    let src = crate::spec::read_source(path, path)?;
    let raw: RawStudy = crate::spec::ron_options().from_str(&src.text).map_err(|e| {
        let mut d = crate::spec::ron_diagnostic(&src, &e);
        if let Some(k) = d.message.split('`').nth(1).filter(|_| d.message.contains(TWICE)) {
            // RON stops after the second value: point at the second key.
            let first = find_string_lit(&src.text, k, 0);
            if let Some(sp) = first.and_then(|f| find_string_lit(&src.text, k, f.0 + f.1)) {
                d = Diagnostic::at(Code::InvalidValue, &src, sp, d.message.clone()).label("listed again here");
            }
        }
        vec![d]
    })?;
    let mut diags = Vec::new();
    if let Err(m) = crate::spec::check_pipeline_name(&raw.name) {
        diags.push(Diagnostic::at(
            Code::InvalidValue,
            &src,
            crate::spec::field_value_span(&src.text, "name"),
            m,
        ));
    }
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&raw.base);
    let base_span = find_string_lit(&src.text, &raw.base, 0).unwrap_or((0, 0));
    let base = match load_pipeline_with(&base_path, registry, set).and_then(build_dag) {
        Ok(b) => b,
        Err(mut d) => {
            let (io, rest): (Vec<Diagnostic>, Vec<Diagnostic>) = d.drain(..).partition(|d| d.code == Code::Io);
            let mut head = Diagnostic::at(
                Code::Extends,
                &src,
                base_span,
                format!("cannot load `{}`, the base of this study", raw.base),
            )
            .label("the base");
            if let Some(e) = io.first() {
                head = head.help(e.message.clone());
            }
            diags.push(head);
            diags.extend(rest);
            return Err(diags);
        }
    };
    let variants = expand(&raw, &src, &base, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut dags = Vec::new();
    for v in &variants {
        let mut all: Vec<Override> = set.to_vec();
        all.extend(v.changes.iter().map(|c| c.set.clone()));
        match load_pipeline_with(&base_path, registry, &all).and_then(build_dag) {
            Ok(d) => dags.push(d),
            Err(ds) => diags.extend(ds.into_iter().map(|d| variant_problem(&src, v, d))),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut dag = merge(&raw.name, path, &variants, dags);
    let baseline = raw.baseline.clone().unwrap_or_else(|| variants[0].group.clone());
    if raw.paired {
        let d = unpaired_splits(&dag, &src, &variants, &baseline);
        if !d.is_empty() {
            return Err(d);
        }
    }
    if let Some(cmp) = &raw.compare {
        add_comparison(&mut dag, &src, cmp.get_ron(), &baseline, &variants, registry)?;
    }
    Ok(dag)
}

/// In a paired study every variant must read the baseline's split (the same stage after
/// merging): an override upstream of it (another dataset) changes the folds as surely as one
/// of the split itself.
fn unpaired_splits(dag: &Dag, src: &Arc<SourceFile>, variants: &[Variant], baseline: &str) -> Vec<Diagnostic> {
    let split_of = |v: &str, local: &str| {
        dag.pipeline
            .stages
            .iter()
            .find(|s| s.local == local && s.variants.iter().any(|x| x == v))
            .map(|s| s.name.clone())
    };
    let base = variants.iter().find(|v| v.group == baseline).unwrap_or(&variants[0]);
    let splits: Vec<&str> = dag
        .pipeline
        .stages
        .iter()
        .filter(|s| s.config.fold_count().is_some() && s.variants.iter().any(|x| x == &base.name))
        .map(|s| s.local.as_str())
        .collect();
    let mut out = Vec::new();
    for v in variants {
        for local in &splits {
            if split_of(&v.name, local) != split_of(&base.name, local) {
                let span = v.changes.first().map_or((0, 0), |c| c.span);
                out.push(
                    Diagnostic::at(
                        Code::InvalidValue,
                        src,
                        span,
                        format!(
                            "variant `{}` changes what the split `{local}` of a paired study reads: its folds would no longer pair with the baseline's",
                            v.name
                        ),
                    )
                    .label("this override")
                    .help("drop `paired: true` to compare such variants unpaired (bootstrap), or change something downstream of the split"),
                );
            }
        }
    }
    out
}

/// A variant's pipeline problem, said in the study at the override it comes from.
fn variant_problem(src: &Arc<SourceFile>, v: &Variant, d: Diagnostic) -> Diagnostic {
    let culprit = v
        .changes
        .iter()
        .rev()
        .find(|c| d.message.contains(&format!("`{}`", c.set.stage)) || d.message.contains(&c.set.arg))
        .or(v.changes.last());
    let msg = d
        .message
        .split_once(": ")
        .filter(|(h, _)| h.starts_with("--set "))
        .map_or(d.message.as_str(), |(_, m)| m);
    let span = culprit.map_or((0, 0), |c| c.span);
    let mut out = Diagnostic::at(d.code, src, span, format!("variant `{}`: {msg}", v.name)).label("this override");
    out.help = d.help;
    out
}

/// The variants: declared × grid points × seeds, each with its overrides; problems of the
/// study's own fields go to `diags`.
fn expand(raw: &RawStudy, src: &Arc<SourceFile>, base: &Dag, diags: &mut Vec<Diagnostic>) -> Vec<Variant> {
    let mut x = Expander { raw, src, base, diags };
    let declared = x.declared();
    if !x.within_cap(&declared) {
        return Vec::new();
    }
    let Some(points) = x.grid_points() else {
        return Vec::new();
    };
    x.check_seeds();
    let seed_stages = x.seed_stages();
    x.check_seed_overrides(&declared, &points, &seed_stages);
    if !x.diags.is_empty() {
        return Vec::new();
    }
    let out = x.combine(&declared, &points, &seed_stages);
    x.check_baseline(&out);
    out
}

/// A declared variant, or a grid point: labels and the overrides they stand for.
type Part = (Vec<String>, Vec<Change>);

/// What [`expand`] reads, and where its problems go.
struct Expander<'a> {
    raw: &'a RawStudy,
    src: &'a Arc<SourceFile>,
    base: &'a Dag,
    diags: &'a mut Vec<Diagnostic>,
}

impl Expander<'_> {
    /// The span of the study's field `f` (`(0, 0)` when absent).
    fn field(&self, f: &str) -> (usize, usize) {
        crate::spec::find_field(&self.src.text, f)
    }

    fn bad(&self, span: (usize, usize), m: String) -> Diagnostic {
        Diagnostic::at(Code::InvalidValue, self.src, span, m)
    }

    /// `"key": value` as an override, checked against the base: the stage exists, and a paired
    /// study does not change a split. `from` is where to look for the key's position.
    fn change(&self, key: &str, value: &str, from: usize) -> Result<Change, Diagnostic> {
        let span = find_string_lit(&self.src.text, key, from).unwrap_or((0, 0));
        let set = Override::parse(&format!("{key}={}", value.trim())).map_err(|m| {
            self.bad(
                span,
                m.replacen("--set ", "", 1)
                    .replace("(expected STAGE.PARAM=VALUE", "(expected \"stage.param\": value"),
            )
        })?;
        let pipeline = &self.base.pipeline;
        let Some(decl) = pipeline.stage(&set.stage) else {
            let names = pipeline.stages.iter().map(|s| s.name.as_str());
            return Err(self
                .bad(span, format!("`{}` is not a stage of the base pipeline", set.stage))
                .label("no such stage")
                .help_opt(did_you_mean(&set.stage, names)));
        };
        if self.raw.paired && decl.config.fold_count().is_some() {
            return Err(self
                .bad(
                    span,
                    format!(
                        "`{key}` changes the split `{}` of a paired study: its folds would no longer pair with the baseline's",
                        set.stage
                    ),
                )
                .help("drop `paired: true` to compare such variants unpaired (bootstrap), or change something else"));
        }
        Ok(Change { set, span })
    }

    /// The declared variants, as `([name], overrides)`; one unnamed variant `base` when the
    /// study declares none.
    fn declared(&mut self) -> Vec<Part> {
        let mut declared = Vec::new();
        for (name, sets) in &self.raw.variants.0 {
            let at = crate::spec::find_stage_decl(&self.src.text, name).map_or(0, |s| s.0);
            if !plain_name(name) {
                let d = self.bad(
                    (at, name.len() + 2),
                    format!("invalid variant name `{name}`: use letters, digits, `_` and `-`, at most 60 of them"),
                );
                self.diags.push(d);
            }
            let mut cs = Vec::new();
            for (key, value) in &sets.0 {
                match self.change(key, value.get_ron(), at) {
                    Ok(c) => cs.push(c),
                    Err(d) => self.diags.push(d),
                }
            }
            declared.push((vec![name.clone()], cs));
        }
        if declared.is_empty() {
            declared.push((Vec::new(), Vec::new()));
        }
        declared
    }

    /// Whether the study stays within [`MAX_STUDY_INSTANCES`], computed from the counts
    /// before anything is built; says why not when it does not.
    fn within_cap(&mut self, declared: &[Part]) -> bool {
        let raw = self.raw;
        let named = !raw.variants.0.is_empty();
        let per = self.base.graph.node_count() as u128 + 1;
        let lens: Vec<u128> = raw.grid.0.iter().map(|(_, v)| v.len() as u128).collect();
        let total = declared.len() as u128 * lens.iter().product::<u128>() * raw.seeds.len().max(1) as u128;
        if total * per <= MAX_STUDY_INSTANCES as u128 {
            return true;
        }
        let mut parts = Vec::new();
        if named {
            parts.push(format!("{} variants", declared.len()));
        }
        if !lens.is_empty() {
            let g: Vec<String> = lens.iter().map(|n| n.to_string()).collect();
            parts.push(format!("{} (grid)", g.join(" × ")));
        }
        if !raw.seeds.is_empty() {
            parts.push(format!("{} seeds", raw.seeds.len()));
        }
        let at = if self.field("grid").0 > 0 {
            self.field("grid")
        } else {
            self.field("variants")
        };
        let d = self
            .bad(
                at,
                format!(
                    "the study expands to {} = {} pipelines of {per} instances each ({} instances), more than the limit of {}",
                    parts.join(" × "),
                    thousands(total),
                    thousands(total * per),
                    thousands(MAX_STUDY_INSTANCES as u128)
                ),
            )
            .help("split it into several studies, or sweep fewer values at once");
        self.diags.push(d);
        false
    }

    /// The grid's points, the cartesian product with the first param slowest, each labelled
    /// `param=value`; `None` when a value is wrong (the problem is in `diags`).
    fn grid_points(&mut self) -> Option<Vec<Part>> {
        let grid_at = self.field("grid").0;
        let mut points: Vec<Part> = vec![(Vec::new(), Vec::new())];
        for (key, values) in &self.raw.grid.0 {
            if values.is_empty() {
                let span = find_string_lit(&self.src.text, key, grid_at).unwrap_or((0, 0));
                let d = self
                    .bad(span, format!("grid param `{key}` has no values, so the grid is empty"))
                    .label("empty");
                self.diags.push(d);
                continue;
            }
            let parsed: Vec<Option<ron::Value>> = values
                .iter()
                .map(|v| ron::from_str::<ron::Value>(v.get_ron()).ok())
                .collect();
            if let Some(j) = (1..values.len()).find(|&j| parsed[j].is_some() && parsed[..j].contains(&parsed[j])) {
                let span = find_string_lit(&self.src.text, key, grid_at).unwrap_or((0, 0));
                let d = self
                    .bad(
                        span,
                        format!(
                            "grid param `{key}` lists the value `{}` twice: its two points would be the same runs",
                            values[j].get_ron().trim()
                        ),
                    )
                    .label("this param");
                self.diags.push(d);
                return None;
            }
            let short = key.rsplit('.').next().unwrap_or(key);
            let labels = value_labels(values.iter().map(|v| v.get_ron().trim()));
            let mut column = Vec::new();
            for (v, label) in values.iter().zip(&labels) {
                match self.change(key, v.get_ron(), grid_at) {
                    Ok(c) => column.push((format!("{short}={label}"), c)),
                    Err(d) => {
                        self.diags.push(d);
                        return None;
                    }
                }
            }
            points = points
                .iter()
                .flat_map(|(names, cs)| {
                    column.iter().map(move |(label, c)| {
                        let mut n = names.clone();
                        n.push(label.clone());
                        let mut c2 = cs.clone();
                        c2.push(c.clone());
                        (n, c2)
                    })
                })
                .collect();
        }
        Some(points)
    }

    /// A seed listed twice would repeat the same runs.
    fn check_seeds(&mut self) {
        let span = self.field("seeds");
        let mut seen = BTreeSet::new();
        for s in &self.raw.seeds {
            if !seen.insert(*s) {
                let d = self
                    .bad(
                        span,
                        format!("seed {s} is listed twice: its runs would be the same runs"),
                    )
                    .label("seeds");
                self.diags.push(d);
            }
        }
    }

    /// The stages a seed is set on, with their seed param: those that fit models, or the
    /// study's `seed_stages` (a split only when the study is not paired).
    fn seed_stages(&mut self) -> Vec<(String, &'static str)> {
        let (raw, base) = (self.raw, self.base);
        let pipeline = &base.pipeline;
        let stages: Vec<(String, &'static str)> = match &raw.seed_stages {
            None => pipeline
                .stages
                .iter()
                .filter_map(|d| d.config.seed_param().map(|p| (d.name.clone(), p)))
                .collect(),
            Some(list) => {
                let at = self.field("seed_stages").0;
                let mut v = Vec::new();
                for name in list {
                    let span = find_string_lit(&self.src.text, name, at).unwrap_or((0, 0));
                    let problem = match pipeline.stage(name) {
                        None => Some(
                            self.bad(span, format!("`{name}` is not a stage of the base pipeline"))
                                .help_opt(did_you_mean(name, pipeline.stages.iter().map(|s| s.name.as_str()))),
                        ),
                        Some(d) => match d.config.seed_param() {
                            Some(p) => {
                                v.push((name.clone(), p));
                                None
                            }
                            None if d.config.fold_count().is_some() && !raw.paired => {
                                v.push((name.clone(), "seed"));
                                None
                            }
                            None => Some(self.bad(
                                span,
                                format!(
                                    "stage `{name}` ({}) has no seed a study may repeat{}",
                                    d.kind.name,
                                    if raw.paired {
                                        " in a paired study (its folds would not pair)"
                                    } else {
                                        ""
                                    }
                                ),
                            )),
                        },
                    };
                    self.diags.extend(problem);
                }
                v
            }
        };
        if !raw.seeds.is_empty() && stages.is_empty() && raw.seed_stages.is_none() {
            let d = self.bad(
                self.field("seeds"),
                "`seeds` repeat the stages that fit models, and the base pipeline has none; name them in `seed_stages`"
                    .into(),
            );
            self.diags.push(d);
        }
        stages
    }

    /// With `seeds`, a variant or grid point may not set a seed the study sets itself (the
    /// study's seed would silently win).
    fn check_seed_overrides(&mut self, declared: &[Part], points: &[Part], seed_stages: &[(String, &'static str)]) {
        if self.raw.seeds.is_empty() {
            return;
        }
        let mut seen = BTreeSet::new();
        for c in declared.iter().chain(points).flat_map(|(_, cs)| cs) {
            let clash = seed_stages
                .iter()
                .any(|(stage, p)| &c.set.stage == stage && c.set.path.len() == 1 && c.set.path[0] == *p);
            if clash && seen.insert(c.span) {
                let d = self
                    .bad(
                        c.span,
                        format!(
                            "`{}.{}` is set by `seeds` in this study; an override of it here would be overwritten",
                            c.set.stage,
                            c.set.path.join(".")
                        ),
                    )
                    .label("also set by `seeds`")
                    .help("drop the override, or drop `seeds` and sweep the seed in `grid`");
                self.diags.push(d);
            }
        }
    }

    /// Every declared variant × grid point × seed. The group is the name without the seed
    /// (`real_norm,lr=0.001`); with only seeds the variants are `seed=1`, … of the group `base`.
    fn combine(&self, declared: &[Part], points: &[Part], seed_stages: &[(String, &'static str)]) -> Vec<Variant> {
        let seeds_span = self.field("seeds");
        let seeds: Vec<Option<u64>> = if self.raw.seeds.is_empty() {
            vec![None]
        } else {
            self.raw.seeds.iter().map(|s| Some(*s)).collect()
        };
        let mut out = Vec::new();
        for (vnames, vcs) in declared {
            for (gnames, gcs) in points {
                let shown = vnames.iter().chain(gnames).cloned().collect::<Vec<_>>().join(",");
                let group = if shown.is_empty() {
                    "base".to_string()
                } else {
                    shown.clone()
                };
                for seed in &seeds {
                    let mut changes: Vec<Change> = vcs.iter().chain(gcs).cloned().collect();
                    let name = match seed {
                        None => group.clone(),
                        Some(s) if shown.is_empty() => format!("seed={s}"),
                        Some(s) => format!("{shown},seed={s}"),
                    };
                    for (stage, p) in seed_stages.iter().filter(|_| seed.is_some()) {
                        let s = seed.expect("filtered on a seed");
                        let set = Override::parse(&format!("{stage}.{p}={s}")).expect("a seed override parses");
                        changes.push(Change { set, span: seeds_span });
                    }
                    out.push(Variant {
                        name,
                        group: group.clone(),
                        seed: *seed,
                        changes,
                    });
                }
            }
        }
        out
    }

    /// The baseline names a group of the study.
    fn check_baseline(&mut self, out: &[Variant]) {
        if let Some(b) = &self.raw.baseline {
            if !out.iter().any(|v| &v.group == b) {
                let d = self
                    .bad(
                        crate::spec::field_value_span(&self.src.text, "baseline"),
                        format!("baseline `{b}` is not a variant of this study"),
                    )
                    .help_opt(did_you_mean(b, out.iter().map(|v| v.group.as_str())));
                self.diags.push(d);
            }
        }
    }
}

/// `12345` → `12,345`.
fn thousands(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Letters, digits, `_`, `-`: a variant name is part of stage and directory names.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 60 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Short labels for grid values as written (`1e-3`, `RealOnly`; `Holdout(sources: ["x"])` →
/// `Holdout-sources-x`), made unique by position where two would read the same.
fn value_labels<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = values
        .map(|v| {
            let mut s = String::new();
            for c in v.chars() {
                if c.is_ascii_alphanumeric() || ".+-_".contains(c) {
                    s.push(c);
                } else if !s.ends_with('-') {
                    s.push('-');
                }
            }
            let s = s.trim_matches('-').to_string();
            s.chars().take(40).collect()
        })
        .collect();
    for i in 0..out.len() {
        if out[i].is_empty() || out[..i].contains(&out[i]) {
            out[i] = format!("{}~{}", out[i], i + 1);
        }
    }
    out
}

/// The variants' DAGs as one, their shared stages merged (module doc).
fn merge(name: &str, file: &Path, variants: &[Variant], dags: Vec<Dag>) -> Dag {
    let mut stages: Vec<StageDecl> = Vec::new();
    let mut stage_nodes: Vec<Vec<(Option<u32>, NodeIndex)>> = Vec::new();
    let mut graph: DiGraph<Instance, String> = DiGraph::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let defaults = dags.first().map(|d| d.pipeline.defaults.clone()).unwrap_or_default();
    for (v, dag) in variants.iter().zip(&dags) {
        let mut by_stage: Vec<Vec<NodeIndex>> = vec![Vec::new(); dag.pipeline.stages.len()];
        let mut first_seen: Vec<usize> = Vec::new();
        for &n in &dag.order {
            let si = dag.instance(n).stage_index;
            if by_stage[si].is_empty() {
                first_seen.push(si);
            }
            by_stage[si].push(n);
        }
        let mut to_merged: Vec<usize> = vec![usize::MAX; dag.pipeline.stages.len()];
        let mut node_map: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        for si in first_seen {
            let d = &dag.pipeline.stages[si];
            let mut producers: BTreeSet<(String, usize)> = BTreeSet::new();
            for &n in &by_stage[si] {
                for e in dag.graph.edges_directed(n, Direction::Incoming) {
                    producers.insert((e.weight().clone(), to_merged[dag.instance(e.source()).stage_index]));
                }
            }
            let paths: Vec<(String, String)> = d
                .config
                .inputs()
                .into_iter()
                .filter_map(|i| match i.source {
                    InputSource::Path(p) => Some((i.port, p)),
                    InputSource::Stage(_) => None,
                })
                .collect();
            let folds: Vec<Option<u32>> = by_stage[si].iter().map(|n| dag.instance(*n).fold).collect();
            let sig = serde_json::json!({
                "kind": d.kind.name, "version": d.kind.version,
                "params": d.config.key_params(),
                "env": d.config.env_facts(), "folds": folds, "paths": paths, "producers": producers,
                "own": d.config.describes_experiment().then(|| v.name.clone()),
            })
            .to_string();
            if let Some(&mi) = seen.get(&sig) {
                stages[mi].variants.push(v.name.clone());
                to_merged[si] = mi;
                for (n, (_, m)) in by_stage[si].iter().zip(&stage_nodes[mi]) {
                    node_map.insert(*n, *m);
                }
                continue;
            }
            let mi = stages.len();
            let mut decl = d.clone();
            decl.variants = vec![v.name.clone()];
            stages.push(decl);
            let mut mine = Vec::new();
            for &n in &by_stage[si] {
                let inst = dag.instance(n);
                let m = graph.add_node(Instance {
                    id: String::new(),
                    stage: String::new(),
                    stage_index: mi,
                    fold: inst.fold,
                });
                for e in dag.graph.edges_directed(n, Direction::Incoming) {
                    graph.add_edge(node_map[&e.source()], m, e.weight().clone());
                }
                node_map.insert(n, m);
                mine.push((inst.fold, m));
            }
            stage_nodes.push(mine);
            to_merged[si] = mi;
            seen.insert(sig, mi);
        }
    }
    // Names: a stage every variant holds keeps its own; any other carries its first variant.
    for (i, d) in stages.iter_mut().enumerate() {
        if d.variants.len() < variants.len() {
            d.name = format!("{}.{}", d.local, d.variants[0]);
            // A directory name under out/ and part of file names: long grid names are cut.
            if d.name.len() > crate::spec::MAX_STAGE_NAME + 20 {
                let cut: String = d.variants[0].chars().take(60).collect();
                d.name = format!("{}.{cut}~{i}", d.local);
            }
        }
    }
    let mut by_id = HashMap::new();
    for n in graph.node_indices().collect::<Vec<_>>() {
        let d = &stages[graph[n].stage_index];
        let id = match graph[n].fold {
            None => d.name.clone(),
            Some(f) => format!("{}@fold{f}", d.name),
        };
        graph[n].stage = d.name.clone();
        graph[n].id = id.clone();
        by_id.insert(id, n);
    }
    let order = stable_toposort(&graph);
    Dag {
        pipeline: Pipeline {
            name: name.to_string(),
            file: file.to_path_buf(),
            defaults,
            stages,
            set: Vec::new(),
            variants: variants.iter().map(|v| v.name.clone()).collect(),
            comparison: None,
        },
        graph,
        order,
        by_id,
    }
}

/// RON for a string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Append the comparison stage `study` (module doc) of kind `text` (the `compare:` value).
fn add_comparison(
    dag: &mut Dag,
    src: &Arc<SourceFile>,
    text: &str,
    baseline: &str,
    variants: &[Variant],
    registry: &Registry,
) -> Result<(), Vec<Diagnostic>> {
    let at = src.text.find(text).unwrap_or(0);
    let close = text.trim_end().rfind(')').unwrap_or(text.len());
    let before = text[..close].trim_end();
    let sep = if before.ends_with('(') || before.ends_with(',') {
        ""
    } else {
        ", "
    };
    let gen = format!("{sep}{}", generated_params(dag, baseline, variants));
    // Generated params go last, so the user's keep their positions in the file.
    let full = format!("{}{}{}{}", &src.text[..at], before, gen, &src.text[at + before.len()..]);
    let gsrc = Arc::new(SourceFile {
        path: src.path.clone(),
        text: full,
    });
    let span = (at, at + before.len() + gen.len() + (text.len() - before.len()));
    let (kind, cfg) =
        crate::spec::parse_stage(&gsrc, span, registry).map_err(|d| vec![not_a_comparison(d, src, text, at)])?;
    let name = comparison_name(dag);
    let decl = StageDecl {
        name: name.clone(),
        local: name.clone(),
        kind,
        config: Arc::from(cfg),
        // Diagnostics quote the file as the user wrote it: the appended params come after
        // every offset a problem of the written params points at.
        src: src.clone(),
        span: crate::spec::find_field(&gsrc.text, "compare"),
        written: crate::spec::written_params(text),
        variants: dag.pipeline.variants.clone(),
    };
    let edges = comparison_edges(dag, &decl, src, at)?;
    let si = dag.pipeline.stages.len();
    dag.pipeline.stages.push(decl);
    let n = dag.graph.add_node(Instance {
        id: name.clone(),
        stage: name.clone(),
        stage_index: si,
        fold: None,
    });
    for (m, port) in edges {
        dag.graph.add_edge(m, n, port);
    }
    dag.by_id.insert(name.clone(), n);
    dag.order = stable_toposort(&dag.graph);
    dag.pipeline.comparison = Some(name);
    Ok(())
}

/// `study: "…", baseline: "…", variants: [(name, group, seed, changes, stages), …]`.
fn generated_params(dag: &Dag, baseline: &str, variants: &[Variant]) -> String {
    let mut gen = format!(
        "study: {}, baseline: {}, variants: [",
        lit(&dag.pipeline.name),
        lit(baseline)
    );
    for v in variants {
        let stages: Vec<String> = dag
            .pipeline
            .stages
            .iter()
            .filter(|d| d.variants.contains(&v.name))
            .map(|d| format!("{}: {}", lit(&d.local), lit(&d.name)))
            .collect();
        let changes: Vec<String> = v.changes().iter().map(|c| lit(c)).collect();
        gen.push_str(&format!(
            "(name: {}, group: {}, seed: {}, changes: [{}], stages: {{{}}}), ",
            lit(&v.name),
            lit(&v.group),
            v.seed.map_or("None".into(), |s| format!("Some({s})")),
            changes.join(", "),
            stages.join(", ")
        ));
    }
    gen.push(']');
    gen
}

/// A parse error of the comparison; a kind that does not take what a study appends is said
/// to be no comparison kind.
fn not_a_comparison(d: Diagnostic, src: &Arc<SourceFile>, text: &str, at: usize) -> Diagnostic {
    if !(d.code == Code::UnknownField && d.message.contains("`study`")) {
        return d;
    }
    let t = text.trim_start();
    let kind: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Diagnostic::at(
        Code::InvalidValue,
        src,
        (at + text.len() - t.len(), kind.len()),
        format!("`compare:` names a comparison stage kind, and `{kind}` is not one"),
    )
    .label("not a comparison")
    .help("use StudyReport(predictions: \"<the base's EnsembleInfer stage>\", split: \"<its Split>\")")
}

/// `study`, or the first of `study-compare`, `study-compare2`, … no stage holds.
fn comparison_name(dag: &Dag) -> String {
    std::iter::once("study".to_string())
        .chain((1..).map(|i| {
            if i == 1 {
                "study-compare".to_string()
            } else {
                format!("study-compare{i}")
            }
        }))
        .find(|n| dag.pipeline.stage(n).is_none())
        .expect("some name is free")
}

/// The comparison's problems (its own, its fan-out, what it reads), or the edges from every
/// instance it reads (`at`: where its text starts in the file).
fn comparison_edges(
    dag: &Dag,
    decl: &StageDecl,
    src: &Arc<SourceFile>,
    at: usize,
) -> Result<Vec<(NodeIndex, String)>, Vec<Diagnostic>> {
    let mut diags: Vec<Diagnostic> = decl
        .config
        .validate()
        .into_iter()
        .map(|p| stage_problem(decl, p))
        .collect();
    if decl.config.fan_out() != FanOut::Single {
        diags.push(Diagnostic::at(
            Code::InvalidValue,
            src,
            decl.span,
            "a study's comparison is one instance, not one per fold",
        ));
    }
    let mut edges: Vec<(NodeIndex, String)> = Vec::new();
    let mut mismatched = BTreeSet::new();
    for input in decl.config.inputs() {
        let InputSource::Stage(s) = &input.source else { continue };
        let Some(pd) = dag.pipeline.stages.iter().position(|d| d.name == *s) else {
            diags.push(Diagnostic::at(
                Code::MissingReference,
                src,
                decl.span,
                format!("`{s}` is not a stage of this study"),
            ));
            continue;
        };
        let out = dag.pipeline.stages[pd].config.output();
        if !input.accepts.contains(&PortType::ANY) && !input.accepts.contains(&out) {
            // Once per base stage, not once per variant reading it.
            if !mismatched.insert(dag.pipeline.stages[pd].local.clone()) {
                continue;
            }
            let acc: Vec<String> = input.accepts.iter().map(|t| t.to_string()).collect();
            let local = &dag.pipeline.stages[pd].local;
            diags.push(
                Diagnostic::at(
                    Code::TypeMismatch,
                    src,
                    find_string_lit(&src.text, local, at).unwrap_or(decl.span),
                    format!(
                        "the comparison's `{}` expects {}, but `{local}` produces {out}",
                        input.port.split('[').next().unwrap_or(""),
                        acc.join(" or ")
                    ),
                )
                .label(format!("produces {out}")),
            );
            continue;
        }
        for n in dag.graph.node_indices().filter(|n| dag.graph[*n].stage_index == pd) {
            edges.push((n, input.port.clone()));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(edges)
}
