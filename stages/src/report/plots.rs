//! Report plots, drawn with `plotters`; each function returns the same chart twice, as an SVG
//! string (for inlining into a self-contained `index.html`) and as PNG bytes, both 640×420 px.
//!
//! - [`roc`]: ROC curves (FPR vs TPR on [0,1]²) with the chance diagonal; legend = series names.
//! - [`reliability`]: observed share of fakes vs mean predicted P(fake) per non-empty bin, before
//!   (and optionally after) calibration, with the diagonal of perfect calibration.
//! - [`histogram`]: overlaid semi-transparent score histograms on [0,1], one per group; bar
//!   height = share of the group's finite values in the bin (values outside [0,1] count in the
//!   end bins).
//! - [`confusion`]: 2×2 matrix, rows actual real/fake, columns predicted real/fake; each cell
//!   shows its count and its share of the row, shaded by that share.
//! - [`lines`]: generic line chart (training curves, threshold curves); a series breaks at skipped
//!   points.
//! - [`bars_with_ci`]: one bar per category with an optional confidence-interval whisker.
//! - [`small_multiples`]: panels side by side on shared axes (training curves: one panel per
//!   model generation, one colour per fold), legend in a strip outside the data; [`WIDE`].
//!
//! Colours: the Okabe–Ito colour-blind-safe palette, in the same order in every plot.
//! Non-finite values (and |v| > 1e15) are skipped; empty or flat inputs give empty or padded axes.
//! Labels from user data are stripped of control characters and shortened; the SVG backend
//! escapes `<`, `>`, `&`, `"` and `'` in text.
//!
//! Font: DejaVu Sans 2.37 (`stages/assets/fonts/DejaVuSans.ttf`, Bitstream Vera licence with the
//! DejaVu public-domain changes and Arev terms; see `LICENSE-DejaVu.txt` there), embedded with
//! `include_bytes!` and registered with plotters' `ab_glyph` font table as `sans-serif`: it lays
//! out all text and rasterises the PNG's; the SVG's `<text>` elements name the generic
//! `sans-serif` family, so no font or script is fetched when the page is opened.

use std::io::Cursor;
use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (640, 420);

const FONT_FAMILY: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Okabe–Ito: blue, vermillion, bluish green, reddish purple, orange, sky blue, yellow, black.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0xF0, 0xE4, 0x42),
    RGBColor(0x00, 0x00, 0x00),
];
const GREY: RGBColor = RGBColor(0x99, 0x99, 0x99);
/// Values beyond this magnitude are treated like NaN (they would break the axis arithmetic).
const MAX_ABS: f64 = 1e15;
/// Longest label drawn, in characters (longer ones end in `…`).
const MAX_LABEL: usize = 48;

/// The colour of the `i`-th series (cycling through the palette).
pub fn colour(i: usize) -> (u8, u8, u8) {
    let c = PALETTE[i % PALETTE.len()];
    (c.0, c.1, c.2)
}

/// One chart, rendered twice.
#[derive(Debug, Clone)]
pub struct Plot {
    /// `<svg …>…</svg>`, ready to inline in HTML.
    pub svg: String,
    /// PNG bytes (RGB, [`SIZE`]).
    pub png: Vec<u8>,
}

/// A named polyline; points are `(x, y)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// One reliability bin: [`crate::metrics::Bin`] (predictions in `[lo, hi)`, `count` of them,
/// their mean P(fake) `mean_p`, the share of fakes `frac_pos`).
pub use crate::metrics::Bin as RelBin;

