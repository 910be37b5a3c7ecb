//! Rendering a [`Diagnostic`] as `file:line:col` + a source snippet (miette). Its own
//! module so `tests/suite/fuzz_ron.rs` can include it and render every fuzzed diagnostic.

use std::io::IsTerminal;

use flow_engine::Diagnostic;

#[derive(Debug)]
struct Rendered {
    d: Diagnostic,
    src: Option<Source>,
}

/// The file as miette sees it. miette counts a lone `\r` as a line break and columns in
/// bytes; flow (like RON) counts lines by `\n` and columns in characters. So lone `\r`s
/// become spaces (same length: spans still hold) and the `[file:line:col]` header takes the
/// diagnostic's own line:col, the one `--json` and `short()` give.
#[derive(Debug)]
struct Source {
    name: String,
    text: String,
    /// The primary span's start and its 0-based line and column.
    start: usize,
    line: usize,
    col: usize,
}

impl miette::SourceCode for Source {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let c = self.text.read_span(span, before, after)?;
        let (line, col) = if before == 0 && after == 0 && span.offset() == self.start {
            (self.line, self.col)
        } else {
            (c.line(), c.column())
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            c.data(),
            *c.span(),
            line,
            col,
            c.line_count(),
        )))
    }
}

/// miette pads the underline with `{:width$}`, which panics past 65535 columns: a snippet of
/// a line that long is no use anyway, so such a diagnostic is printed without one.
fn label_line_too_long(text: &str, (start, len): (usize, usize)) -> bool {
    const MAX_LINE: usize = 8192; // bytes; even with tabs (4 columns) well under 65535 columns
    let start = start.min(text.len());
    let end = start.saturating_add(len).min(text.len());
    let line_start = text.as_bytes()[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = text.as_bytes()[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |p| end + p);
    line_end - line_start > MAX_LINE
}

/// `text` with every `\r` not followed by `\n` replaced by a space (same length).
fn lone_cr_to_space(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(if c == '\r' && chars.peek() != Some(&'\n') {
            ' '
        } else {
            c
        });
    }
    out
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.d.message)
    }
}
impl std::error::Error for Rendered {}
impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(format!("flow::{}", self.d.code.as_str())))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.d
            .help
            .as_ref()
            .map(|h| Box::new(h.clone()) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.src.as_ref()?;
        let label = self.d.label.clone().or_else(|| Some("here".into()));
        Some(Box::new(std::iter::once(miette::LabeledSpan::new(
            label,
            self.d.span.0,
            self.d.span.1.max(1),
        ))))
    }
}

/// Render a diagnostic as `file:line:col` + a source snippet (miette).
pub fn render_diag(d: &Diagnostic) -> String {
    let src = d
        .source
        .as_ref()
        .filter(|s| !label_line_too_long(&s.text, d.span))
        .map(|s| Source {
            name: s.path.display().to_string(),
            text: lone_cr_to_space(&s.text),
            start: d.span.0,
            line: d.line.saturating_sub(1),
            col: d.col.saturating_sub(1),
        });
    let r = Rendered { d: d.clone(), src };
    let theme = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    if r.src.is_none() || handler.render_report(&mut out, &r).is_err() {
        let help = d.help.as_ref().map(|h| format!("  help: {h}\n")).unwrap_or_default();
        return format!("error[{}]: {}\n{help}", d.code.as_str(), d.short());
    }
    out
}
