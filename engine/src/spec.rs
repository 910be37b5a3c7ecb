//! Pipeline files (RON): parsing with typed, registry-provided stage params, `extends`
//! (inherit a base file, then override whole stages and individual defaults), `defaults`.
//!
//! ```ron
//! Pipeline(
//!     name: "full",
//!     extends: "base.ron",          // optional, relative to this file
//!     defaults: (seed: 42),         // values stages may take for params left unset
//!     stages: { "ingest": Ingest(...), "split": Split(...), ... },
//! )
//! ```
//! Stage kinds are looked up in the [`Registry`] while parsing, so each kind's params are
//! checked by serde (`deny_unknown_fields`) with RON's own line:col.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, VariantAccess, Visitor};
use serde::Deserialize;

use crate::diag::{did_you_mean, Code, Diagnostic, SourceFile};
use crate::overrides::Override;
use crate::stage::{Config, Defaults, Registry, StageConfig, StageKind};

/// One stage as declared in a pipeline file.
#[derive(Clone)]
pub struct StageDecl {
    pub name: String,
    pub kind: StageKind,
    pub config: Config,
    /// The file that declared it (a base file for inherited stages).
    pub src: Arc<SourceFile>,
    /// Byte span of the stage's name in `src`.
    pub span: (usize, usize),
    /// The params its declaration writes out (the rest are defaults), in file order: what
    /// provenance marks as set by the experiment.
    pub written: Vec<String>,
    /// Its name in its own pipeline: what it and its consumers see while executing. `name`
    /// itself outside a study; in a study, `name` may carry the variant (`train.real_norm`).
    pub local: String,
    /// In a study: the variants whose pipelines hold this very stage (same kind, params and
    /// upstream), in the study's order. Empty outside a study.
    pub variants: Vec<String>,
}

impl fmt::Debug for StageDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageDecl")
            .field("name", &self.name)
            .field("kind", &self.kind.name)
            .finish()
    }
}

/// A loaded pipeline, `extends` already applied.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The file as the user named it.
    pub file: PathBuf,
    pub defaults: Defaults,
    /// Declaration order (base stages first).
    pub stages: Vec<StageDecl>,
    /// The `--set` overrides applied, as typed (empty: the file as it is).
    pub set: Vec<String>,
    /// A study's variants, in order (empty: a plain pipeline). See [`crate::study`].
    pub variants: Vec<String>,
    /// A study's comparison stage, if it has one.
    pub comparison: Option<String>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// The stages that make variant `v` of a study (shared ones included), the comparison
    /// left out: what `flow run --variant v` runs.
    pub fn variant_stages(&self, v: &str) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| s.variants.iter().any(|x| x == v) && self.comparison.as_deref() != Some(&s.name))
            .map(|s| s.name.as_str())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename = "Pipeline", deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    defaults: Option<ron::Value>,
    #[serde(default)]
    stages: RawStages,
}

#[derive(Default)]
struct RawStages(Vec<(String, StageKind, Box<dyn StageConfig>)>);

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

