//! From a loaded [`Pipeline`] to a validated DAG of stage *instances* (petgraph).
//!
//! Checks: every reference names a stage; the producer's artifact type is one the input
//! accepts; per-fold stages name a split that defines folds; fold counts agree; stage
//! params pass their own validation (e.g. paths stay inside the workspace); no cycles
//! (reported with their path).
//!
//! Expansion: a per-fold stage becomes `name@fold0` … `name@fold{k-1}`. An edge between
//! two per-fold stages joins equal folds; a single stage reading a per-fold stage depends
//! on every fold; a per-fold stage reading a single stage has that stage as input in every
//! fold.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::spec::{find_field, find_string_lit, Pipeline, StageDecl};
use crate::stage::{FanOut, InputSource, PortType};

/// One node of the DAG.
#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    /// `name` or `name@foldK`.
    pub id: String,
    pub stage: String,
    #[serde(skip)]
    pub stage_index: usize,
    pub fold: Option<u32>,
}

/// A stage input resolved to a workspace path.
#[derive(Clone, Debug)]
pub struct PathInput {
    pub port: String,
    pub rel: String,
}

/// The validated instance graph.
#[derive(Debug)]
pub struct Dag {
    pub pipeline: Pipeline,
    /// Edge weight: the consumer's port.
    pub graph: DiGraph<Instance, String>,
    /// Topological order.
    pub order: Vec<NodeIndex>,
    pub by_id: HashMap<String, NodeIndex>,
}

impl Dag {
    pub fn instance(&self, n: NodeIndex) -> &Instance {
        &self.graph[n]
    }
    pub fn decl(&self, n: NodeIndex) -> &StageDecl {
        &self.pipeline.stages[self.graph[n].stage_index]
    }
    /// The instance's name in its own pipeline (`train@fold2`), which is what it and its
    /// consumers see while executing; its `id` outside a study.
    pub fn local_id(&self, n: NodeIndex) -> String {
        let d = self.decl(n);
        match self.graph[n].fold {
            None => d.local.clone(),
            Some(f) => format!("{}@fold{f}", d.local),
        }
    }
    /// The name an instance's experiment goes by: the pipeline's, or in a study
    /// `study/variant` for a stage of one variant.
    pub fn experiment_name(&self, n: NodeIndex) -> String {
        match self.decl(n).variants.as_slice() {
            [v] if self.pipeline.variants.len() > 1 => format!("{}/{v}", self.pipeline.name),
            _ => self.pipeline.name.clone(),
        }
    }
    /// The instances a run considers: all, or the targets (stage or instance names) and
    /// every instance they need.
    pub fn wanted(&self, targets: Option<&[String]>) -> Vec<bool> {
        let Some(targets) = targets else {
            return vec![true; self.graph.node_count()];
        };
        let mut w = vec![false; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = self
            .by_id
            .iter()
            .filter(|(iid, n)| targets.iter().any(|t| *iid == t || self.instance(**n).stage == *t))
            .map(|(_, n)| *n)
            .collect();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut w[n.index()], true) {
                stack.extend(self.graph.neighbors_directed(n, petgraph::Direction::Incoming));
            }
        }
        w
    }
    /// Upstream instances of `n` with the port they feed.
    pub fn inputs_of(&self, n: NodeIndex) -> Vec<(String, NodeIndex)> {
        let mut v: Vec<(String, NodeIndex)> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.weight().clone(), e.source()))
            .collect();
        v.sort_by(|a, b| (a.0.as_str(), self.graph[a.1].fold).cmp(&(b.0.as_str(), self.graph[b.1].fold)));
        v
    }
    /// Workspace path inputs of `n`.
    pub fn paths_of(&self, n: NodeIndex) -> Vec<PathInput> {
        self.decl(n)
            .config
            .inputs()
            .into_iter()
            .filter_map(|i| match i.source {
                // Normalised (`./data/` → `data`): what keys, digests and sandboxes use. The
                // DAG was built only if every path normalises (see `workspace_path_problem`).
                InputSource::Path(p) => Some(PathInput {
                    port: i.port,
                    rel: flow_cache::normalize_rel(&p).unwrap_or(p),
                }),
                InputSource::Stage(_) => None,
            })
            .collect()
    }
    /// The workspace paths the pipeline reads that do not exist under `workspace` (or are
    /// symlinks that cannot be followed), or that reach into flow's own directories
    /// (`flow_dirs`: the cache and `out/`, with what to call them) through a link, one
    /// diagnostic at each mention: what `flow run` would fail on, found by `flow check`.
    pub fn check_paths(
        &self,
        workspace: &std::path::Path,
        flow_dirs: &[(std::path::PathBuf, &str)],
    ) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        for d in &self.pipeline.stages {
            for input in d.config.inputs() {
                let InputSource::Path(rel) = &input.source else {
                    continue;
                };
                let abs = workspace.join(flow_cache::normalize_rel(rel).unwrap_or_else(|_| rel.clone()));
                let problem = match (std::fs::symlink_metadata(&abs), std::fs::metadata(&abs)) {
                    (Err(_), _) => "does not exist in the workspace".to_string(),
                    (Ok(_), Err(e)) => format!("is a symlink that cannot be followed ({e})"),
                    (Ok(_), Ok(_)) => match flow_dir_conflict(workspace, rel, flow_dirs) {
                        Some(why) => {
                            diags.push(
                                Diagnostic::at(
                                    Code::PathEscape,
                                    &d.src,
                                    ref_span(d, &input.port, rel),
                                    format!("stage `{}`: {why}", d.name),
                                )
                                .label("here"),
                            );
                            continue;
                        }
                        None => continue,
                    },
                };
                diags.push(
                    Diagnostic::at(
                        Code::MissingPath,
                        &d.src,
                        ref_span(d, &input.port, rel),
                        format!(
                            "stage `{}` reads workspace path `{rel}` (param `{}`), which {problem}",
                            d.name, input.port,
                        ),
                    )
                    .label("no such path")
                    .help("paths are relative to the workspace (-C DIR, default: the current directory); `flow check --no-path-check` skips this on a machine without the data"),
                );
            }
        }
        diags
    }

    /// Every instance downstream of (and including) the given ones.
    pub fn downstream(&self, roots: &[NodeIndex]) -> Vec<NodeIndex> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n.index()], true) {
                continue;
            }
            stack.extend(self.graph.neighbors_directed(n, Direction::Outgoing));
        }
        self.order.iter().copied().filter(|n| seen[n.index()]).collect()
    }
}

