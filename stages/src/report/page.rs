//! The report as one document, rendered twice: `report.md` (GitHub Markdown) and `index.html`
//! (self-contained: inline SVG, inline CSS). Both renderers walk the same [`Section`]s, so
//! every table of one is in the other.
//!
//! Text from the data is escaped by the renderers ([`esc`] for HTML, [`md`] for Markdown);
//! a block never carries markup of its own except [`Block::Html`], which is HTML-only and
//! built from escaped parts.

use std::fmt::Write as _;

use super::plots::Plot;
use super::stage::{esc, md};

/// One plot of the report.
pub struct Figure {
    /// File stem under `plots/` (`roc` → `plots/roc.svg`, `plots/roc.png`).
    pub stem: String,
    pub title: String,
    /// What to read from it (one or two sentences).
    pub read: String,
    pub plot: Plot,
    /// Spans the whole grid row (wide figures: small multiples).
    pub wide: bool,
}

pub enum Block {
    Para(String),
    /// A paragraph in a smaller, grey font.
    Note(String),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A visible box listing what makes the analysis weak or suspicious.
    Warnings(Vec<String>),
    /// The report's figures with these stems, as a grid.
    Figures(Vec<String>),
    /// HTML only; Markdown gets `md_alt`, which is Markdown already (its maker escapes data
    /// with [`md`]).
    Html {
        html: String,
        md_alt: String,
    },
}

pub struct Section {
    /// HTML id (`summary`, `provenance`, …).
    pub id: &'static str,
    pub title: String,
    pub blocks: Vec<Block>,
}

pub struct Doc {
    pub title: String,
    pub sections: Vec<Section>,
    pub figures: Vec<Figure>,
    /// The machine-readable file next to the page (`metrics.json`).
    pub data: &'static str,
}

fn md_table(s: &mut String, head: &[String], rows: &[Vec<String>]) {
    let line = |cells: &mut dyn Iterator<Item = &String>| cells.map(|c| md(c)).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(s, "| {} |", line(&mut head.iter()));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", line(&mut r.iter()));
    }
    s.push('\n');
}

/// `report.md`.
pub fn render_md(d: &Doc) -> String {
    let mut s = format!("# {}\n\n", md(&d.title));
    for sec in &d.sections {
        let _ = writeln!(s, "## {}\n", md(&sec.title));
        for b in &sec.blocks {
            match b {
                Block::Para(t) => {
                    let _ = writeln!(s, "{}\n", md(t));
                }
                Block::Note(t) => {
                    let _ = writeln!(s, "_{}_\n", md(t));
                }
                Block::Table { head, rows } => md_table(&mut s, head, rows),
                Block::Warnings(w) => {
                    let _ = writeln!(s, "> **Warnings**\n>");
                    for x in w {
                        let _ = writeln!(s, "> - {}", md(x));
                    }
                    s.push('\n');
                }
                Block::Figures(stems) => {
                    for f in d.figures.iter().filter(|f| stems.contains(&f.stem)) {
                        let _ = writeln!(
                            s,
                            "### {}\n\n![{}](plots/{}.png)\n\n{}\n",
                            md(&f.title),
                            md(&f.title),
                            f.stem,
                            md(&f.read)
                        );
                    }
                }
                Block::Html { md_alt, .. } => {
                    let _ = writeln!(s, "{md_alt}\n");
                }
            }
        }
    }
    s
}

const CSS: &str = "\
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5rem auto;max-width:1400px;color:#222;padding:0 1rem;line-height:1.4}\
h1{margin:.2rem 0 .8rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}\
.scroll{overflow-x:auto;max-width:100%}\
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}td,th{border:1px solid #ccc;padding:.25rem .55rem;text-align:right;vertical-align:top}\
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}\
table.kv td{text-align:left}table.params td{text-align:left;font-family:ui-monospace,monospace;font-size:.82rem}\
#provenance td{text-align:left;max-width:34rem;overflow-wrap:break-word}#provenance table:not(.rf) td:nth-child(4),#provenance table:not(.rf) td:nth-child(5){font-family:ui-monospace,monospace;font-size:.8rem}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr));gap:1rem}\
figure{margin:0;border:1px solid #ddd;padding:.5rem;break-inside:avoid;page-break-inside:avoid}figure.wide{grid-column:1/-1}\
figure svg,figure img{width:100%;height:auto;display:block}.spectra{grid-template-columns:repeat(auto-fill,minmax(min(100%,220px),1fr))}\
figcaption{font-size:.88rem;color:#444}figcaption b{color:#222}\
.note{color:#555;font-size:.88rem}\
.warn{border:2px solid #d55e00;background:#fff4ec;padding:.4rem .9rem;border-radius:4px;margin:.8rem 0}.warn h3{margin:.2rem 0;color:#a33f00;font-size:1rem}\
.warn ul{margin:.3rem 0;padding-left:1.2rem}\
@media print{body{max-width:none;margin:0;font-size:10pt}.grid{grid-template-columns:1fr 1fr}figure.wide{grid-column:1/-1}\
h2{break-after:avoid;page-break-after:avoid}table{break-inside:auto}tr{break-inside:avoid}.scroll{overflow:visible}\
section{break-inside:auto}#provenance{break-before:page;page-break-before:always}}\
@page{size:A4;margin:12mm}";

fn html_table(head: &[String], rows: &[Vec<String>], class: &str) -> String {
    let mut s = format!("<div class=\"scroll\"><table class=\"{class}\"><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

/// `index.html`. `tail` is appended before `</body>` (the run-facts script).
pub fn render_html(d: &Doc, tail: &str) -> String {
    let mut s = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body><h1>{}</h1>",
        esc(&d.title),
        esc(&d.title)
    );
    for sec in &d.sections {
        let _ = write!(s, "<section id=\"{}\"><h2>{}</h2>", sec.id, esc(&sec.title));
        for b in &sec.blocks {
            match b {
                Block::Para(t) => {
                    let _ = write!(s, "<p>{}</p>", esc(t));
                }
                Block::Note(t) => {
                    let _ = write!(s, "<p class=\"note\">{}</p>", esc(t));
                }
                Block::Table { head, rows } => s.push_str(&html_table(head, rows, "")),
                Block::Warnings(w) => {
                    s.push_str("<div class=\"warn\" id=\"warnings\"><h3>Warnings</h3><ul>");
                    for x in w {
                        let _ = write!(s, "<li>{}</li>", esc(x));
                    }
                    s.push_str("</ul></div>");
                }
                Block::Figures(stems) => {
                    s.push_str("<div class=\"grid\">");
                    for f in d.figures.iter().filter(|f| stems.contains(&f.stem)) {
                        let _ = write!(
                            s,
                            "<figure id=\"fig-{}\"{}>{}<figcaption><b>{}.</b> {}</figcaption></figure>",
                            esc(&f.stem),
                            if f.wide { " class=\"wide\"" } else { "" },
                            f.plot.svg,
                            esc(&f.title),
                            esc(&f.read)
                        );
                    }
                    s.push_str("</div>");
                }
                Block::Html { html, .. } => s.push_str(html),
            }
        }
        s.push_str("</section>");
    }
    let _ = write!(
        s,
        "<p class=\"note\">Machine-readable: {}. Plots as PNG: plots/. Made by flow {}.</p>{tail}</body></html>",
        d.data,
        env!("CARGO_PKG_VERSION")
    );
    s
}