/// One bar of [`bars_with_ci`]: `(name, value, optional (lo, hi) interval)`.
pub type Bar = (String, f64, Option<(f64, f64)>);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the embedded plot font could not be parsed")]
    Font,
    #[error("drawing the {backend} plot failed: {msg}")]
    Draw { backend: &'static str, msg: String },
    #[error("encoding the plot as PNG failed: {0}")]
    Png(String),
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

type Xy = Cartesian2d<RangedCoordf64, RangedCoordf64>;
type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A chart that can be drawn on any plotters backend.
trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn render(chart: &impl Chart) -> Result<Plot, PlotError> {
    render_sized(chart, SIZE)
}

fn render_sized(chart: &impl Chart, size: (u32, u32)) -> Result<Plot, PlotError> {
    ensure_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| PlotError::Draw {
            backend: "SVG",
            msg: e.to_string(),
        };
        chart.draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    let (w, h) = size;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| PlotError::Draw {
            backend: "bitmap",
            msg: e.to_string(),
        };
        chart.draw(&root).map_err(err)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| PlotError::Png("buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| PlotError::Png(e.to_string()))?;
    Ok(Plot { svg, png })
}

// ---------------------------------------------------------------------------------------------
// helpers

fn ok(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_ABS
}

/// Control characters become spaces; more than `max` characters are cut to `max - 1` plus `…`.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

/// An axis label: as many decimals as the axis span needs (at most 10), trailing zeros dropped.
fn tick(v: f64, span: f64) -> String {
    let decimals = (2.0 - span.max(1e-10).log10().floor()).clamp(0.0, 10.0) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn font(size: u32) -> FontDesc<'static> {
    (FONT_FAMILY, size).into_font()
}

/// Splits at skipped (non-finite) points and drops points closer than about half a pixel to the
/// previously kept one, so a 100 000-point ROC curve stays a few kB of SVG.
fn segments(points: &[(f64, f64)], x: &Range<f64>, y: &Range<f64>) -> Vec<Vec<(f64, f64)>> {
    let (sx, sy) = (2.0 * SIZE.0 as f64 / span(x), 2.0 * SIZE.1 as f64 / span(y));
    let mut out = vec![];
    let mut cur: Vec<(f64, f64)> = vec![];
    let mut pending: Option<(f64, f64)> = None;
    for &(px, py) in points {
        if !(ok(px) && ok(py)) {
            cur.extend(pending.take());
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        match cur.last() {
            Some(&(lx, ly)) if ((px - lx) * sx).abs() < 1.0 && ((py - ly) * sy).abs() < 1.0 => pending = Some((px, py)),
            _ => {
                pending = None;
                cur.push((px, py));
            }
        }
    }
    cur.extend(pending);
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn span(r: &Range<f64>) -> f64 {
    (r.end - r.start).max(f64::MIN_POSITIVE)
}

/// `lo..hi` of the finite values, widened when flat, with `margin` (a share of the span) added.
fn extent(values: impl Iterator<Item = f64>, margin: f64) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| ok(*v)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.0..1.0;
    }
    if hi - lo <= 1e-12 * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.1).max(0.5);
        return lo - pad..hi + pad;
    }
    let m = (hi - lo) * margin;
    lo - m..hi + m
}

fn legend_line(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
}

fn legend_box(c: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], c.mix(0.5).filled())
}

fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font(font(12))
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
}

/// Draws `points` as a (possibly broken, thinned) line with a legend entry even when empty.
fn draw_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Xy>,
    points: &[(f64, f64)],
    name: &str,
    c: RGBColor,
    markers: bool,
) -> DrawResult<DB> {
    let (x, y) = (chart.x_range(), chart.y_range());
    let segs = segments(points, &x, &y);
    let n: usize = segs.iter().map(Vec::len).sum();
    let point_size = if markers && n <= 60 { 2 } else { 0 };
    let mut first = true;
    for seg in segs
        .iter()
        .map(|s| s.as_slice())
        .chain(if segs.is_empty() { Some(&[][..]) } else { None })
    {
        let anno = chart.draw_series(LineSeries::new(seg.iter().copied(), c.stroke_width(2)).point_size(point_size))?;
        if first {
            anno.label(clean(name, MAX_LABEL)).legend(legend_line(c));
            first = false;
        }
    }
    Ok(())
}

fn draw_diagonal<'a, DB: DrawingBackend + 'a>(chart: &mut ChartContext<'a, DB, Xy>, label: &str) -> DrawResult<DB> {
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            6,
            4,
            GREY.stroke_width(1),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(1)));
    Ok(())
}

fn base_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<ChartContext<'a, DB, Xy>, DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    ChartBuilder::on(root)
        .caption(clean(title, 80), font(17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
}

fn unit_mesh<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Xy>,
    x_desc: &str,
    y_desc: &str,
) -> DrawResult<DB> {
    let (xs, ys) = (span(&chart.x_range()), span(&chart.y_range()));
    let (fx, fy) = (|v: &f64| tick(*v, xs), |v: &f64| tick(*v, ys));
    chart
        .configure_mesh()
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .max_light_lines(1)
        .x_desc(clean(x_desc, MAX_LABEL))
        .y_desc(clean(y_desc, MAX_LABEL))
        .label_style(font(12))
        .axis_desc_style(font(13))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()
}

// ---------------------------------------------------------------------------------------------
// ROC

struct Roc<'a> {
    curves: &'a [Series],
    title: &'a str,
}

