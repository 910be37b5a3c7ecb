//! Rendering a [`Diagnostic`] as `file:line:col` + a source snippet (miette). Its own
//! module so `tests/fuzz_ron.rs` can include it and render every fuzzed diagnostic.

use std::io::IsTerminal;

use flow_engine::Diagnostic;

#[derive(Debug)]
struct Rendered {
    d: Diagnostic,
    src: Option<miette::NamedSource<String>>,
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
        .map(|s| miette::NamedSource::new(s.path.display().to_string(), s.text.clone()));
    let r = Rendered { d: d.clone(), src };
    let theme = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    if handler.render_report(&mut out, &r).is_err() || d.source.is_none() {
        return format!("error[{}]: {}\n", d.code.as_str(), d.short());
    }
    out
}