impl<'de> Deserialize<'de> for RawStages {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of stage name to stage, e.g. { \"split\": Split(...) }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStages, A::Error> {
                let mut out: Vec<(String, StageKind, Box<dyn StageConfig>)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate stage name `{name}`")));
                    }
                    if let Err(m) = check_stage_name(&name) {
                        return Err(de::Error::custom(m));
                    }
                    let (kind, cfg) = map.next_value_seed(StageSeed).map_err(|e| {
                        let msg = e.to_string();
                        de::Error::custom(match msg.split_once(KIND_SEP) {
                            Some((kind, rest)) => format!("stage `{name}` ({kind}): {}", lower_first(rest)),
                            None => format!("stage `{name}`: {}", lower_first(&msg)),
                        })
                    })?;
                    out.push((name, kind, cfg));
                }
                Ok(RawStages(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The longest pipeline name: it is a directory name under `out/` and in the cache's `meta/`.
pub const MAX_PIPELINE_NAME: usize = 100;

/// A pipeline name is a single directory name under `out/` (and in the cache's `meta/`): it
/// must never be a path (`..`, `a/b`, `/x`), empty, hidden (`.x`) or look like an option.
pub fn check_pipeline_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid pipeline name {name:?}: {why}; the name is the directory `out/<name>/`, so use letters, digits, \
             `_`, `-` and `.` (not first)"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." || name.contains('/') {
        return bad("it is a path, not a name");
    }
    if name.len() > MAX_PIPELINE_NAME {
        return bad(&format!("longer than {MAX_PIPELINE_NAME} bytes"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with `.` or `-`");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.".contains(*c)))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    Ok(())
}

/// Byte span of the string literal that follows the first top-level `field:` (escapes
/// included), or of the field name when no literal follows.
pub(crate) fn field_value_span(text: &str, field: &str) -> (usize, usize) {
    let (at, len) = find_field(text, field);
    if (at, len) == (0, 0) {
        return (0, 0);
    }
    let rest = &text[at + len..];
    let Some(colon) = rest.find(':') else { return (at, len) };
    let after = &rest[colon + 1..];
    let ws = after.len() - after.trim_start().len();
    let start = at + len + colon + 1 + ws;
    if !text[start..].starts_with('"') {
        return (at, len);
    }
    let mut escaped = false;
    for (i, c) in text[start + 1..].char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return (start, i + 2),
            _ => escaped = false,
        }
    }
    (at, len)
}

/// The longest stage name (it is a directory name under `out/<pipeline>/` and part of
/// scratch file names).
pub const MAX_STAGE_NAME: usize = 100;

fn check_stage_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "invalid stage name `{name}`: use letters, digits, `_` and `-` (`@` is reserved for folds)"
        ));
    }
    if name.len() > MAX_STAGE_NAME {
        return Err(format!(
            "invalid stage name `{}…`: longer than {MAX_STAGE_NAME} characters",
            &name[..20]
        ));
    }
    Ok(())
}

struct StageSeed;

impl<'de> DeserializeSeed<'de> for StageSeed {
    type Value = (StageKind, Box<dyn StageConfig>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // serde wants the variant names as a `'static` slice: leak one per distinct registry,
        // not one per parsed stage.
        static INTERNED: std::sync::Mutex<Vec<&'static [&'static str]>> = std::sync::Mutex::new(Vec::new());
        let names: &'static [&'static str] = REGISTRY.with(|r| {
            let names: Vec<&'static str> = r.borrow().as_ref().map(|r| r.names().collect()).unwrap_or_default();
            let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
            match interned.iter().find(|n| **n == names.as_slice()) {
                Some(n) => *n,
                None => {
                    let n: &'static [&'static str] = Box::leak(names.into_boxed_slice());
                    interned.push(n);
                    n
                }
            }
        });
        d.deserialize_enum("Stage", names, StageVisitor)
    }
}

struct StageVisitor;

impl<'de> Visitor<'de> for StageVisitor {
    type Value = (StageKind, Box<dyn StageConfig>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a stage, e.g. Split(dataset: \"ingest\", folds: 5)")
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (Ident(kind_name), variant) = data.variant()?;
        let kind = REGISTRY.with(|r| r.borrow().as_ref().and_then(|r| r.get(&kind_name).cloned()));
        let Some(kind) = kind else {
            let names: Vec<&'static str> =
                REGISTRY.with(|r| r.borrow().as_ref().map(|r| r.names().collect()).unwrap_or_default());
            let hint = did_you_mean(&kind_name, names.iter().copied())
                .unwrap_or_else(|| format!("known kinds: {}", names.join(", ")));
            return Err(de::Error::custom(format!("unknown stage kind `{kind_name}`; {hint}")));
        };
        let cfg = variant.struct_variant(&[], ParamsVisitor(kind.clone()))?;
        Ok((kind, cfg))
    }
}

/// A stage kind name: RON reads it as a bare identifier (`Train(...)`).
struct Ident(String);

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ident;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a stage kind, e.g. Split")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ident, E> {
                Ok(Ident(v.to_string()))
            }
        }
        d.deserialize_identifier(V)
    }
}

struct ParamsVisitor(StageKind);

/// Separates the kind name from the message of an error inside a stage's params.
const KIND_SEP: char = '\u{1f}';

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) if c.clone().next().is_some_and(|n| n.is_lowercase()) => f.to_lowercase().chain(c).collect(),
        Some(f) => std::iter::once(f).chain(c).collect(),
        None => String::new(),
    }
}