impl Chart for Roc<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let mut chart = base_chart(root, self.title, 0.0..1.0, 0.0..1.0)?;
        unit_mesh(&mut chart, "false positive rate", "true positive rate")?;
        draw_diagonal(&mut chart, "chance")?;
        for (i, s) in self.curves.iter().enumerate() {
            draw_line(&mut chart, &s.points, &s.name, PALETTE[i % PALETTE.len()], false)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// ROC curves, FPR on x and TPR on y, both on [0,1], with the chance diagonal. Put the AUC in
/// each series' name.
pub fn roc(curves: &[Series], title: &str) -> Result<Plot, PlotError> {
    render(&Roc { curves, title })
}

// ---------------------------------------------------------------------------------------------
// reliability

struct Reliability<'a> {
    before: &'a [RelBin],
    after: Option<&'a [RelBin]>,
    title: &'a str,
}

fn rel_points(bins: &[RelBin]) -> Vec<(f64, f64)> {
    bins.iter()
        .filter(|b| b.count > 0 && ok(b.mean_p) && ok(b.frac_pos))
        .map(|b| (b.mean_p.clamp(0.0, 1.0), b.frac_pos.clamp(0.0, 1.0)))
        .collect()
}

impl Chart for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let mut chart = base_chart(root, self.title, 0.0..1.0, 0.0..1.0)?;
        unit_mesh(&mut chart, "mean predicted P(fake)", "observed share of fakes")?;
        draw_diagonal(&mut chart, "perfectly calibrated")?;
        let mut sets = vec![(if self.after.is_some() { "before" } else { "observed" }, self.before)];
        sets.extend(self.after.map(|a| ("after", a)));
        for (i, (name, bins)) in sets.into_iter().enumerate() {
            draw_line(&mut chart, &rel_points(bins), name, PALETTE[i], true)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// Reliability diagram: for each non-empty bin, observed share of fakes (`frac_pos`) against mean
/// predicted probability (`mean_p`), joined by a line; `after` (e.g. after temperature scaling)
/// in the second colour. Empty bins and NaN values are skipped.
pub fn reliability(before: &[RelBin], after: Option<&[RelBin]>, title: &str) -> Result<Plot, PlotError> {
    render(&Reliability { before, after, title })
}

// ---------------------------------------------------------------------------------------------
// histogram

struct Histogram<'a> {
    groups: &'a [(String, Vec<f64>)],
    bins: usize,
    title: &'a str,
    x_label: &'a str,
}

/// Per group: (name, n, share of the group's finite values per bin).
fn shares(groups: &[(String, Vec<f64>)], bins: usize) -> Vec<(String, usize, Vec<f64>)> {
    groups
        .iter()
        .map(|(name, values)| {
            let mut counts = vec![0usize; bins];
            let mut n = 0;
            for &v in values.iter().filter(|v| v.is_finite()) {
                counts[((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)] += 1;
                n += 1;
            }
            (
                name.clone(),
                n,
                counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect(),
            )
        })
        .collect()
}

impl Chart for Histogram<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let bins = self.bins.clamp(1, 1000);
        let groups = shares(self.groups, bins);
        let top = groups.iter().flat_map(|g| g.2.iter().copied()).fold(0.0, f64::max);
        let y_hi = if top > 0.0 { (top * 1.1).min(1.0) } else { 1.0 };
        let mut chart = base_chart(root, self.title, 0.0..1.0, 0.0..y_hi)?;
        unit_mesh(&mut chart, self.x_label, "share of group")?;
        let w = 1.0 / bins as f64;
        for (i, (name, n, share)) in groups.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(share.iter().enumerate().filter(|(_, s)| **s > 0.0).map(|(b, &s)| {
                    let x0 = b as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w, s)], c.mix(0.4).filled())
                }))?
                .label(format!("{} (n={n})", clean(name, MAX_LABEL)))
                .legend(legend_box(c));
            // The outline keeps each group's shape readable where the fills overlap.
            let mut outline = vec![(0.0, 0.0)];
            for (b, &s) in share.iter().enumerate() {
                outline.extend([(b as f64 * w, s), ((b + 1) as f64 * w, s)]);
            }
            outline.push((1.0, 0.0));
            chart.draw_series(std::iter::once(PathElement::new(outline, c.stroke_width(1))))?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperMiddle)
    }
}