/// The most instances one stage may expand into (`folds`): more is a typo (or a fuzzer), not
/// a study, and would exhaust memory building the graph.
pub const MAX_FOLDS: u32 = 10_000;

fn fold_count(p: &Pipeline, d: &StageDecl) -> Option<u32> {
    match d.config.fan_out() {
        FanOut::Single => None,
        FanOut::Foreach(n) => Some(n),
        FanOut::PerFold { split } => p.stage(&split).and_then(|s| s.config.fold_count()),
    }
}

/// Where a stage's param `port` names `name`: `port: "name"` if written so, else the first
/// `"name"` after the stage's declaration.
fn ref_span(d: &StageDecl, port: &str, name: &str) -> (usize, usize) {
    let from = d.span.0 + d.span.1;
    let text = &d.src.text;
    let mut at = from;
    while let Some(sp) = find_string_lit(text, name, at) {
        let before = text[from..sp.0].trim_end();
        if let Some(b) = before.strip_suffix(':') {
            if b.trim_end().ends_with(port) {
                return sp;
            }
        }
        at = sp.0 + sp.1;
    }
    find_string_lit(text, name, from).unwrap_or(d.span)
}

/// Where the workspace path `rel` meets one of flow's own directories (`flow_dirs`: the
/// cache, `out/`), links followed: it holds one, or lies inside one. A message, or None.
pub fn flow_dir_conflict(
    workspace: &std::path::Path,
    rel: &str,
    flow_dirs: &[(std::path::PathBuf, &str)],
) -> Option<String> {
    let input = std::fs::canonicalize(workspace.join(rel)).ok()?;
    for (dir, what) in flow_dirs {
        let Ok(dir) = std::fs::canonicalize(dir) else { continue };
        let how = if dir.starts_with(&input) {
            "holds"
        } else if input.starts_with(&dir) {
            "is inside"
        } else {
            continue;
        };
        return Some(format!(
            "workspace input `{rel}` {how} {what} ({}): it would change on every run and hand the command \
             flow's own files; keep the cache and out/ apart from the paths a pipeline reads",
            dir.display()
        ));
    }
    None
}

