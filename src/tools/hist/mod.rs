//! `fleetgate hist`: reads HdrHistogram interval logs (`.hlog`), the files written by
//! [`crate::tools::loadgen::Report::write_hlog`] (tags `echo`, `handshake`) and by the gateway's
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
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, LogIteratorError, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

mod plot;

pub use plot::{
    PlotOptions, Series, distribution, percent_label, plot, plot_svg, series, short_names,
    svg_to_png,
};

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

/// One interval of a log written by [`write_log`]: `hist`, tagged `tag`, covering `len` from
/// `start` after the log's start time.
#[derive(Clone, Copy, Debug)]
pub struct Interval<'a> {
    /// The interval's tag (`Tag=` in the log).
    pub tag: &'a str,
    /// When the interval starts, after the log's start time.
    pub start: Duration,
    /// How long the interval lasts.
    pub len: Duration,
    /// The values.
    pub hist: &'a Histogram<u64>,
}

/// Writes an HdrHistogram interval log (V2 deflate) to `out` with `hdrhistogram`'s writer: the
/// `comment`, `StartTime` and `BaseTime` both `start`, then the intervals in order.
pub fn write_log<'a>(
    out: &mut impl std::io::Write,
    comment: &str,
    start: SystemTime,
    intervals: impl IntoIterator<Item = Interval<'a>>,
) -> Result<(), String> {
    let mut ser = V2DeflateSerializer::new();
    let mut w = IntervalLogWriterBuilder::new()
        .add_comment(comment)
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1.0)
        .begin_log_with(out, &mut ser)
        .map_err(|e| e.to_string())?;
    for i in intervals {
        w.write_histogram(i.hist, i.start, i.len, Tag::new(i.tag))
            .map_err(|e| format!("interval {}: {e:?}", i.tag))?;
    }
    Ok(())
}

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
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        Err(_) => format!("{secs} s after the epoch"),
    }
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

/// Appends a [`row`]'s cells under [`header`]'s columns: the count, then the percentiles and max
/// in µs; an empty histogram shows a count of 0 and dashes.
fn write_cells(s: &mut String, r: Option<[f64; 7]>) {
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
        write_cells(&mut s, row(log, &t.hist));
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
            write_cells(&mut s, r);
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

#[cfg(test)]
mod tests {
    use super::plot::nice_step;
    use super::*;

    fn log_bytes(tagged: &[(&str, &[u64])]) -> Vec<u8> {
        let hists: Vec<Histogram<u64>> = tagged
            .iter()
            .map(|(_, values)| {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                for v in *values {
                    h.record(*v).unwrap();
                }
                h
            })
            .collect();
        let intervals =
            tagged.iter().zip(&hists).enumerate().map(|(k, ((tag, _), hist))| Interval {
                tag,
                start: Duration::from_secs(k as u64),
                len: Duration::from_secs(1),
                hist,
            });
        let mut buf = Vec::new();
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        write_log(&mut buf, "test", t0, intervals).unwrap();
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