/// Overlaid semi-transparent histograms of scores on [0,1] (`bins` equal-width bins, at least 1),
/// one per group (class or source); heights are the share of the group's values, so groups of
/// different sizes compare. Values outside [0,1] fall in the end bins; NaN values are skipped.
pub fn histogram(groups: &[(String, Vec<f64>)], bins: usize, title: &str, x_label: &str) -> Result<Plot, PlotError> {
    render(&Histogram {
        groups,
        bins,
        title,
        x_label,
    })
}

// ---------------------------------------------------------------------------------------------
// confusion matrix

struct Confusion<'a> {
    /// `[actual real, actual fake]` × `[predicted real, predicted fake]`.
    m: [[u64; 2]; 2],
    title: &'a str,
}

const CLASSES: [&str; 2] = ["real", "fake"];

fn index_label(v: f64, names: &[String]) -> String {
    let i = v.round();
    if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
        names[i as usize].clone()
    } else {
        String::new()
    }
}

impl Chart for Confusion<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        // x: predicted (0 real, 1 fake); y: actual, real on top (y = 1).
        let mut chart = ChartBuilder::on(root)
            .caption(clean(self.title, 80), font(17))
            .margin(12)
            .margin_left(90)
            .margin_right(90)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..1.5, -0.5..1.5)?;
        let xs: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
        let ys: Vec<String> = CLASSES.iter().rev().map(|s| s.to_string()).collect();
        let (fx, fy) = (|v: &f64| index_label(*v, &xs), |v: &f64| index_label(*v, &ys));
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(3)
            .y_labels(3)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .x_desc("predicted")
            .y_desc("actual")
            .label_style(font(13))
            .axis_desc_style(font(13))
            .draw()?;
        let names = [["TN", "FP"], ["FN", "TP"]];
        let base = PALETTE[0];
        for (row, counts) in self.m.iter().enumerate() {
            let total = counts[0] as u128 + counts[1] as u128;
            let y = 1.0 - row as f64;
            for (col, &n) in counts.iter().enumerate() {
                let share = if total > 0 { n as f64 / total as f64 } else { 0.0 };
                let mix = |c: u8| (255.0 - (255.0 - c as f64) * share * 0.9).round() as u8;
                let fill = RGBColor(mix(base.0), mix(base.1), mix(base.2));
                let x = col as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    fill.filled(),
                )))?;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    WHITE.stroke_width(2),
                )))?;
                let ink = if share > 0.55 { WHITE } else { BLACK };
                let centre = TextStyle::from(font(16))
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                let small = TextStyle::from(font(13))
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                let pct = if total > 0 {
                    format!("{:.1}% of {}", share * 100.0, CLASSES[row])
                } else {
                    "–".into()
                };
                chart.draw_series(std::iter::once(
                    EmptyElement::at((x, y))
                        + Text::new(format!("{} {n}", names[row][col]), (0, -2), centre)
                        + Text::new(pct, (0, 4), small),
                ))?;
            }
        }
        Ok(())
    }
}

/// Confusion matrix with fake as the positive class: rows actual (real, fake), columns predicted
/// (real, fake); each cell shows its count and its share of the row, shaded by that share.
pub fn confusion(tn: u64, fp: u64, fn_: u64, tp: u64, title: &str) -> Result<Plot, PlotError> {
    render(&Confusion {
        m: [[tn, fp], [fn_, tp]],
        title,
    })
}

// ---------------------------------------------------------------------------------------------
// generic lines

struct Lines<'a> {
    series: &'a [Series],
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

impl Chart for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let finite = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| ok(*x) && ok(*y))
        };
        let x = extent(finite().map(|p| p.0), 0.0);
        let y = extent(finite().map(|p| p.1), 0.05);
        let mut chart = base_chart(root, self.title, x, y)?;
        unit_mesh(&mut chart, self.x_label, self.y_label)?;
        for (i, s) in self.series.iter().enumerate() {
            draw_line(&mut chart, &s.points, &s.name, PALETTE[i % PALETTE.len()], true)?;
        }
        if !self.series.is_empty() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    }
}

/// Generic line chart (training curves per epoch and fold, cascade threshold curves…); axes fit
/// the finite points; short series (≤ 60 points) get markers; lines break at NaN points.
pub fn lines(series: &[Series], title: &str, x_label: &str, y_label: &str) -> Result<Plot, PlotError> {
    render(&Lines {
        series,
        title,
        x_label,
        y_label,
    })
}

// ---------------------------------------------------------------------------------------------
// bars with confidence intervals

struct Bars<'a> {
    bars: &'a [Bar],
    title: &'a str,
    y_label: &'a str,
    y_range: (f64, f64),
}

