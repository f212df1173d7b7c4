//! `fleetgate hist`: reads HdrHistogram interval logs (`.hlog`), the files written by
//! [`crate::loadgen::Report::write_hlog`] (tags `echo`, `handshake`) and by the gateway's
//! housekeeping thread (tags `service`, `cycle`, `handshake`, one interval per second).
//!
//! - [`read_log`] parses a log with `hdrhistogram`'s [`IntervalLogIterator`], decodes every
//!   interval and merges the intervals of each tag into one histogram ([`TagHist`]).
//! - [`show`] and [`compare`] render text tables, latencies in microseconds.
//! - [`plot_svg`] draws the percentile distribution as HdrHistogram's plotter does: x is the
//!   percentile on a `1/(1-p)` log scale (0%, 90%, 99%, 99.9%, ...), y is the latency;
//!   [`svg_to_png`] rasterizes that SVG (text drawn with a system font).
//!
//! Timestamps follow the reference (Java) `HistogramLogReader`: with a `BaseTime` header the
//! interval timestamps are seconds after it; with only a `StartTime` they are taken as relative
//! when they are more than a year smaller than it; otherwise they are seconds since the epoch.
#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry, LogIteratorError};

/// Percentiles shown by [`show`] and [`compare`], as (column title, quantile).
pub const PERCENTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)];

/// Seconds in a (non-leap) year: the reference reader's threshold for "relative" timestamps.
const YEAR_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// The unit of the values recorded in a log (fleetgate records nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unit {
    /// Nanoseconds.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Unit {
    /// Microseconds per recorded unit.
    pub fn in_us(self) -> f64 {
        match self {
            Self::Ns => 1e-3,
            Self::Us => 1.0,
            Self::Ms => 1e3,
            Self::S => 1e6,
        }
    }
}

/// All the intervals of one tag, merged.
#[derive(Debug)]
pub struct TagHist {
    /// The tag (`""` for intervals without one).
    pub tag: String,
    /// The merged histogram, in the log's unit.
    pub hist: Histogram<u64>,
    /// Interval lines merged.
    pub intervals: usize,
    /// Start of the earliest interval (seconds since the epoch when [`Log::absolute`]).
    pub start: f64,
    /// End of the latest interval (same origin as `start`).
    pub end: f64,
}

impl TagHist {
    /// The tag as shown to people.
    pub fn name(&self) -> &str {
        if self.tag.is_empty() { "(untagged)" } else { &self.tag }
    }
}

/// A parsed interval log.
#[derive(Debug)]
pub struct Log {
    /// Where it was read from.
    pub path: PathBuf,
    /// The unit of its values.
    pub unit: Unit,
    /// One entry per tag, in order of first appearance.
    pub tags: Vec<TagHist>,
    /// Interval lines read.
    pub intervals: usize,
    /// True when timestamps resolve to wall-clock time (a `BaseTime`/`StartTime` header, or
    /// absolute interval timestamps).
    pub absolute: bool,
}

impl Log {
    /// The entry for `tag`, if the log has one.
    pub fn tag(&self, tag: &str) -> Option<&TagHist> {
        self.tags.iter().find(|t| t.tag == tag)
    }

    /// Earliest interval start and latest interval end over all tags.
    pub fn span(&self) -> Option<(f64, f64)> {
        let start = self.tags.iter().map(|t| t.start).reduce(f64::min)?;
        let end = self.tags.iter().map(|t| t.end).reduce(f64::max)?;
        Some((start, end))
    }

    /// A value of this log in microseconds.
    pub fn us(&self, v: u64) -> f64 {
        v as f64 * self.unit.in_us()
    }
}

