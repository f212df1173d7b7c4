//! `fleetgate hist` end to end: logs written by `Report::write_hlog` and by `hdrhistogram`'s
//! writer (through `hist::write_log`) with the housekeeping thread's settings, read back by the binary (`show`, `compare`,
//! `plot`) and, when the Python `hdrhistogram` package is installed, by an independent reader
//! (`scripts/check_hlog.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

use fleetgate::tools::hist::{Interval, write_log};
use fleetgate::tools::loadgen::{Report, Scenario};
use hdrhistogram::Histogram;

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds")
}

/// echo: 1, 2, ..., 10,000 µs, each value times `scale`; handshake: 990 × 200 µs, 10 × 5 ms.
fn report(scale: u64) -> Report {
    let mut latency = hist();
    for us in 1..=10_000u64 {
        latency.record(us * 1000 * scale).expect("record");
    }
    let mut handshake = hist();
    handshake.record_n(200_000, 990).expect("record");
    handshake.record_n(5_000_000, 10).expect("record");
    Report {
        devices: 10,
        seconds: 8.0,
        sent: 10_000,
        received: 10_000,
        logons: 1000,
        latency,
        handshake,
        ..Report::empty(Scenario::Steady)
    }
}

/// A log like the housekeeping thread's: tags service, cycle and handshake, one interval per
/// second, with empty handshake intervals. service: second k holds 100 × (k+1) µs.
fn write_gateway_log(path: &Path) {
    let mut seconds = Vec::new();
    for k in 0..3u64 {
        let (mut service, mut cycle, handshake) = (hist(), hist(), hist());
        service.record_n((k + 1) * 100_000, 100).expect("record");
        cycle.record_n(50_000, 1000).expect("record");
        seconds.push((Duration::from_millis(100 + 1000 * k), [service, cycle, handshake]));
    }
    let intervals = seconds.iter().flat_map(|(start, hists)| {
        ["service", "cycle", "handshake"].into_iter().zip(hists).map(|(tag, hist)| Interval {
            tag,
            start: *start,
            len: Duration::from_secs(1),
            hist,
        })
    });
    let mut f = std::fs::File::create(path).expect("create");
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let comment = "fleetgate gateway histograms (ns): service, cycle, handshake";
    write_log(&mut f, comment, t0, intervals).expect("write log");
}

fn fleetgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetgate")).args(args).output().expect("run fleetgate")
}

fn ok(args: &[&str]) -> String {
    let out = fleetgate(args);
    assert!(
        out.status.success(),
        "fleetgate {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(args: &[&str]) -> String {
    let out = fleetgate(args);
    assert!(!out.status.success(), "fleetgate {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8")
}

/// The cells of the table row whose first cell is `label`.
fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&label))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"))
}

