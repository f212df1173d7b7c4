#!/usr/bin/env python3
"""Reads HdrHistogram interval logs (.hlog) with an independent reader, the Python
`hdrhistogram` package from PyPI (module `hdrh`, its `HistogramLogReader`), and prints per-tag
totals and p99, to show that fleetgate's logs are readable by other HdrHistogram tools.

    pip install hdrhistogram
    scripts/check_hlog.py results/demo-*/load.hlog results/demo-*/gateway.hlog

Output, per file:

    FILE: N intervals
      tag=echo total=5999 p99_us=11624.447 max_us=952631.295
      ...
    FILE: total=6210 ok

Exits 1 if a file cannot be read or parsed, if an interval line was not decoded (the
reader skips lines it does not understand, so the lines are counted separately), or if a file's
total count is zero; 2 if the package is missing or the arguments are wrong.
"""

import argparse
import sys

UNITS_IN_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def interval_lines(path):
    """Lines that are neither blank, a comment, nor the legend: each should be an interval."""
    n = 0
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#") and not s.startswith('"StartTimestamp"'):
                n += 1
    return n


def check(path, us_per_unit, hdrh_log, hdrh_histogram):
    expected = interval_lines(path)
    reader = hdrh_log.HistogramLogReader(path, hdrh_histogram.HdrHistogram(1, 2, 3))
    merged = {}  # tag -> histogram, in order of first appearance
    decoded = 0
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        decoded += 1
        tag = h.get_tag() or "(untagged)"
        if tag in merged:
            merged[tag].add(h)
        else:
            merged[tag] = h
    if decoded != expected:
        raise ValueError(
            f"{expected} interval lines but the reader decoded {decoded} histograms"
        )
    if decoded == 0:
        raise ValueError("no interval histograms")
    print(f"{path}: {decoded} intervals")
    total = 0
    for tag, h in merged.items():
        count = h.get_total_count()
        total += count
        if count == 0:
            print(f"  tag={tag} total=0 (empty)")
            continue
        p99 = h.get_value_at_percentile(99.0) * us_per_unit
        mx = h.get_max_value() * us_per_unit
        print(f"  tag={tag} total={count} p99_us={p99:.3f} max_us={mx:.3f}")
    if total == 0:
        raise ValueError("every histogram is empty (total count 0)")
    print(f"{path}: total={total} ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help=".hlog files")
    ap.add_argument(
        "--unit",
        choices=sorted(UNITS_IN_US),
        default="ns",
        help="unit of the recorded values (fleetgate records ns); p99 is printed in us",
    )
    args = ap.parse_args()
    try:
        from hdrh import histogram as hdrh_histogram
        from hdrh import log as hdrh_log
    except ImportError:
        print(
            "check_hlog.py: the Python package hdrhistogram is missing: pip install hdrhistogram",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for path in args.files:
        try:
            check(path, UNITS_IN_US[args.unit], hdrh_log, hdrh_histogram)
        except Exception as e:  # noqa: BLE001 - any failure to read is the verdict
            print(f"{path}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