/// Why a log could not be read.
#[derive(Debug)]
pub enum LogError {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// A line is neither a comment, the legend, a `StartTime`/`BaseTime` header nor an interval.
    NotALog {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The start of the offending line.
        text: String,
        /// True if a valid header or interval came before that line.
        after_valid: bool,
    },
    /// The file has no interval lines at all.
    NoIntervals {
        /// The file.
        path: PathBuf,
    },
    /// An interval line whose histogram cannot be decoded or merged.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The interval's tag.
        tag: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            Self::NotALog { path, line, text, after_valid: false } => write!(
                f,
                "{} is not an HdrHistogram interval log: line {line} is not a comment, header or \
                 `[Tag=T,]start,length,max,HISTF...` interval line: {text:?}",
                path.display()
            ),
            Self::NotALog { path, line, text, after_valid: true } => write!(
                f,
                "{}: line {line}: malformed interval log line (expected a comment or \
                 `[Tag=T,]start,length,max,HISTF...`): {text:?}",
                path.display()
            ),
            Self::NoIntervals { path } => write!(
                f,
                "{} is not an HdrHistogram interval log: it has no interval lines \
                 (`Tag=T,start,length,max,HISTF...`)",
                path.display()
            ),
            Self::Corrupt { path, line, tag, reason } => {
                write!(f, "{}: line {line}: corrupt histogram", path.display())?;
                if !tag.is_empty() {
                    write!(f, " (tag {tag})")?;
                }
                write!(f, ": {reason}")
            }
        }
    }
}

impl std::error::Error for LogError {}

/// Reads and parses the interval log at `path`, whose values are in `unit`.
pub fn read_log(path: &Path, unit: Unit) -> Result<Log, LogError> {
    let data =
        std::fs::read(path).map_err(|error| LogError::Io { path: path.to_path_buf(), error })?;
    parse_log(path, &data, unit)
}

/// Maps byte offsets to 1-based line numbers, for offsets given in increasing order.
struct Lines<'a> {
    data: &'a [u8],
    offset: usize,
    line: usize,
}

impl Lines<'_> {
    fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.data.len());
        if offset < self.offset {
            self.offset = 0;
            self.line = 1;
        }
        self.line += self.data[self.offset..offset].iter().filter(|&&b| b == b'\n').count();
        self.offset = offset;
        self.line
    }
}

/// Parses an interval log held in memory; `path` only names it in errors.
pub fn parse_log(path: &Path, data: &[u8], unit: Unit) -> Result<Log, LogError> {
    // The parser wants every line, the last one too, to end in '\n'.
    let owned;
    let data = if data.last().is_some_and(|&b| b != b'\n') {
        owned = [data, b"\n"].concat();
        &owned[..]
    } else {
        data
    };
    let mut lines = Lines { data, offset: 0, line: 1 };
    let (mut start_time, mut base_time) = (None::<f64>, None::<f64>);
    let mut tags: Vec<TagHist> = Vec::new();
    let mut intervals = 0;
    let mut absolute = true;
    let mut seen_valid = false;
    let mut deserializer = Deserializer::new();
    let mut bytes = Vec::new();
    for entry in IntervalLogIterator::new(data) {
        let interval = match entry {
            Ok(LogEntry::StartTime(t)) => {
                start_time = Some(t.as_secs_f64());
                seen_valid = true;
                continue;
            }
            Ok(LogEntry::BaseTime(t)) => {
                base_time = Some(t.as_secs_f64());
                seen_valid = true;
                continue;
            }
            Ok(LogEntry::Interval(i)) => i,
            Err(LogIteratorError::ParseError { offset }) => {
                let rest = &data[offset.min(data.len())..];
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                let line = String::from_utf8_lossy(&rest[..end]);
                let binary = line.chars().any(|c| c == '\u{fffd}' || (c.is_control() && c != '\t'));
                let text = if binary {
                    "(binary data)".to_string()
                } else {
                    line.chars().take(80).collect()
                };
                return Err(LogError::NotALog {
                    path: path.to_path_buf(),
                    line: lines.at(offset),
                    text,
                    after_valid: seen_valid,
                });
            }
        };
        seen_valid = true;
        intervals += 1;
        let encoded = interval.encoded_histogram();
        let line = lines.at(encoded.as_ptr().addr().saturating_sub(data.as_ptr().addr()));
        let tag = interval.tag().map_or("", |t| t.as_str());
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.to_path_buf(),
            line,
            tag: tag.to_string(),
            reason,
        };
        bytes.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(encoded.trim(), &mut bytes)
            .map_err(|e| corrupt(format!("bad base64: {e}")))?;
        let hist: Histogram<u64> = deserializer
            .deserialize(&mut &bytes[..])
            .map_err(|e| corrupt(format!("cannot decode: {e}")))?;
        let ts = interval.start_timestamp().as_secs_f64();
        let base = match (base_time, start_time) {
            (Some(b), _) => b,
            (None, Some(s)) if ts < s - YEAR_SECS => s,
            _ => 0.0,
        };
        let start = base + ts;
        let end = start + interval.duration().as_secs_f64();
        absolute &= start > YEAR_SECS;
        match tags.iter_mut().find(|t| t.tag == tag) {
            Some(t) => {
                t.hist.add(&hist).map_err(|e| corrupt(format!("cannot merge: {e:?}")))?;
                t.intervals += 1;
                t.start = t.start.min(start);
                t.end = t.end.max(end);
            }
            None => {
                let mut hist = hist;
                hist.auto(true);
                tags.push(TagHist { tag: tag.to_string(), hist, intervals: 1, start, end });
            }
        }
    }
    if intervals == 0 {
        return Err(LogError::NoIntervals { path: path.to_path_buf() });
    }
    Ok(Log { path: path.to_path_buf(), unit, tags, intervals, absolute })
}