/// A workspace-path input, normalised (`./data/` → `data`), or why it cannot be one: it
/// must stay inside the workspace and must not be flow's own `out/` or cache (which change
/// on every run). This is the one check every workspace-path input of every kind gets.
fn workspace_path_problem(p: &str) -> Result<String, (String, &'static str)> {
    const HELP: &str = "workspace inputs are paths relative to the workspace root";
    let n = match flow_cache::normalize_rel(p) {
        Ok(n) => n,
        Err(_) if p.trim_matches('/').split('/').all(|c| c.is_empty() || c == ".") && !p.starts_with('/') => {
            return Err((
                format!("input path `{p}` is the whole workspace, which holds flow's own out/ and cache"),
                "name the directory that holds the data",
            ))
        }
        Err(_) => return Err((format!("input path `{p}` is outside the workspace"), HELP)),
    };
    let first = n.split('/').next().unwrap_or("");
    if first == "out" || first == ".flow" {
        let what = if first == "out" {
            "out/ (its views change on every run)"
        } else {
            "the cache"
        };
        return Err((
            format!("input path `{p}` is inside flow's own {what}"),
            "read another stage's outputs with Stage(\"name\") instead",
        ));
    }
    Ok(n)
}

/// The `n`-th (1-based) `"name"` literal after the stage's declaration, or the best
/// [`ref_span`] when there are fewer.
fn nth_ref_span(d: &StageDecl, name: &str, n: usize) -> (usize, usize) {
    let mut at = d.span.0 + d.span.1;
    let mut last = None;
    for _ in 0..n {
        match find_string_lit(&d.src.text, name, at) {
            Some(sp) => {
                at = sp.0 + sp.1;
                last = Some(sp);
            }
            None => break,
        }
    }
    last.unwrap_or(d.span)
}

/// A stage's own problem as a diagnostic, at the offending value when it says which.
pub(crate) fn stage_problem(d: &StageDecl, prob: crate::stage::ConfigProblem) -> Diagnostic {
    let from = d.span.0 + d.span.1;
    let span = match prob.needle.as_deref() {
        Some(field) if field.ends_with(':') => match find_field(&d.src.text[from..], &field[..field.len() - 1]) {
            (0, 0) => None,
            (at, len) => Some((from + at, len)),
        },
        Some(n) => find_string_lit(&d.src.text, n, d.span.0),
        None => None,
    }
    .unwrap_or(d.span);
    Diagnostic::at(prob.code, &d.src, span, format!("stage `{}`: {}", d.name, prob.message)).help_opt(prob.help)
}

/// Validate the pipeline and expand it into the instance DAG.
pub fn build_dag(p: Pipeline) -> Result<Dag, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();

    // Stage-level checks and edges.
    let mut stage_edges: Vec<(usize, usize, String)> = Vec::new(); // (producer, consumer, port)
    for (ci, d) in p.stages.iter().enumerate() {
        own_problems(&p, d, &names, &mut diags);
        input_edges(&p, ci, &index, &names, &mut diags, &mut stage_edges);
    }
    input_problems(&p, &stage_edges, &mut diags);
    if let Some(cycle) = cycle_problem(&p, &names, &stage_edges) {
        diags.push(cycle);
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let (graph, by_id) = expand(&p, &stage_edges)?;
    let order = stable_toposort(&graph);
    Ok(Dag {
        pipeline: p,
        graph,
        order,
        by_id,
    })
}

/// A stage's problems that need no other stage: its own validation, its fold count, the
/// split it expands by.
fn own_problems(p: &Pipeline, d: &StageDecl, names: &[&str], diags: &mut Vec<Diagnostic>) {
    for prob in d.config.validate() {
        diags.push(stage_problem(d, prob));
    }
    let own_folds = match d.config.fan_out() {
        FanOut::Foreach(n) => Some(n),
        _ => d.config.fold_count(),
    };
    if let Some(n) = own_folds.filter(|n| *n > MAX_FOLDS) {
        let from = d.span.0 + d.span.1;
        let span = match find_field(&d.src.text[from..], "folds") {
            (0, 0) => d.span,
            (at, len) => (from + at, len),
        };
        diags.push(Diagnostic::at(
            Code::InvalidValue,
            &d.src,
            span,
            format!("stage `{}`: {n} folds is more than the limit of {MAX_FOLDS}", d.name),
        ));
    }
    if let FanOut::PerFold { split } = d.config.fan_out() {
        match p.stage(&split) {
            None => diags.push(
                Diagnostic::at(
                    Code::MissingReference,
                    &d.src,
                    ref_span(d, "split", &split),
                    format!(
                        "stage `{}` is split by `{split}`, which is not a stage of this pipeline",
                        d.name
                    ),
                )
                .help_opt(did_you_mean(&split, names.iter().copied())),
            ),
            Some(s) if s.config.fold_count().is_none() => diags.push(Diagnostic::at(
                Code::TypeMismatch,
                &d.src,
                ref_span(d, "split", &split),
                format!(
                    "stage `{}` expands per fold of `{split}`, but `{split}` ({}) defines no folds",
                    d.name, s.kind.name
                ),
            )),
            Some(_) => {}
        }
    }
}

