//! Diagnostics: every problem with a pipeline file carries the file, a byte span into its
//! source, a line:col, a message and optional help. The binary renders them with miette;
//! `--json` prints them as they are.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

/// A pipeline source file, kept for rendering snippets.
#[derive(Debug)]
pub struct SourceFile {
    /// As the user named it (relative paths stay relative: diagnostics are reproducible).
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
    /// The span of the character at byte `offset` (moved back to a char boundary, and to
    /// the last character when past the end); `(len, 0)` for an empty text.
    pub fn char_span(&self, offset: usize) -> (usize, usize) {
        let mut off = offset.min(self.text.len());
        if off == self.text.len() && off > 0 {
            off -= 1;
        }
        while !self.text.is_char_boundary(off) {
            off -= 1;
        }
        let len = self.text[off..].chars().next().map_or(0, char::len_utf8);
        (off, len)
    }
    /// Byte offset of a 1-based line and column.
    pub fn offset_of(&self, line: usize, col: usize) -> usize {
        let mut off = 0;
        for (i, l) in self.text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let c = l.char_indices().nth(col.saturating_sub(1)).map_or(l.len(), |(b, _)| b);
                return off + c;
            }
            off += l.len();
        }
        self.text.len()
    }
}

/// What kind of problem; stable strings for `--json` and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    Io,
    Syntax,
    UnknownKind,
    UnknownField,
    InvalidValue,
    DuplicateStage,
    /// The same input (stage or workspace path) listed twice for one param.
    DuplicateInput,
    MissingReference,
    TypeMismatch,
    Cycle,
    FoldMismatch,
    PathEscape,
    /// A workspace path the pipeline reads does not exist (or is a dangling symlink).
    MissingPath,
    Extends,
    Invalid,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Io => "io",
            Code::Syntax => "syntax",
            Code::UnknownKind => "unknown-kind",
            Code::UnknownField => "unknown-field",
            Code::InvalidValue => "invalid-value",
            Code::DuplicateStage => "duplicate-stage",
            Code::DuplicateInput => "duplicate-input",
            Code::MissingReference => "missing-reference",
            Code::TypeMismatch => "type-mismatch",
            Code::Cycle => "cycle",
            Code::FoldMismatch => "fold-mismatch",
            Code::PathEscape => "path-escape",
            Code::MissingPath => "missing-path",
            Code::Extends => "extends",
            Code::Invalid => "invalid",
        }
    }
}

/// One problem found in a pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Byte span in the file (start, len).
    #[serde(skip)]
    pub span: (usize, usize),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip)]
    pub source: Option<Arc<SourceFile>>,
}

impl Diagnostic {
    pub fn at(code: Code, src: &Arc<SourceFile>, span: (usize, usize), message: impl Into<String>) -> Diagnostic {
        let (line, col) = src.line_col(span.0);
        Diagnostic {
            code,
            message: message.into(),
            file: src.path.clone(),
            line,
            col,
            span,
            label: None,
            help: None,
            source: Some(src.clone()),
        }
    }
    pub fn no_source(code: Code, file: PathBuf, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            file,
            line: 0,
            col: 0,
            span: (0, 0),
            label: None,
            help: None,
            source: None,
        }
    }
    pub fn label(mut self, l: impl Into<String>) -> Self {
        self.label = Some(l.into());
        self
    }
    pub fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
    pub fn help_opt(mut self, h: Option<String>) -> Self {
        self.help = h;
        self
    }
    /// Plain one-line rendering: `file:line:col: code: message`, or `file: code: message` for
    /// a problem with no position in the file (a `--set` argument, an unreadable file).
    pub fn short(&self) -> String {
        if self.line == 0 {
            return format!("{}: {}: {}", self.file.display(), self.code.as_str(), self.message);
        }
        format!(
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.code.as_str(),
            self.message
        )
    }
}

/// "did you mean" against a list of candidates (Jaro-Winkler, or case-insensitive match).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let s = if c.eq_ignore_ascii_case(word) {
            1.0
        } else {
            strsim::jaro_winkler(word, c)
        };
        if s > best.map_or(0.0, |b| b.0) {
            best = Some((s, c));
        }
    }
    best.filter(|b| b.0 >= 0.8).map(|b| format!("did you mean `{}`?", b.1))
}
