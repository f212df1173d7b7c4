//! `fleetgate hist plot`: the percentile distribution drawn as HdrHistogram's plotter does (x:
//! the percentile on a `1/(1-p)` log scale, y: the latency), as SVG, rasterized to PNG by
//! `resvg` when asked.
//!
//! Hand-written SVG, kept (measured 2026-11-30): `plotters` with only its SVG backend and line
//! series adds 9.4 s of release build on the 2-core CI-class machine and still needs a custom
//! `1/(1-p)` percentile axis; this writer is 400 lines with no dependency (resvg aside).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use super::{Log, Unit, read_log};

/// One line of a percentile plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (1/(1-p), latency in µs), p increasing.
    pub points: Vec<(f64, f64)>,
}

/// The percentile distribution of `h` as HdrHistogram's `outputPercentileDistribution` lists
/// it (5 ticks per half distance), as (1/(1-p), µs) points, up to the first point that reaches
/// the maximum (the 100% line is left out: it is infinitely far right). The maximum is then
/// carried on to 1/(1-p) = count, the highest percentile `count` values resolve, so that a
/// histogram of one value is a flat line rather than a single point.
pub fn distribution(h: &Histogram<u64>, us_per_unit: f64) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for v in h.iter_quantiles(5) {
        let p = v.quantile_iterated_to();
        if p >= 1.0 {
            break;
        }
        points.push((1.0 / (1.0 - p), v.value_iterated_to() as f64 * us_per_unit));
        if v.quantile() >= 1.0 {
            break;
        }
    }
    let n = h.len() as f64;
    if points.last().is_some_and(|&(x, _)| x < n) {
        points.push((n, h.max() as f64 * us_per_unit));
    }
    points
}

/// Short, distinct names for files: the fewest trailing path components that tell them apart.
pub fn short_names(paths: &[&Path]) -> Vec<String> {
    let parts: Vec<Vec<String>> = paths
        .iter()
        .map(|p| p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect())
        .collect();
    let longest = parts.iter().map(Vec::len).max().unwrap_or(0);
    for k in 1..=longest {
        let names: Vec<String> =
            parts.iter().map(|c| c[c.len().saturating_sub(k)..].join("/")).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() == names.len() {
            return names;
        }
    }
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// One [`Series`] per (log, tag), in order, keeping only `only_tags` when it is not empty.
/// Tags with no values are left out (and named in the second list).
pub fn series(logs: &[Log], only_tags: &[String]) -> (Vec<Series>, Vec<String>) {
    let names = short_names(&logs.iter().map(|l| l.path.as_path()).collect::<Vec<_>>());
    let (mut out, mut empty) = (Vec::new(), Vec::new());
    for (log, name) in logs.iter().zip(&names) {
        for t in &log.tags {
            if !only_tags.is_empty() && !only_tags.contains(&t.tag) {
                continue;
            }
            let label = format!("{name}: {}", t.name());
            if t.hist.is_empty() {
                empty.push(label);
                continue;
            }
            let points = distribution(&t.hist, log.unit.in_us());
            out.push(Series { label: format!("{label} (n={})", t.hist.len()), points });
        }
    }
    (out, empty)
}

/// Size and title of a plot.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    /// Title at the top.
    pub title: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// A log scale for the latency axis too (HdrHistogram's plotter uses a linear one).
    pub log_y: bool,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            title: "Latency by Percentile Distribution".into(),
            width: 960,
            height: 600,
            log_y: false,
        }
    }
}

/// The colours of HdrHistogram's plotter (Google Charts' palette).
const COLOURS: [&str; 10] = [
    "#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00",
    "#b82e2e", "#316395",
];

/// The font families asked for in the SVG (and looked for when rasterizing).
const FONTS: [&str; 5] = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica"];

/// Percent label of the decade `d` of the x axis: 0%, 90%, 99%, 99.9%, ...
pub fn percent_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)).replace(".%", "%"),
    }
}