/// The edges into stage `ci` (producer, consumer, port), and a diagnostic for each input
/// that is a bad path, listed twice, not a stage, or of the wrong type.
fn input_edges(
    p: &Pipeline,
    ci: usize,
    index: &HashMap<&str, usize>,
    names: &[&str],
    diags: &mut Vec<Diagnostic>,
    stage_edges: &mut Vec<(usize, usize, String)>,
) {
    let d = &p.stages[ci];
    // The same producer (or path) twice on one param would be two edges to one input:
    // nothing reads it twice, so it is a mistake, reported at the second mention.
    let mut seen: HashMap<(String, InputSource), usize> = HashMap::new();
    for input in d.config.inputs() {
        let normal = match &input.source {
            InputSource::Path(p) => match workspace_path_problem(p) {
                Ok(n) => InputSource::Path(n),
                Err((message, help)) => {
                    diags.push(
                        Diagnostic::at(
                            Code::PathEscape,
                            &d.src,
                            ref_span(d, &input.port, p),
                            format!("stage `{}`: {message}", d.name),
                        )
                        .label("here")
                        .help(help),
                    );
                    continue;
                }
            },
            s => s.clone(),
        };
        let listed = match (&input.source, &normal) {
            (InputSource::Path(raw), InputSource::Path(n)) if raw != n => format!("`{n}` (as `{raw}`)"),
            (InputSource::Path(raw), _) | (InputSource::Stage(raw), _) => format!("`{raw}`"),
        };
        let n = seen.entry((input.port.clone(), normal)).or_insert(0);
        *n += 1;
        if *n == 2 {
            let (what, name) = match &input.source {
                InputSource::Stage(s) => ("stage", s),
                InputSource::Path(p) => ("workspace path", p),
            };
            diags.push(
                Diagnostic::at(
                    Code::DuplicateInput,
                    &d.src,
                    nth_ref_span(d, name, 2),
                    format!(
                        "stage `{}` lists {what} {listed} twice in param `{}`",
                        d.name, input.port
                    ),
                )
                .label("listed again here")
                .help("remove the second mention: each input is read once"),
            );
        }
        if *n > 1 {
            continue;
        }
        let InputSource::Stage(from) = &input.source else {
            continue;
        };
        let Some(&pi) = index.get(from.as_str()) else {
            let others = names.iter().copied().filter(|n| *n != d.name);
            diags.push(
                Diagnostic::at(
                    Code::MissingReference,
                    &d.src,
                    ref_span(d, &input.port, from),
                    format!(
                        "stage `{}` reads `{from}` (param `{}`), which is not a stage of this pipeline",
                        d.name, input.port
                    ),
                )
                .label("no such stage")
                .help_opt(did_you_mean(from, others)),
            );
            continue;
        };
        let prod = &p.stages[pi];
        let out = prod.config.output();
        if !input.accepts.contains(&PortType::ANY) && !input.accepts.contains(&out) {
            let acc: Vec<String> = input.accepts.iter().map(|t| t.to_string()).collect();
            diags.push(
                Diagnostic::at(
                    Code::TypeMismatch,
                    &d.src,
                    ref_span(d, &input.port, from),
                    format!(
                        "stage `{}` param `{}` expects {}, but `{from}` ({}) produces {out}",
                        d.name,
                        input.port,
                        acc.join(" or "),
                        prod.kind.name
                    ),
                )
                .label(format!("produces {out}")),
            );
            continue;
        }
        stage_edges.push((pi, ci, input.port.clone()));
    }
}