impl<'de> Visitor<'de> for ParamsVisitor {
    type Value = Box<dyn StageConfig>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the params of {}", self.0.name)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let de = de::value::MapAccessDeserializer::new(map);
        let mut erased = <dyn erased_serde::Deserializer>::erase(de);
        (self.0.parse)(&mut erased).map_err(|e| de::Error::custom(format!("{}{KIND_SEP}{e}", self.0.name)))
    }
}

/// RON as pipeline files are read: `implicit_some` (`grad_clip: 1.0` for `Some(1.0)`) and
/// `unwrap_variant_newtypes` (`model: Radar(iterations: 1)` for `Radar((iterations: 1))`).
pub(crate) fn ron_options() -> ron::Options {
    use ron::extensions::Extensions;
    ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME | Extensions::UNWRAP_VARIANT_NEWTYPES)
}

/// Load a pipeline file (and the files it extends) and check every stage's params.
/// Graph-level checks (references, types, cycles) are done by [`crate::dag`].
pub fn load_pipeline(path: &Path, registry: &Registry) -> Result<Pipeline, Vec<Diagnostic>> {
    load_pipeline_with(path, registry, &[])
}

thread_local! {
    /// The `--set` overrides of the load in progress on this thread ([`load_pipeline_with`]).
    static OVERRIDES: RefCell<Vec<Override>> = const { RefCell::new(Vec::new()) };
}

/// [`load_pipeline`] with `--set` overrides applied to the text of the file that declares
/// each stage ([`crate::overrides`]): the pipeline that file, so edited, would be.
pub fn load_pipeline_with(path: &Path, registry: &Registry, set: &[Override]) -> Result<Pipeline, Vec<Diagnostic>> {
    OVERRIDES.with(|o| *o.borrow_mut() = set.to_vec());
    let mut chain = Vec::new();
    let loaded = load_inner(path, path.to_path_buf(), registry, &mut chain);
    OVERRIDES.with(|o| o.borrow_mut().clear());
    let mut p = loaded?;
    let missing: Vec<Diagnostic> = set
        .iter()
        .filter(|o| p.stage(&o.stage).is_none())
        .map(|o| {
            let hint = did_you_mean(&o.stage, p.stages.iter().map(|s| s.name.as_str())).unwrap_or_else(|| {
                format!(
                    "its stages: {}",
                    p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            });
            Diagnostic::no_source(
                Code::InvalidValue,
                p.file.clone(),
                format!("--set {}: `{}` is not a stage of this pipeline; {hint}", o.arg, o.stage),
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    p.set = set.iter().map(|o| o.arg.clone()).collect();
    // Defaults are resolved once, after `extends` merged them, so an inherited stage takes
    // the child's value for a default the child overrides.
    for s in &mut p.stages {
        if let Some(c) = Arc::get_mut(&mut s.config) {
            c.resolve_defaults(&p.defaults);
        }
    }
    Ok(p)
}

/// The file as a source for diagnostics: a regular file, read whole, valid UTF-8.
/// The largest pipeline or study file read (a hand-written file is kilobytes).
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

pub(crate) fn read_source(path: &Path, shown: &Path) -> Result<Arc<SourceFile>, Vec<Diagnostic>> {
    // A fifo would block the read forever; a directory or device is no pipeline either.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(vec![Diagnostic::no_source(
                Code::Io,
                shown.to_path_buf(),
                format!("cannot read {}: not a regular file", shown.display()),
            )])
        }
        Ok(m) if m.len() > MAX_SOURCE_BYTES => {
            return Err(vec![Diagnostic::no_source(
                Code::Io,
                shown.to_path_buf(),
                format!(
                    "cannot read {}: it is {} bytes, and a pipeline or study file is at most {} MiB",
                    shown.display(),
                    m.len(),
                    MAX_SOURCE_BYTES >> 20
                ),
            )])
        }
        _ => {}
    }
    let bytes = std::fs::read(path).map_err(|e| {
        vec![Diagnostic::no_source(
            Code::Io,
            shown.to_path_buf(),
            format!("cannot read {}: {e}", shown.display()),
        )]
    })?;
    let (text, not_utf8) = match String::from_utf8(bytes) {
        Ok(t) => (t, None),
        // Shown with U+FFFD for the bad bytes; what comes before is unchanged, so the offset holds.
        Err(e) => (
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            Some((e.utf8_error().valid_up_to(), e.as_bytes()[e.utf8_error().valid_up_to()])),
        ),
    };
    let src = Arc::new(SourceFile {
        path: shown.to_path_buf(),
        text,
    });
    if let Some((at, byte)) = not_utf8 {
        return Err(vec![Diagnostic::at(
            Code::Syntax,
            &src,
            src.char_span(at),
            format!("the file is not valid UTF-8 (byte 0x{byte:02x})"),
        )
        .label("not UTF-8")]);
    }
    Ok(src)
}