fn num(cell: &str) -> f64 {
    cell.parse().unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

/// `got` within `rel` (relative) of `want`.
fn near(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= want.abs() * rel
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn show_compare_plot_and_independent_reader() {
    let dir = TempDir(std::env::temp_dir().join(format!("fleetgate-hist-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let p = |name: &str| dir.0.join(name).to_str().expect("utf-8 path").to_string();
    let (a, b, gw) = (p("a.hlog"), p("b.hlog"), p("gateway.hlog"));
    report(1).write_hlog(Path::new(&a)).expect("write a");
    report(2).write_hlog(Path::new(&b)).expect("write b");
    write_gateway_log(Path::new(&gw));

    // show: columns count, p50, p90, p99, p99.9, p99.99, max (µs), intervals, span.
    let out = ok(&["hist", "show", &a]);
    print!("{out}");
    let echo = row(&out, "echo");
    assert_eq!(num(echo[1]), 10_000.0, "{out}");
    assert!(near(num(echo[2]), 5000.0, 0.002), "p50 {out}");
    assert!(near(num(echo[4]), 9900.0, 0.002), "p99 {out}");
    assert!(near(num(echo[7]), 10_000.0, 0.002), "max {out}");
    assert_eq!((echo[8], echo[9]), ("1", "8.000"), "{out}");
    let hs = row(&out, "handshake");
    assert_eq!(num(hs[1]), 1000.0, "{out}");
    assert!(near(num(hs[2]), 200.0, 0.002), "p50 {out}");
    assert!(near(num(hs[4]), 200.0, 0.002), "p99 {out}");
    assert!(near(num(hs[5]), 5000.0, 0.002), "p99.9 {out}");

    let out = ok(&["hist", "show", &gw]);
    print!("{out}");
    assert!(out.contains("9 intervals, 3 tags"), "{out}");
    assert!(
        out.contains("from 2027-01-15 08:00:00.100 UTC to 2027-01-15 08:00:03.100 UTC"),
        "{out}"
    );
    let service = row(&out, "service");
    assert_eq!(num(service[1]), 300.0, "{out}");
    assert!(near(num(service[2]), 200.0, 0.002), "p50 {out}");
    assert!(near(num(service[7]), 300.0, 0.002), "max {out}");
    assert_eq!(row(&out, "handshake")[1..3], ["0", "-"], "{out}");

    // compare: B's echo values are twice A's.
    let out = ok(&["hist", "compare", &a, &b]);
    print!("{out}");
    let ratios: Vec<&str> = out
        .lines()
        .skip_while(|l| l.trim() != "echo")
        .find(|l| l.trim_start().starts_with("B/A"))
        .expect("echo B/A row")
        .split_whitespace()
        .collect();
    assert_eq!(ratios[1], "1.000", "count ratio {out}");
    for (k, name) in ["p50", "p90", "p99", "p99.9", "p99.99", "max"].iter().enumerate() {
        assert!(near(num(ratios[k + 2]), 2.0, 0.003), "{name} ratio {out}");
    }
    let out = ok(&["hist", "compare", &a, &gw]);
    assert!(out.contains("only in A: echo") && out.contains("only in B: service, cycle"), "{out}");
    assert_eq!(row(&out, "B")[1..3], ["0", "-"], "gateway handshake is empty: {out}");
    assert_eq!(row(&out, "B/A")[1..3], ["-", "-"], "{out}");

    // plot: one polyline per (file, tag) with values; gateway's handshake is empty.
    let svg_path = p("x.svg");
    let out = fleetgate(&["hist", "plot", &a, &b, &gw, "-o", &svg_path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&svg_path).expect("svg");
    let doc = resvg::usvg::roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines: Vec<_> = doc.descendants().filter(|n| n.tag_name().name() == "polyline").collect();
    assert_eq!(lines.len(), 6, "a: echo, handshake; b: echo, handshake; gateway: service, cycle");
    for l in &lines {
        let pts = l.attribute("points").expect("points").split_whitespace().count();
        assert!(pts >= 2, "a line of {pts} points");
    }
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    for label in ["a.hlog: echo", "b.hlog: handshake", "gateway.hlog: service", "99.99%", "90%"] {
        assert!(text.contains(label), "no {label:?} in the SVG");
    }

    let png_path = p("x.png");
    let out =
        fleetgate(&["hist", "plot", &a, &gw, "--tag", "echo", "--tag", "service", "-o", &png_path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("font") {
        println!("PNG check skipped: {stderr}");
    } else {
        assert!(out.status.success(), "{stderr}");
        let png = std::fs::read(&png_path).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let wh = (
            u32::from_be_bytes(png[16..20].try_into().unwrap()),
            u32::from_be_bytes(png[20..24].try_into().unwrap()),
        );
        assert_eq!(wh, (960, 600));
        assert!(stderr.contains("2 series"), "{stderr}");
    }
    let err = fails(&["hist", "plot", &a, "-o", &p("x.jpg")]);
    assert!(err.contains(".svg or .png"), "{err}");

    // Errors: missing file, not a log, corrupt histogram line.
    let err = fails(&["hist", "show", &p("missing.hlog")]);
    assert!(err.contains("cannot read") && err.contains("missing.hlog"), "{err}");
    let not_log = p("not.hlog");
    std::fs::write(&not_log, "just some text\n").expect("write");
    let err = fails(&["hist", "show", &not_log]);
    assert!(err.contains("not an HdrHistogram interval log"), "{err}");
    let corrupt = p("corrupt.hlog");
    let text = std::fs::read_to_string(&a).expect("read a");
    let (n, line) = text.lines().enumerate().find(|(_, l)| l.starts_with("Tag=handshake")).unwrap();
    let text = text.replace(line, &line[..line.len() - 20]);
    std::fs::write(&corrupt, text).expect("write");
    let err = fails(&["hist", "show", &corrupt]);
    assert!(err.contains(&format!("line {}: corrupt histogram (tag handshake)", n + 1)), "{err}");

    // The independent reader.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_hlog.py");
    let have_python = Command::new("python3")
        .args(["-c", "import hdrh"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_python {
        println!(
            "independent check SKIPPED: `python3 -c 'import hdrh'` failed; the Python package \
             hdrhistogram is not installed (pip install hdrhistogram)"
        );
        return;
    }
    let out = Command::new("python3").arg(&script).args([&a, &gw]).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let tag = |name: &str| -> Vec<&str> {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("tag={name} ")))
            .unwrap_or_else(|| panic!("no tag={name} in\n{stdout}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(tag("echo")[1], "total=10000");
    assert!(near(num(tag("echo")[2].trim_start_matches("p99_us=")), 9900.0, 0.002));
    assert_eq!(tag("handshake")[1], "total=1000");
    assert_eq!(tag("service")[1], "total=300");
    assert_eq!(tag("cycle")[1], "total=3000");
    // check_hlog.py fails on a file that is not a log and on a corrupt one.
    for bad in [&not_log, &corrupt] {
        let out = Command::new("python3").arg(&script).arg(bad).output().expect("python3");
        assert!(!out.status.success(), "check_hlog.py accepted {bad}");
    }
}