impl Chart for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.bars.len().max(1);
        let (lo, hi) = self.y_range;
        let y = if ok(lo) && ok(hi) && hi > lo {
            lo..hi
        } else {
            let ci = self.bars.iter().filter_map(|b| b.2).flat_map(|(a, b)| [a, b]);
            extent(self.bars.iter().map(|b| b.1).chain(ci), 0.05)
        };
        let mut chart = base_chart(root, self.title, -0.5..n as f64 - 0.5, y.clone())?;
        // Room per label, at about 7 px per character.
        let max_chars = ((540 / n) / 7).clamp(4, MAX_LABEL);
        let names: Vec<String> = self.bars.iter().map(|b| clean(&b.0, max_chars)).collect();
        let fx = |v: &f64| index_label(*v, &names);
        let ys = span(&y);
        let fy = |v: &f64| tick(*v, ys);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .x_labels(n + 1)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .y_desc(clean(self.y_label, MAX_LABEL))
            .label_style(font(12))
            .axis_desc_style(font(13))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .draw()?;
        let clampy = |v: f64| v.clamp(y.start, y.end);
        let c = PALETTE[0];
        let value_style = TextStyle::from(font(11)).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, (_, v, ci)) in self.bars.iter().enumerate() {
            let x = i as f64;
            if !ok(*v) {
                chart.draw_series(std::iter::once(Text::new(
                    "n/a",
                    (x, clampy(y.start + 0.02 * span(&y))),
                    value_style.clone(),
                )))?;
                continue;
            }
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, y.start), (x + 0.35, clampy(*v))],
                c.mix(0.75).filled(),
            )))?;
            let mut top = clampy(*v);
            if let Some((a, b)) = ci.filter(|(a, b)| ok(*a) && ok(*b)) {
                let (a, b) = (clampy(a.min(b)), clampy(a.max(b)));
                let whisker = BLACK.stroke_width(1);
                chart.draw_series([
                    PathElement::new(vec![(x, a), (x, b)], whisker),
                    PathElement::new(vec![(x - 0.1, a), (x + 0.1, a)], whisker),
                    PathElement::new(vec![(x - 0.1, b), (x + 0.1, b)], whisker),
                ])?;
                top = top.max(b);
            }
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, top)) + Text::new(format!("{v:.3}"), (0, -3), value_style.clone()),
            ))?;
        }
        Ok(())
    }
}

