//! The `report` artifact the Report stage writes: `metrics.json` (stable keys, see the
//! stage's module doc), `report.md` (tables, PNG links), `index.html` (self-contained: inline
//! SVG, no scripts, fonts or URLs) and `plots/*.svg|png`.

pub use super::REPORT as PORT;

pub const METRICS: &str = "metrics.json";
pub const MARKDOWN: &str = "report.md";
pub const HTML: &str = "index.html";
pub const PLOTS: &str = "plots";