/// A "nice" step (1, 2, 2.5 or 5 × 10^k) for about `target` ticks over `0..max`.
pub(super) fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw);
    step.unwrap_or(10.0 * mag)
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Draws `series` as a standalone SVG document: one `<polyline>` per series, a legend, the
/// x axis as percentiles on a `1/(1-p)` log scale and the y axis in microseconds.
pub fn plot_svg(series: &[Series], opt: &PlotOptions) -> String {
    let (w, h) = (f64::from(opt.width.max(320)), f64::from(opt.height.max(240)));
    let (left, right, top, bottom) = (84.0, 44.0, 44.0, 58.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_x = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let decades = (max_x.log10().ceil() as u32).clamp(5, 12);
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let max_y = ys().fold(0.0, f64::max);
    let sx = |x: f64| left + pw * x.max(1.0).log10() / f64::from(decades);
    // y ticks: multiples of a nice step from 0, or (log_y) the powers of ten around the data.
    let (y_ticks, sy): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = if opt.log_y {
        let min_y = ys().filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
        let lo = if min_y.is_finite() { min_y.log10().floor() } else { 0.0 };
        let hi = if max_y > 0.0 { max_y.log10().ceil().max(lo + 1.0) } else { lo + 1.0 };
        let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
        let f = move |y: f64| {
            let l = if y > 0.0 { y.log10().clamp(lo, hi) } else { lo };
            top + ph * (1.0 - (l - lo) / (hi - lo))
        };
        (ticks, Box::new(f))
    } else {
        let step = nice_step(if max_y > 0.0 { max_y } else { 1.0 }, 6.0);
        let n = (max_y / step).floor() as u32 + 1;
        let top_y = f64::from(n) * step;
        (
            (0..=n).map(|k| f64::from(k) * step).collect(),
            Box::new(move |y| top + ph * (1.0 - y / top_y)),
        )
    };

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{}, sans-serif" font-size="12" fill="#222222">"##,
        FONTS.join(", ")
    );
    let _ = writeln!(s, r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        xml_escape(&opt.title)
    );
    // Grid: a line per decade of 1/(1-p) (minor lines at 2..9 × 10^d) and per y step.
    let _ = writeln!(s, r##"<g stroke="#e4e4e4" stroke-width="1">"##);
    for d in 0..decades {
        for m in 2..10 {
            let x = sx(f64::from(m) * 10f64.powi(d as i32));
            let _ = writeln!(
                s,
                r#"<line x1="{x:.2}" y1="{top:.2}" x2="{x:.2}" y2="{:.2}"/>"#,
                top + ph
            );
        }
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r##"<g stroke="#bbbbbb" stroke-width="1">"##);
    for d in 0..=decades {
        let x = sx(10f64.powi(d as i32));
        let _ =
            writeln!(s, r#"<line x1="{x:.2}" y1="{top:.2}" x2="{x:.2}" y2="{:.2}"/>"#, top + ph);
    }
    for v in &y_ticks {
        let y = sy(*v);
        let _ =
            writeln!(s, r#"<line x1="{left:.2}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}"/>"#, left + pw);
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r##"<rect x="{left:.2}" y="{top:.2}" width="{pw:.2}" height="{ph:.2}" fill="none" stroke="#444444" stroke-width="1"/>"##
    );
    let _ = writeln!(s, r#"<g text-anchor="middle">"#);
    for d in 0..=decades {
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}">{}</text>"#,
            sx(10f64.powi(d as i32)),
            top + ph + 18.0,
            percent_label(d)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" font-size="13">Percentile</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g text-anchor="end">"#);
    for &v in &y_ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}">{}</text>"#,
            left - 6.0,
            sy(v) + 4.0,
            fmt_tick(v)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.2}) rotate(-90)" text-anchor="middle" font-size="13">Latency (µs)</text>"#,
        top + ph / 2.0
    );
    let _ = writeln!(
        s,
        r#"<g fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">"#
    );
    for (k, se) in series.iter().enumerate() {
        let mut pts = String::new();
        for (x, y) in &se.points {
            let _ =
                write!(pts, "{}{:.2},{:.2}", if pts.is_empty() { "" } else { " " }, sx(*x), sy(*y));
        }
        let _ = writeln!(
            s,
            r#"<polyline stroke="{}" points="{pts}"><title>{}</title></polyline>"#,
            COLOURS[k % COLOURS.len()],
            xml_escape(&se.label)
        );
    }
    let _ = writeln!(s, "</g>");
    // Legend, top left, where the curves of a latency distribution are low.
    let chars = series.iter().map(|se| se.label.chars().count()).max().unwrap_or(0);
    let (lx, ly) = (left + 12.0, top + 12.0);
    let lw = (40.0 + 7.0 * chars as f64).min(pw - 24.0);
    let lh = 8.0 + 18.0 * series.len() as f64;
    let _ = writeln!(s, "<g>");
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.2}" y="{ly:.2}" width="{lw:.2}" height="{lh:.2}" fill="#ffffff" fill-opacity="0.85" stroke="#bbbbbb"/>"##
    );
    for (k, se) in series.iter().enumerate() {
        let y = ly + 16.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="{}" stroke-width="3"/>"#,
            lx + 8.0,
            y - 4.0,
            lx + 30.0,
            y - 4.0,
            COLOURS[k % COLOURS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{y:.2}">{}</text>"#,
            lx + 36.0,
            xml_escape(&se.label)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, "</svg>");
    s
}