/// `defaults: (seed: 42, …)`: a struct-like map of name -> value.
fn parse_defaults(raw: &RawPipeline, src: &Arc<SourceFile>, diags: &mut Vec<Diagnostic>) -> Defaults {
    let mut defaults = Defaults::default();
    if let Some(v) = &raw.defaults {
        match v {
            ron::Value::Map(m) => {
                for (k, v) in m.iter() {
                    let key = match k {
                        ron::Value::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    let j = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                    defaults.0.insert(key, j);
                }
            }
            ron::Value::Unit => {}
            _ => {
                let span = find_field(&src.text, "defaults");
                diags.push(Diagnostic::at(
                    Code::InvalidValue,
                    src,
                    span,
                    "`defaults` must be a struct of values, e.g. (seed: 42)",
                ));
            }
        }
    }
    defaults
}

/// The stages and defaults of the file `ext` that `path` extends; its problems are folded
/// into `diags`, positioned at the `extends` value.
fn load_base(
    path: &Path,
    shown: &Path,
    ext: &str,
    registry: &Registry,
    chain: &mut Vec<PathBuf>,
    src: &Arc<SourceFile>,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<StageDecl>, Defaults) {
    let base_path = path.parent().unwrap_or(Path::new(".")).join(ext);
    let base_shown = shown.parent().unwrap_or(Path::new("")).join(ext);
    match load_inner(&base_path, base_shown, registry, chain) {
        Ok(base) => (base.stages, base.defaults),
        Err(d) => {
            let span = find_string_lit(&src.text, ext, 0).unwrap_or((0, 0));
            // A file that cannot be read has no source to show: fold its error in here.
            let (io, mut rest): (Vec<Diagnostic>, Vec<Diagnostic>) = d.into_iter().partition(|d| d.code == Code::Io);
            let mut diag = Diagnostic::at(
                Code::Extends,
                src,
                span,
                format!("cannot load `{ext}`, which this file extends"),
            )
            .label("extended here");
            if let Some(e) = io.first() {
                diag = diag.help(e.message.clone());
            }
            diags.push(diag);
            diags.append(&mut rest);
            (Vec::new(), Defaults::default())
        }
    }
}

fn load_inner(
    path: &Path,
    shown: PathBuf,
    registry: &Registry,
    chain: &mut Vec<PathBuf>,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let src = with_overrides(read_source(path, &shown)?)?;
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&canon) {
        let mut names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        names.push(canon.display().to_string());
        return Err(vec![Diagnostic::at(
            Code::Extends,
            &src,
            (0, 0),
            format!("`extends` forms a cycle: {}", names.join(" -> ")),
        )]);
    }
    chain.push(canon);

    REGISTRY.with(|r| *r.borrow_mut() = Some(registry.clone()));
    let parsed: Result<RawPipeline, ron::error::SpannedError> = ron_options().from_str(&src.text);
    REGISTRY.with(|r| *r.borrow_mut() = None);
    let raw = parsed.map_err(|e| vec![ron_diagnostic(&src, &e)])?;

    let mut diags = Vec::new();
    if let Err(m) = check_pipeline_name(&raw.name) {
        diags.push(
            Diagnostic::at(Code::InvalidValue, &src, field_value_span(&src.text, "name"), m)
                .label("not a directory name"),
        );
    }
    let defaults = parse_defaults(&raw, &src, &mut diags);

    let (mut stages, mut base_defaults) = match &raw.extends {
        Some(ext) => load_base(path, &shown, ext, registry, chain, &src, &mut diags),
        None => (Vec::new(), Defaults::default()),
    };
    chain.pop();
    for (k, v) in defaults.0 {
        base_defaults.0.insert(k, v);
    }
    let defaults = base_defaults;

    for (name, kind, cfg) in raw.stages.0 {
        let span = find_stage_decl(&src.text, &name).unwrap_or((0, 0));
        let written = if span == (0, 0) {
            Vec::new()
        } else {
            written_params(&src.text[span.0 + span.1..])
        };
        let decl = StageDecl {
            local: name.clone(),
            name: name.clone(),
            kind,
            config: Arc::from(cfg),
            src: src.clone(),
            span,
            written,
            variants: Vec::new(),
        };
        if let Some(existing) = stages.iter_mut().find(|s| s.name == name) {
            *existing = decl;
        } else {
            stages.push(decl);
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(Pipeline {
        name: raw.name,
        file: shown,
        defaults,
        stages,
        set: Vec::new(),
        variants: Vec::new(),
        comparison: None,
    })
}

/// `src` with the load's `--set` overrides that name a stage it declares applied; its shown
/// name says so (`p.ron (with --set train.lr=3e-4)`), so diagnostics on the edited text do not
/// pass for the file's own.
fn with_overrides(src: Arc<SourceFile>) -> Result<Arc<SourceFile>, Vec<Diagnostic>> {
    let set = OVERRIDES.with(|o| o.borrow().clone());
    let mut text = src.text.clone();
    let mut applied = Vec::new();
    for o in &set {
        match crate::overrides::apply(&text, o) {
            None => {}
            Some(Ok(t)) => {
                text = t;
                applied.push(o.arg.clone());
            }
            Some(Err(m)) => {
                let span = find_stage_decl(&src.text, &o.stage).unwrap_or((0, 0));
                return Err(vec![
                    Diagnostic::at(Code::InvalidValue, &src, span, m).label("this stage")
                ]);
            }
        }
    }
    if applied.is_empty() {
        return Ok(src);
    }
    let path = PathBuf::from(format!(
        "{} (with --set {})",
        src.path.display(),
        applied.join(" --set ")
    ));
    Ok(Arc::new(SourceFile { path, text }))
}

/// One stage declaration (`Kind(params…)`) parsed from `src.text[span]` with the kinds of
/// `registry`, its errors positioned in `src` (a study's generated comparison stage).
pub(crate) fn parse_stage(
    src: &Arc<SourceFile>,
    span: (usize, usize),
    registry: &Registry,
) -> Result<(StageKind, Box<dyn StageConfig>), Diagnostic> {
    REGISTRY.with(|r| *r.borrow_mut() = Some(registry.clone()));
    let parsed = ron_options().from_str_seed(&src.text[span.0..span.1], StageSeed);
    REGISTRY.with(|r| *r.borrow_mut() = None);
    parsed.map_err(|mut e| {
        // Positions count from the start of the span.
        let before = &src.text[..span.0];
        if e.position.line == 1 {
            e.position.col += before.rsplit('\n').next().map_or(0, |l| l.chars().count());
        }
        e.position.line += before.matches('\n').count();
        ron_diagnostic(src, &e)
    })
}

/// Convert a RON error into a diagnostic with a precise span.
pub(crate) fn ron_diagnostic(src: &Arc<SourceFile>, e: &ron::error::SpannedError) -> Diagnostic {
    let msg = e.code.to_string();
    let mut off = src.offset_of(e.position.line, e.position.col);
    let mut len = 1;
    // Point at the offending identifier when the message names one.
    let code = classify(&msg);
    let named = [
        "field named `",
        "Unexpected field named `",
        "unknown field `",
        "unknown stage kind `",
        "duplicate stage name `",
    ]
    .iter()
    .find_map(|p| msg.split_once(p).and_then(|(_, rest)| rest.split('`').next()))
    .map(str::to_string);
    if let Some(n) = &named {
        if code == Code::UnknownField || code == Code::UnknownKind || code == Code::DuplicateStage {
            if let Some(p) = src.text[..off.min(src.text.len())].rfind(n.as_str()) {
                off = p;
                len = n.len();
            }
        }
    }
    // A bad stage name: RON stops after the key; point at the key's literal.
    if let Some(n) = msg
        .split_once("invalid stage name `")
        .and_then(|(_, r)| r.split('`').next())
    {
        // The name as shown may be cut short (`sss…`): find the literal by its start.
        let start = format!("\"{}", n.trim_end_matches('…'));
        if let Some(p) = src.text[..off.min(src.text.len())].rfind(&start) {
            let end = src.text[p + 1..].find('"').map_or(src.text.len(), |e| p + 1 + e + 1);
            off = p;
            len = end - p;
        }
    }
    if len == 1 {
        // One character, whatever its width in bytes (the last one if RON points past the end).
        (off, len) = src.char_span(off);
    }
    let mut d = Diagnostic::at(code, src, (off, len), tidy_message(&msg));
    if code == Code::UnknownField {
        if let (Some(field), Some(exp)) = (named.as_deref(), msg.split("expected one of ").nth(1)) {
            let cands: Vec<&str> = exp.split('`').skip(1).step_by(2).collect();
            d = d.help_opt(
                did_you_mean(field, cands.iter().copied()).or_else(|| Some(format!("expected one of {exp}"))),
            );
        }
        d = d.label("unknown field");
    } else if code == Code::Syntax {
        d = d.label("here");
    }
    d
}

fn classify(msg: &str) -> Code {
    let msg = msg.to_lowercase();
    if msg.contains("unknown field") || msg.contains("unexpected field") || msg.contains("no such field") {
        Code::UnknownField
    } else if msg.contains("unknown stage kind") {
        Code::UnknownKind
    } else if msg.contains("duplicate stage name") {
        Code::DuplicateStage
    } else if msg.contains("invalid type")
        || [
            "expected integer",
            "expected float",
            "expected bool",
            "expected string",
            "expected array",
            "expected option",
        ]
        .iter()
        .any(|e| msg.contains(e))
        || msg.contains("invalid value")
        || msg.contains("missing field")
        || msg.contains("unknown variant")
        || msg.contains("invalid stage name")
    {
        Code::InvalidValue
    } else {
        Code::Syntax
    }
}

fn tidy_message(msg: &str) -> String {
    // RON says "Unexpected missing field named `x` in `Y`".
    let msg = &msg
        .replace("Unexpected missing field named ", "missing field ")
        .replace("unexpected missing field named ", "missing field ");
    // "unknown field `x`, expected one of ..." → keep the first clause; the list goes to help.
    if let Some((head, _)) = msg.split_once(", expected one of") {
        return head.to_string();
    }
    msg.to_string()
}

/// Byte span of the key `"name"` of a stage declaration (`"name": Kind(`).
pub fn find_stage_decl(text: &str, name: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(sp) = find_string_lit(text, name, from) {
        let rest = text[sp.0 + sp.1..].trim_start();
        if rest.starts_with(':') {
            return Some(sp);
        }
        from = sp.0 + sp.1;
    }
    None
}

/// The field names written at the top level of the first `Kind( … )` in `text` (a stage's
/// declaration after its name), in file order ([`crate::ron_text::fields`]).
pub fn written_params(text: &str) -> Vec<String> {
    let Some(open) = crate::ron_text::first_paren(text) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (name, _, _) in crate::ron_text::fields(text, open) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Byte span of the string literal `"s"` at or after `from`.
pub fn find_string_lit(text: &str, s: &str, from: usize) -> Option<(usize, usize)> {
    let needle = format!("\"{s}\"");
    text.get(from..)?.find(&needle).map(|p| (from + p, needle.len()))
}

/// Byte span of a field name `name:` (first occurrence).
pub fn find_field(text: &str, name: &str) -> (usize, usize) {
    let mut from = 0;
    while let Some(p) = text[from..].find(name) {
        let at = from + p;
        let before_ok = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let after = text[at + name.len()..].trim_start();
        if before_ok && after.starts_with(':') {
            return (at, name.len());
        }
        from = at + name.len();
    }
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &[u8]) -> Result<Pipeline, Vec<Diagnostic>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.ron");
        std::fs::write(&p, text).unwrap();
        load_pipeline(&p, &Registry::new())
    }

    fn only_diag(text: &[u8]) -> Diagnostic {
        let mut d = load_text(text).expect_err("invalid");
        assert_eq!(d.len(), 1, "{d:?}");
        d.remove(0)
    }

    #[test]
    fn written_params_are_the_top_level_fields_of_the_declaration() {
        let t = r#": Train(data: "pre", // note: not a field
            model: SimpleCnn(width: 24, pool: Max), /* lr: 1 */ epochs: 16,
            tta: [Identity, HFlip], extra: { "a:b": 1 }, s: "x: y", c: ':',
        ),
        "next": Split(folds: 5)"#;
        assert_eq!(written_params(t), ["data", "model", "epochs", "tta", "extra", "s", "c"]);
        assert!(written_params(": Report()").is_empty());
    }

    fn assert_span_ok(d: &Diagnostic) {
        let src = d.source.as_ref().expect("a source");
        let (s, len) = d.span;
        assert!(s + len <= src.text.len(), "{d:?}");
        assert!(
            src.text.is_char_boundary(s) && src.text.is_char_boundary(s + len),
            "{d:?}"
        );
        assert_eq!(src.line_col(s), (d.line, d.col));
    }

    // Fuzzer: a syntax error at a multi-byte character (here a combining mark) got a 1-byte
    // span that ended inside the character.
    #[test]
    fn syntax_error_at_a_multibyte_char_spans_the_whole_char() {
        let d = only_diag("Pipeline(name: \"x\"\u{301}, stages: {})".as_bytes());
        assert_eq!(d.code, Code::Syntax);
        assert_eq!((d.line, d.col), (1, 19));
        assert_eq!(d.span, (18, 2));
        assert_span_ok(&d);
    }

    // A syntax error past the end of a file that ends in a multi-byte character: the span
    // was moved to `len - 1`, inside the character.
    #[test]
    fn syntax_error_at_the_end_after_a_multibyte_char() {
        for text in [
            "Pipeline(name: \"x\", stages: {}, é",
            "Pipeline(name: \"x日本",
            "Pipeline(name: 🦀",
        ] {
            let d = only_diag(text.as_bytes());
            assert_span_ok(&d);
        }
    }

    // A file that is not UTF-8 was an `io` error without a position.
    #[test]
    fn invalid_utf8_has_a_position() {
        let d = only_diag(b"Pipeline(\n    name: \"a\xffb\",\n)");
        assert_eq!(d.code, Code::Syntax);
        assert_eq!((d.line, d.col), (2, 13));
        assert!(d.message.contains("UTF-8"), "{}", d.message);
        assert_span_ok(&d);
        // Also as the base of `extends`: the base's own diagnostic, with its position.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.ron"), b"Pipeline(name: \"\xc3\")").unwrap();
        std::fs::write(dir.path().join("p.ron"), "Pipeline(name: \"p\", extends: \"base.ron\")").unwrap();
        let ds = load_pipeline(&dir.path().join("p.ron"), &Registry::new()).unwrap_err();
        assert_eq!(ds.len(), 2, "{ds:?}");
        assert_eq!(ds[0].code, Code::Extends);
        assert_eq!((ds[1].code, ds[1].line, ds[1].col), (Code::Syntax, 1, 17));
        ds.iter().for_each(assert_span_ok);
    }

    #[test]
    fn char_span_and_line_col_stay_on_char_boundaries() {
        let src = SourceFile {
            path: "x".into(),
            text: "aé\n日".into(),
        };
        assert_eq!(src.char_span(0), (0, 1));
        assert_eq!(src.char_span(1), (1, 2));
        assert_eq!(src.char_span(2), (1, 2));
        assert_eq!(src.char_span(4), (4, 3));
        assert_eq!(src.char_span(99), (4, 3));
        assert_eq!(src.line_col(2), (1, 2));
        assert_eq!(src.line_col(5), (2, 1));
        let empty = SourceFile {
            path: "x".into(),
            text: String::new(),
        };
        assert_eq!(empty.char_span(3), (0, 0));
    }
}