/// Problems that need the producers' facts (an image size too small for a model, …).
fn input_problems(p: &Pipeline, stage_edges: &[(usize, usize, String)], diags: &mut Vec<Diagnostic>) {
    for (ci, d) in p.stages.iter().enumerate() {
        let facts: Vec<(String, serde_json::Value)> = stage_edges
            .iter()
            .filter(|(_, c, _)| *c == ci)
            .map(|(pi, _, port)| (port.clone(), p.stages[*pi].config.output_facts()))
            .collect();
        for prob in d.config.validate_inputs(&facts) {
            diags.push(stage_problem(d, prob));
        }
    }
}

/// A cycle, named by its path.
fn cycle_problem(p: &Pipeline, names: &[&str], stage_edges: &[(usize, usize, String)]) -> Option<Diagnostic> {
    let cycle = find_cycle(p.stages.len(), stage_edges)?;
    let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
    let first = &p.stages[cycle[0]];
    Some(
        Diagnostic::at(
            Code::Cycle,
            &first.src,
            first.span,
            format!("cycle: {}", path.join(" -> ")),
        )
        .label("this stage depends on itself")
        .help("a stage cannot (indirectly) read its own output; remove one of these references"),
    )
}

/// Stages into instances (one, or one per fold), and stage edges into instance edges: per
/// fold to per fold joins equal folds; any other pair joins every instance to every one.
#[allow(clippy::type_complexity)]
fn expand(
    p: &Pipeline,
    stage_edges: &[(usize, usize, String)],
) -> Result<(DiGraph<Instance, String>, HashMap<String, NodeIndex>), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut graph: DiGraph<Instance, String> = DiGraph::new();
    let mut nodes: Vec<Vec<NodeIndex>> = Vec::new();
    let mut folds: Vec<Option<u32>> = Vec::new();
    let mut by_id = HashMap::new();
    for (si, d) in p.stages.iter().enumerate() {
        let fc = fold_count(&p, d);
        let mut v = Vec::new();
        match fc {
            None => v.push(graph.add_node(Instance {
                id: d.name.clone(),
                stage: d.name.clone(),
                stage_index: si,
                fold: None,
            })),
            Some(k) => {
                for f in 0..k {
                    let id = format!("{}@fold{f}", d.name);
                    v.push(graph.add_node(Instance {
                        id,
                        stage: d.name.clone(),
                        stage_index: si,
                        fold: Some(f),
                    }));
                }
            }
        }
        for n in &v {
            by_id.insert(graph[*n].id.clone(), *n);
        }
        nodes.push(v);
        folds.push(fc);
    }
    for (pi, ci, port) in stage_edges {
        match (folds[*pi], folds[*ci]) {
            (Some(a), Some(b)) if a != b => {
                let d = &p.stages[*ci];
                diags.push(Diagnostic::at(
                    Code::FoldMismatch,
                    &d.src,
                    ref_span(d, port, &p.stages[*pi].name),
                    format!(
                        "stage `{}` has {b} folds but reads `{}`, which has {a}",
                        d.name, p.stages[*pi].name
                    ),
                ));
            }
            (Some(_), Some(_)) => {
                for (a, b) in nodes[*pi].iter().zip(&nodes[*ci]) {
                    graph.add_edge(*a, *b, port.clone());
                }
            }
            _ => {
                for a in &nodes[*pi] {
                    for b in &nodes[*ci] {
                        graph.add_edge(*a, *b, port.clone());
                    }
                }
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok((graph, by_id))
}

/// Kahn's algorithm, always taking the ready instance declared first (then lowest fold):
/// the order `flow dag`, `status` and `run` print is the file's order where it can be.
pub(crate) fn stable_toposort(g: &DiGraph<Instance, String>) -> Vec<NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indeg: Vec<usize> = g
        .node_indices()
        .map(|n| g.edges_directed(n, Direction::Incoming).count())
        .collect();
    let prio = |n: NodeIndex| Reverse((g[n].stage_index, g[n].fold, n.index()));
    let mut heap: BinaryHeap<(Reverse<(usize, Option<u32>, usize)>, NodeIndex)> = g
        .node_indices()
        .filter(|n| indeg[n.index()] == 0)
        .map(|n| (prio(n), n))
        .collect();
    let mut order = Vec::with_capacity(g.node_count());
    while let Some((_, n)) = heap.pop() {
        order.push(n);
        for e in g.edges_directed(n, Direction::Outgoing) {
            let m = e.target();
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                heap.push((prio(m), m));
            }
        }
    }
    assert_eq!(order.len(), g.node_count(), "stage graph was checked for cycles");
    order
}