/// One bar per `(name, value, ci)` with an optional `(lo, hi)` whisker (e.g. per-source AUC with
/// a bootstrap CI); the value is written above each bar. `y_range` is the value axis (bars start
/// at its lower end; values outside are clipped to it); an invalid range fits the data instead.
pub fn bars_with_ci(bars: &[Bar], title: &str, y_label: &str, y_range: (f64, f64)) -> Result<Plot, PlotError> {
    render(&Bars {
        bars,
        title,
        y_label,
        y_range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert(1)</script>&";

    /// Valid SVG with the given texts (escaped as the SVG backend does) and no raw `<script`;
    /// a PNG of [`SIZE`] that is not one flat colour.
    fn check(p: &Plot, texts: &[&str]) {
        assert!(p.svg.starts_with("<svg"), "{}", &p.svg[..p.svg.len().min(80)]);
        assert!(p.svg.trim_end().ends_with("</svg>"));
        assert!(!p.svg.to_ascii_lowercase().contains("<script"), "unescaped script tag");
        for t in texts {
            let esc = t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            assert!(p.svg.contains(&esc), "SVG lacks {esc:?}");
        }
        let img = image::load_from_memory_with_format(&p.png, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first), "flat PNG");
    }

    fn roc_curve(k: f64, n: usize) -> Vec<(f64, f64)> {
        (0..=n)
            .map(|i| i as f64 / n as f64)
            .map(|x| (x, x.powf(1.0 / k)))
            .collect()
    }

    #[test]
    fn roc_renders_with_names_and_escapes_them() {
        let curves = [
            Series::new("xception (AUC 0.951)", roc_curve(4.0, 200)),
            Series::new(EVIL, roc_curve(2.0, 100_000)),
        ];
        let p = roc(&curves, "ROC, test folds").unwrap();
        check(&p, &["ROC, test folds", "xception (AUC 0.951)", EVIL, "chance"]);
        // 100 001 points are thinned to at most a few per pixel column.
        assert!(p.svg.len() < 200_000, "{} bytes", p.svg.len());
    }

    #[test]
    fn reliability_before_after() {
        let bins = |shift: f64| -> Vec<RelBin> {
            (0..10)
                .map(|i| {
                    let lo = i as f64 / 10.0;
                    RelBin {
                        lo,
                        hi: lo + 0.1,
                        count: if i == 3 { 0 } else { 100 },
                        mean_p: lo + 0.05,
                        frac_pos: (lo + 0.05 + shift).clamp(0.0, 1.0),
                    }
                })
                .collect()
        };
        let (b, a) = (bins(-0.15), bins(0.01));
        check(
            &reliability(&b, Some(&a), "Reliability").unwrap(),
            &["Reliability", "before", "after"],
        );
        check(
            &reliability(&b, None, "only before").unwrap(),
            &["only before", "observed"],
        );
    }

    #[test]
    fn histogram_groups() {
        let real: Vec<f64> = (0..1000).map(|i| (i as f64 / 1000.0).powi(3)).collect();
        let fake: Vec<f64> = (0..300)
            .map(|i| 1.0 - (i as f64 / 300.0).powi(2))
            .chain([f64::NAN, 1.5, -2.0])
            .collect();
        let groups = vec![("real".to_string(), real), (EVIL.to_string(), fake)];
        let p = histogram(&groups, 20, "Scores by class", "P(fake)").unwrap();
        check(&p, &["Scores by class", "real (n=1000)", EVIL, "P(fake)"]);
    }

    #[test]
    fn confusion_matrix() {
        let p = confusion(950, 50, 120, 880, "Confusion at t = 0.5").unwrap();
        check(
            &p,
            &[
                "Confusion at t = 0.5",
                "TN 950",
                "FP 50",
                "FN 120",
                "TP 880",
                "95.0% of real",
                "predicted",
            ],
        );
    }

    #[test]
    fn lines_training_curves() {
        let loss = Series::new("fold 0 loss", (1..=20).map(|e| (e as f64, 1.0 / e as f64)).collect());
        let mut auc_pts: Vec<(f64, f64)> = (1..=20).map(|e| (e as f64, 0.7 + 0.01 * e as f64)).collect();
        auc_pts[7].1 = f64::NAN;
        let auc = Series::new("fold 0 val AUC", auc_pts);
        check(
            &lines(&[loss, auc], "Training", "epoch", "value").unwrap(),
            &["Training", "fold 0 loss", "fold 0 val AUC", "epoch"],
        );
    }

    #[test]
    fn bars_ci() {
        let bars = vec![
            ("Deepfakes".to_string(), 0.97, Some((0.95, 0.985))),
            ("FaceSwap".to_string(), 0.91, Some((0.88, 0.93))),
            ("NeuralTextures".to_string(), 0.78, None),
            (EVIL.to_string(), f64::NAN, None),
        ];
        let p = bars_with_ci(&bars, "AUC per source", "AUC", (0.5, 1.0)).unwrap();
        check(
            &p,
            &[
                "AUC per source",
                "Deepfakes",
                "FaceSwap",
                "NeuralTextures",
                "0.970",
                "n/a",
            ],
        );
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let empty = Series::new("empty", vec![]);
        let nan = Series::new("nan", vec![(f64::NAN, 1.0), (0.5, f64::INFINITY)]);
        let flat = Series::new("flat", vec![(1.0, 0.3), (1.0, 0.3), (1.0, 0.3)]);
        let single = Series::new("one", vec![(2.0, 5.0)]);
        let huge = Series::new("huge", vec![(0.0, 1e300), (1.0, -1e300), (2.0, 1.0)]);
        let all = [empty.clone(), nan.clone(), flat.clone(), single.clone(), huge];
        for p in [
            roc(&[], "no curves").unwrap(),
            roc(&all, "odd curves").unwrap(),
            lines(&[], "no lines", "", "").unwrap(),
            lines(&[empty.clone(), nan], "nothing finite", "x", "y").unwrap(),
            lines(&[flat], "flat", "x", "y").unwrap(),
            lines(&[single], "single", "x", "y").unwrap(),
            lines(&all, "all", "x", "y").unwrap(),
            reliability(&[], Some(&[]), "no bins").unwrap(),
            reliability(
                &[RelBin {
                    lo: 0.0,
                    hi: 1.0,
                    count: 5,
                    mean_p: f64::NAN,
                    frac_pos: 2.0,
                }],
                None,
                "bad bins",
            )
            .unwrap(),
            histogram(&[], 10, "no groups", "score").unwrap(),
            histogram(
                &[("a".into(), vec![]), ("b".into(), vec![f64::NAN])],
                0,
                "empty groups",
                "score",
            )
            .unwrap(),
            histogram(&[("c".into(), vec![0.5; 100])], 100_000, "one value", "score").unwrap(),
            confusion(0, 0, 0, 0, "all zero").unwrap(),
            confusion(u64::MAX, u64::MAX, 0, 1, "huge").unwrap(),
            bars_with_ci(&[], "no bars", "AUC", (0.0, 1.0)).unwrap(),
            bars_with_ci(
                &[("x".into(), 0.5, Some((0.7, 0.2)))],
                "bad range",
                "AUC",
                (1.0, f64::NAN),
            )
            .unwrap(),
            bars_with_ci(
                &[("x".into(), 0.5, None), ("y".into(), 0.5, None)],
                "equal",
                "AUC",
                (0.5, 0.5),
            )
            .unwrap(),
            bars_with_ci(&[("z".into(), 5.0, Some((-3.0, 9.0)))], "clipped", "AUC", (0.0, 1.0)).unwrap(),
        ] {
            assert!(p.svg.starts_with("<svg"));
            assert_eq!(image::load_from_memory(&p.png).unwrap().width(), SIZE.0);
        }
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(2.0, 14.0), "2");
        assert_eq!(tick(0.8, 0.7), "0.8");
        assert_eq!(tick(0.125, 0.5), "0.125");
        assert_eq!(tick(-0.0001, 0.5), "0");
        assert_eq!(tick(2.5e-5, 1e-4), "0.000025");
        assert_eq!(tick(1500.0, 3000.0), "1500");
    }

    #[test]
    fn labels_are_cleaned() {
        assert_eq!(clean("a\u{0}b\nc", 10), "a b c");
        assert_eq!(clean("abcdef", 4), "abc…");
        let p = lines(
            &[Series::new("bad\u{1b}[31mname", vec![(0.0, 0.0), (1.0, 1.0)])],
            "t",
            "x",
            "y",
        )
        .unwrap();
        assert!(!p.svg.contains('\u{1b}'));
    }

    /// Writes every plot to `$PLOTS_DIR` for a look by eye (skipped when unset).
    #[test]
    fn dump_for_inspection() {
        let Some(dir) = std::env::var_os("PLOTS_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bins: Vec<RelBin> = (0..10)
            .map(|i| {
                let lo = i as f64 / 10.0;
                RelBin {
                    lo,
                    hi: lo + 0.1,
                    count: 50,
                    mean_p: lo + 0.05,
                    frac_pos: (lo * lo + 0.02).min(1.0),
                }
            })
            .collect();
        let after: Vec<RelBin> = bins
            .iter()
            .map(|b| RelBin {
                frac_pos: b.mean_p - 0.02,
                ..*b
            })
            .collect();
        let real: Vec<f64> = (0..1000).map(|i| (i as f64 / 1000.0).powi(3)).collect();
        let fake: Vec<f64> = (0..300).map(|i| 1.0 - (i as f64 / 300.0).powi(2)).collect();
        let plots = [
            (
                "roc",
                roc(
                    &[
                        Series::new("effnet (AUC 0.951)", roc_curve(6.0, 500)),
                        Series::new("resnet (AUC 0.902)", roc_curve(3.0, 500)),
                    ],
                    "ROC",
                ),
            ),
            (
                "reliability",
                reliability(&bins, Some(&after), "Reliability, test items"),
            ),
            (
                "histogram",
                histogram(&[("real".into(), real), ("fake".into(), fake)], 25, "Scores", "P(fake)"),
            ),
            ("confusion", confusion(950, 50, 120, 880, "Confusion at t = 0.5")),
            (
                "lines",
                lines(
                    &(0..3)
                        .map(|f| {
                            Series::new(
                                format!("fold {f}"),
                                (1..=15)
                                    .map(|e| (e as f64, 0.8 / (e as f64).sqrt() + 0.02 * f as f64))
                                    .collect(),
                            )
                        })
                        .collect::<Vec<_>>(),
                    "Training loss",
                    "epoch",
                    "loss",
                ),
            ),
            (
                "bars",
                bars_with_ci(
                    &[
                        ("Deepfakes".into(), 0.97, Some((0.95, 0.985))),
                        ("Face2Face".into(), 0.93, Some((0.9, 0.95))),
                        ("FaceSwap".into(), 0.91, Some((0.88, 0.93))),
                        ("NeuralTextures".into(), 0.78, Some((0.74, 0.82))),
                        ("a-very-long-source-name-from-a-file".into(), 0.66, None),
                    ],
                    "AUC per source",
                    "AUC",
                    (0.5, 1.0),
                ),
            ),
        ];
        for (name, p) in plots {
            let p = p.unwrap();
            std::fs::write(dir.join(format!("{name}.svg")), &p.svg).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &p.png).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// small multiples

/// One panel of [`small_multiples`]: a title and its lines. A line is `(colour index,
/// dashed, series)`: the same colour index means the same thing (a fold) in every panel.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub lines: Vec<(usize, bool, Series)>,
}

/// Width and height of a [`small_multiples`] figure, in pixels.
pub const WIDE: (u32, u32) = (960, 380);
/// Width of its legend strip, right of the panels.
const LEGEND_W: u32 = 150;

struct Multiples<'a> {
    panels: &'a [Panel],
    /// Legend entries: (colour index, label); plus a note on line styles, if any.
    legend: &'a [(usize, String)],
    styles: Option<(&'a str, &'a str)>,
    x_label: &'a str,
    y_label: &'a str,
}

impl Chart for Multiples<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (w, _) = root.dim_in_pixel();
        let (plots, legend) = root.split_horizontally(w.saturating_sub(LEGEND_W) as i32);
        let finite = || {
            self.panels
                .iter()
                .flat_map(|p| p.lines.iter().flat_map(|l| l.2.points.iter()))
                .filter(|(x, y)| ok(*x) && ok(*y))
        };
        // One y range for every panel, so levels compare at a glance; x per panel (a
        // fine-tuning of 2 epochs after 16 would otherwise be a sliver).
        let y = extent(finite().map(|p| p.1), 0.05);
        let areas = plots.split_evenly((1, self.panels.len().max(1)));
        for (p, area) in self.panels.iter().zip(&areas) {
            let x = extent(
                p.lines
                    .iter()
                    .flat_map(|l| l.2.points.iter())
                    .filter(|(x, y)| ok(*x) && ok(*y))
                    .map(|p| p.0),
                0.0,
            );
            let mut chart = ChartBuilder::on(area)
                .caption(clean(&p.title, 40), font(15))
                .margin(8)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d(x.clone(), y.clone())?;
            unit_mesh(&mut chart, self.x_label, self.y_label)?;
            for (c, dashed, s) in &p.lines {
                let colour = PALETTE[c % PALETTE.len()];
                for seg in segments(&s.points, &x, &y) {
                    if *dashed {
                        chart.draw_series(DashedLineSeries::new(seg, 5, 4, colour.stroke_width(2)))?;
                    } else {
                        let marks = if s.points.len() <= 30 { 2 } else { 0 };
                        chart.draw_series(LineSeries::new(seg, colour.stroke_width(2)).point_size(marks))?;
                    }
                }
            }
        }
        let row = 20;
        let mut y0 = 40;
        for (c, label) in self.legend {
            let colour = PALETTE[c % PALETTE.len()];
            legend.draw(&PathElement::new(vec![(8, y0), (30, y0)], colour.stroke_width(3)))?;
            legend.draw(&Text::new(clean(label, 18), (36, y0 - 7), font(12)))?;
            y0 += row;
        }
        if let Some((solid, dashed)) = self.styles {
            y0 += row / 2;
            legend.draw(&PathElement::new(vec![(8, y0), (30, y0)], BLACK.stroke_width(2)))?;
            legend.draw(&Text::new(clean(solid, 18), (36, y0 - 7), font(12)))?;
            y0 += row;
            legend.draw(&plotters::element::DashedPathElement::new(
                vec![(8, y0), (30, y0)],
                5,
                4,
                BLACK.stroke_width(2),
            ))?;
            legend.draw(&Text::new(clean(dashed, 18), (36, y0 - 7), font(12)))?;
        }
        Ok(())
    }
}

/// Panels side by side sharing the y axis (one per model generation, say), each line coloured by
/// its colour index (a fold) from one palette, dashed or solid; the legend sits in a strip
/// right of the panels, never over the data. `styles`: what solid and dashed lines mean.
pub fn small_multiples(
    panels: &[Panel],
    legend: &[(usize, String)],
    styles: Option<(&str, &str)>,
    x_label: &str,
    y_label: &str,
) -> Result<Plot, PlotError> {
    render_sized(
        &Multiples {
            panels,
            legend,
            styles,
            x_label,
            y_label,
        },
        WIDE,
    )
}