/// Rasterizes an SVG from [`plot_svg`] to PNG bytes. Text needs a TrueType/OpenType font from
/// the system's font folders (Debian: `fonts-dejavu-core`); without one this fails rather than
/// drawing a plot with no labels.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    if db.is_empty() {
        return Err("PNG output needs a TrueType or OpenType font and none was found in the \
                    system font folders (on Debian: apt-get install fonts-dejavu-core); SVG \
                    output (-o FILE.svg) needs none"
            .into());
    }
    let families: Vec<String> =
        db.faces().flat_map(|f| f.families.iter().map(|(n, _)| n.clone())).collect();
    let family = FONTS
        .iter()
        .find(|f| families.iter().any(|n| n == *f))
        .map(|f| (*f).to_string())
        .or_else(|| families.first().cloned())
        .unwrap_or_default();
    db.set_sans_serif_family(family.clone());
    opt.font_family = family;
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| format!("cannot render SVG: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| format!("cannot make a {}x{} image", size.width(), size.height()))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::identity(), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("cannot encode PNG: {e}"))
}

/// `hist plot`: reads the logs, draws them and writes `out` as SVG or, by its extension, PNG.
/// Returns what it wrote, for people.
pub fn plot(
    files: &[PathBuf],
    unit: Unit,
    only_tags: &[String],
    opt: &PlotOptions,
    out: &Path,
) -> Result<String, String> {
    let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let png = match ext.as_deref() {
        Some("svg") => false,
        Some("png") => true,
        _ => {
            return Err(format!(
                "{}: the output must end in .svg or .png (the format follows the extension)",
                out.display()
            ));
        }
    };
    let logs = files.iter().map(|f| read_log(f, unit)).collect::<Result<Vec<_>, _>>();
    let logs = logs.map_err(|e| e.to_string())?;
    let (series, empty) = series(&logs, only_tags);
    if series.is_empty() {
        let tags: Vec<String> = logs
            .iter()
            .flat_map(|l| l.tags.iter().map(|t| t.name().to_string()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        return Err(if only_tags.is_empty() {
            "nothing to plot: every tag is empty".into()
        } else {
            format!(
                "nothing to plot: no values under tag(s) {} (tags: {})",
                only_tags.join(", "),
                tags.join(", ")
            )
        });
    }
    let svg = plot_svg(&series, opt);
    let bytes = if png { svg_to_png(&svg)? } else { svg.into_bytes() };
    std::fs::write(out, bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let mut msg = format!("wrote {} ({} series)", out.display(), series.len());
    if !empty.is_empty() {
        let _ = write!(msg, "; left out, no values: {}", empty.join(", "));
    }
    Ok(msg)
}