/// A cycle in the stage graph as a path `[a, b, …, a]`, if any.
fn find_cycle(n: usize, edges: &[(usize, usize, String)]) -> Option<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for (a, b, _) in edges {
        adj[*a].push(*b);
    }
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state = vec![0u8; n];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(u: usize, adj: &[Vec<usize>], state: &mut [u8], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[u] = 1;
        stack.push(u);
        for &v in &adj[u] {
            if state[v] == 1 {
                let pos = stack.iter().position(|&x| x == v).expect("on stack");
                let mut c = stack[pos..].to_vec();
                c.push(v);
                return Some(c);
            }
            if state[v] == 0 {
                if let Some(c) = dfs(v, adj, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[u] = 2;
        None
    }
    for u in 0..n {
        if state[u] == 0 {
            if let Some(c) = dfs(u, &adj, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// `flow dag` output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

impl Dag {
    pub fn render(&self, fmt: DagFormat) -> String {
        let mut s = String::new();
        match fmt {
            DagFormat::Text => {
                let _ = writeln!(
                    s,
                    "{} ({} stages, {} instances)",
                    self.pipeline.name,
                    self.pipeline.stages.len(),
                    self.graph.node_count()
                );
                for &n in &self.order {
                    let inst = &self.graph[n];
                    let kind = self.decl(n).kind.name;
                    let ins = self.inputs_of(n);
                    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (port, m) in &ins {
                        grouped.entry(port.clone()).or_default().push(self.graph[*m].id.clone());
                    }
                    let mut deps: Vec<String> = grouped
                        .into_iter()
                        .map(|(p, v)| format!("{p}: {}", compact(&v)))
                        .collect();
                    for pi in self.paths_of(n) {
                        deps.push(format!("{}: ./{}", pi.port, pi.rel));
                    }
                    if deps.is_empty() {
                        let _ = writeln!(s, "  {} [{kind}]", inst.id);
                    } else {
                        let _ = writeln!(s, "  {} [{kind}] <- {}", inst.id, deps.join(", "));
                    }
                }
            }
            DagFormat::Dot => {
                let _ = writeln!(
                    s,
                    "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];",
                    esc(&self.pipeline.name)
                );
                for &n in &self.order {
                    let i = &self.graph[n];
                    let _ = writeln!(
                        s,
                        "  \"{}\" [label=\"{}\\n{}\"];",
                        esc(&i.id),
                        esc(&i.id),
                        self.decl(n).kind.name
                    );
                }
                for e in self.graph.edge_references() {
                    let _ = writeln!(
                        s,
                        "  \"{}\" -> \"{}\" [label=\"{}\"];",
                        esc(&self.graph[e.source()].id),
                        esc(&self.graph[e.target()].id),
                        esc(e.weight())
                    );
                }
                s.push_str("}\n");
            }
            DagFormat::Mermaid => {
                s.push_str("flowchart LR\n");
                let mid = |id: &str| id.replace('@', "_at_").replace('-', "_");
                for &n in &self.order {
                    let i = &self.graph[n];
                    let _ = writeln!(s, "  {}[\"{}<br/>{}\"]", mid(&i.id), i.id, self.decl(n).kind.name);
                }
                for e in self.graph.edge_references() {
                    let _ = writeln!(
                        s,
                        "  {} -->|{}| {}",
                        mid(&self.graph[e.source()].id),
                        e.weight(),
                        mid(&self.graph[e.target()].id)
                    );
                }
            }
        }
        s
    }

    /// Nodes and edges for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .order
            .iter()
            .map(|&n| {
                let i = &self.graph[n];
                serde_json::json!({"id": i.id, "stage": i.stage, "kind": self.decl(n).kind.name, "fold": i.fold})
            })
            .collect();
        let edges: Vec<serde_json::Value> = self
            .graph
            .edge_references()
            .map(|e| serde_json::json!({"from": self.graph[e.source()].id, "to": self.graph[e.target()].id, "port": e.weight()}))
            .collect();
        serde_json::json!({"pipeline": self.pipeline.name, "nodes": nodes, "edges": edges})
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `train@fold0, train@fold1, …` → `train@fold{0..4}`.
fn compact(ids: &[String]) -> String {
    if ids.len() > 2 {
        if let Some((base, _)) = ids[0].split_once('@') {
            if ids.iter().all(|i| i.split_once('@').map(|x| x.0) == Some(base)) {
                return format!("{base}@fold{{0..{}}}", ids.len() - 1);
            }
        }
    }
    ids.join(", ")
}