/// A latency in microseconds with about four significant digits.
pub fn fmt_us(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 10.0 {
        format!("{v:.3}")
    } else if a < 100.0 {
        format!("{v:.2}")
    } else if a < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Seconds since the epoch as `YYYY-MM-DD hh:mm:ss.mmm UTC`.
pub fn fmt_epoch(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as i64;
    let (days, ms) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = crate::ops::traces::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The time covered by a log, for people.
fn span_text(log: &Log) -> String {
    match log.span() {
        Some((start, end)) if log.absolute => {
            format!("{:.3} s, from {} to {}", end - start, fmt_epoch(start), fmt_epoch(end))
        }
        Some((start, end)) => {
            format!("{:.3} s, interval timestamps {start:.3} s to {end:.3} s", end - start)
        }
        None => "no time covered".into(),
    }
}

/// count, the [`PERCENTILES`] and max of a histogram (latencies in µs); `None` when empty.
fn row(log: &Log, h: &Histogram<u64>) -> Option<[f64; 7]> {
    if h.is_empty() {
        return None;
    }
    let mut r = [0.0; 7];
    r[0] = h.len() as f64;
    for (k, (_, q)) in PERCENTILES.iter().enumerate() {
        r[k + 1] = log.us(h.value_at_quantile(*q));
    }
    r[6] = log.us(h.max());
    Some(r)
}

fn header(first: &str, width: usize) -> String {
    let mut s = format!("{first:<width$}");
    for c in ["count"].into_iter().chain(PERCENTILES.map(|(n, _)| n)).chain(["max"]) {
        let _ = write!(s, " {c:>10}");
    }
    s
}

/// The `hist show` table: per tag, the intervals merged, count, percentiles and max (µs), and
/// the seconds covered.
pub fn show(log: &Log) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", log.path.display());
    let _ = writeln!(
        s,
        "  {} interval{}, {} tag{}; {}",
        log.intervals,
        if log.intervals == 1 { "" } else { "s" },
        log.tags.len(),
        if log.tags.len() == 1 { "" } else { "s" },
        span_text(log)
    );
    let w = log.tags.iter().map(|t| t.name().chars().count()).max().unwrap_or(0).max(14);
    let _ = writeln!(s, "  {} {:>10} {:>10}", header("latency (µs)", w), "intervals", "span (s)");
    for t in &log.tags {
        let _ = write!(s, "  {:<w$}", t.name());
        match row(log, &t.hist) {
            Some(r) => {
                let _ = write!(s, " {:>10}", r[0]);
                for v in &r[1..] {
                    let _ = write!(s, " {:>10}", fmt_us(*v));
                }
            }
            None => {
                let _ = write!(s, " {:>10}", 0);
                for _ in 1..7 {
                    let _ = write!(s, " {:>10}", "-");
                }
            }
        }
        let _ = writeln!(s, " {:>10} {:>10.3}", t.intervals, t.end - t.start);
    }
    s
}

/// The `hist compare` table: per tag present in both logs, rows A, B and B/A (count,
/// percentiles and max). Fails when the logs have no tag in common.
pub fn compare(a: &Log, b: &Log) -> Result<String, String> {
    let common: Vec<(&TagHist, &TagHist)> =
        a.tags.iter().filter_map(|ta| b.tag(&ta.tag).map(|tb| (ta, tb))).collect();
    let names = |l: &Log| l.tags.iter().map(TagHist::name).collect::<Vec<_>>().join(", ");
    if common.is_empty() {
        return Err(format!(
            "no tag in common: {} has {}; {} has {}",
            a.path.display(),
            names(a),
            b.path.display(),
            names(b)
        ));
    }
    let mut s = String::new();
    let _ = writeln!(s, "A: {} ({})", a.path.display(), span_text(a));
    let _ = writeln!(s, "B: {} ({})", b.path.display(), span_text(b));
    let w = common.iter().map(|(t, _)| t.name().chars().count() + 2).max().unwrap_or(0).max(14);
    let _ = writeln!(s, "{}", header("latency (µs)", w));
    for (ta, tb) in &common {
        let _ = writeln!(s, "{}", ta.name());
        let (ra, rb) = (row(a, &ta.hist), row(b, &tb.hist));
        for (label, r) in [("  A", ra), ("  B", rb)] {
            let _ = write!(s, "{label:<w$}");
            match r {
                Some(r) => {
                    let _ = write!(s, " {:>10}", r[0]);
                    for v in &r[1..] {
                        let _ = write!(s, " {:>10}", fmt_us(*v));
                    }
                }
                None => {
                    let _ = write!(s, " {:>10}", 0);
                    for _ in 1..7 {
                        let _ = write!(s, " {:>10}", "-");
                    }
                }
            }
            s.push('\n');
        }
        let _ = write!(s, "{:<w$}", "  B/A");
        for k in 0..7 {
            let ratio = match (ra, rb) {
                (Some(ra), Some(rb)) if ra[k] > 0.0 => format!("{:.3}", rb[k] / ra[k]),
                _ => "-".into(),
            };
            let _ = write!(s, " {ratio:>10}");
        }
        s.push('\n');
    }
    fn only<'a>(x: &'a Log, y: &Log) -> Vec<&'a str> {
        x.tags.iter().filter(|t| y.tag(&t.tag).is_none()).map(TagHist::name).collect()
    }
    for (which, list) in [("A", only(a, b)), ("B", only(b, a))] {
        if !list.is_empty() {
            let _ = writeln!(s, "only in {which}: {}", list.join(", "));
        }
    }
    Ok(s)
}

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
fn nice_step(max: f64, target: f64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use std::time::Duration;

    fn log_bytes(tagged: &[(&str, &[u64])]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("test")
            .with_start_time(t0)
            .with_base_time(t0)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut buf, &mut ser)
            .unwrap();
        for (k, (tag, values)) in tagged.iter().enumerate() {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            for v in *values {
                h.record(*v).unwrap();
            }
            let start = Duration::from_secs(k as u64);
            w.write_histogram(&h, start, Duration::from_secs(1), Tag::new(tag)).unwrap();
        }
        buf
    }

    #[test]
    fn merges_intervals_per_tag() {
        let data = log_bytes(&[("a", &[1000, 2000]), ("b", &[5000]), ("a", &[3000])]);
        let log = parse_log(Path::new("x.hlog"), &data, Unit::Ns).unwrap();
        assert_eq!(log.intervals, 3);
        assert_eq!(log.tags.len(), 2);
        let a = log.tag("a").unwrap();
        assert_eq!((a.hist.len(), a.intervals), (3, 2));
        assert_eq!(a.hist.max(), 3001); // highest equivalent of 3000 at 3 digits
        assert!(log.absolute);
        assert_eq!(log.span(), Some((1_700_000_000.0, 1_700_000_003.0)));
        let text = show(&log);
        assert!(text.contains("2023-11-14 22:13:20.000 UTC"), "{text}");
    }

    #[test]
    fn errors_name_the_line() {
        let p = Path::new("x.hlog");
        let e = parse_log(p, b"hello world\n", Unit::Ns).unwrap_err();
        assert!(matches!(e, LogError::NotALog { line: 1, after_valid: false, .. }), "{e}");
        assert!(e.to_string().contains("not an HdrHistogram interval log"), "{e}");
        let e = parse_log(p, b"#only a comment\n", Unit::Ns).unwrap_err();
        assert!(matches!(e, LogError::NoIntervals { .. }), "{e}");
        let e = parse_log(p, b"", Unit::Ns).unwrap_err();
        assert!(matches!(e, LogError::NoIntervals { .. }), "{e}");

        let good = String::from_utf8(log_bytes(&[("a", &[1000]), ("b", &[2000])])).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let b_line = lines.iter().position(|l| l.starts_with("Tag=b")).unwrap();
        // Truncated histogram on the "b" line.
        let mut bad: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let keep = bad[b_line].len() - 12;
        bad[b_line].truncate(keep);
        let e = parse_log(p, bad.join("\n").as_bytes(), Unit::Ns).unwrap_err();
        match &e {
            LogError::Corrupt { line, tag, .. } => {
                assert_eq!((*line, tag.as_str()), (b_line + 1, "b"), "{e}")
            }
            _ => panic!("{e}"),
        }
        // Not base64 at all.
        let mut bad: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        bad[b_line] = "Tag=b,1.000,1.000,2.000,not*base64".into();
        let e = parse_log(p, bad.join("\n").as_bytes(), Unit::Ns).unwrap_err();
        assert!(e.to_string().contains(&format!("line {}", b_line + 1)), "{e}");
        // Garbage after valid lines.
        let e = parse_log(p, format!("{good}garbage\n").as_bytes(), Unit::Ns).unwrap_err();
        assert!(matches!(e, LogError::NotALog { after_valid: true, .. }), "{e}");
        assert!(e.to_string().contains(&format!("line {}", lines.len() + 1)), "{e}");
        // Every truncation of a good log either parses or fails cleanly (no panic).
        for cut in 0..good.len() {
            let _ = parse_log(p, &good.as_bytes()[..cut], Unit::Ns);
        }
    }

    #[test]
    fn epoch_and_labels() {
        assert_eq!(fmt_epoch(0.0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(fmt_epoch(951_782_400.5), "2000-02-29 00:00:00.500 UTC");
        assert_eq!(fmt_epoch(1_795_241_831.121), "2026-11-21 06:17:11.121 UTC");
        let labels: Vec<String> = (0..6).map(percent_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(fmt_us(0.951), "0.951");
        assert_eq!(fmt_us(671.23), "671.2");
        assert_eq!(fmt_us(11624.4), "11624");
        assert_eq!(nice_step(950.0, 6.0), 200.0);
        assert_eq!(nice_step(14.0, 6.0), 2.5);
    }

    #[test]
    fn short_names_disambiguate() {
        let a = Path::new("/r/run1/load.hlog");
        let b = Path::new("/r/run2/load.hlog");
        let c = Path::new("/r/run2/gateway.hlog");
        assert_eq!(short_names(&[a, b]), ["run1/load.hlog", "run2/load.hlog"]);
        assert_eq!(short_names(&[a, c]), ["load.hlog", "gateway.hlog"]);
    }

    #[test]
    fn distribution_ends_at_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..=10_000 {
            h.record(v).unwrap();
        }
        let pts = distribution(&h, 1.0);
        assert_eq!(pts[0], (1.0, 1.0));
        assert_eq!(pts.last().unwrap().1, h.max() as f64);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!((1e4..2e4).contains(&pts.last().unwrap().0), "{:?}", pts.last());
        let mut one = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        one.record_n(50, 3000).unwrap();
        assert_eq!(distribution(&one, 1.0), [(1.0, 50.0), (3000.0, 50.0)]);
    }
}
