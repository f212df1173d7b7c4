#!/usr/bin/env python3
"""Plots and judges a soak's samples (scripts/soak.sh): a plain SVG, no plotting library.

usage: soak_plot.py samples.csv out.svg [max_growth_kib_per_hour]

samples.csv columns: unix_s, rss_kib, fds, sessions, active, load1.
Verdict (exit status 1 on FAIL):
  - RSS: the least-squares slope over the last 45 minutes (the last 3/4 of a shorter run), in
    KiB per hour, must not exceed the threshold (default 2048);
  - fds: the last sample must not exceed the highest sample of the first quarter of the fit
    window by more than 16.
"""
import csv
import sys


def fit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def panel(out, x0, y0, w, h, title, ts, ys, color, unit, line=None):
    """One chart: a polyline of (ts, ys) in a w x h box at (x0, y0); `line` = (slope, icept, t_from)."""
    tmax = max(ts) or 1.0
    lo, hi = min(ys), max(ys)
    if hi == lo:
        hi = lo + 1
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad

    def px(t):
        return x0 + 60 + (w - 80) * t / tmax

    def py(v):
        return y0 + 25 + (h - 55) * (1 - (v - lo) / (hi - lo))

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="white" stroke="#ccc"/>')
    out.append(f'<text x="{x0 + 60}" y="{y0 + 17}" font-size="13" font-family="sans-serif">{title}</text>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = py(v)
        out.append(f'<line x1="{x0 + 60}" x2="{x0 + w - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{x0 + 55}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
            f'font-family="sans-serif">{v:.0f}{unit}</text>'
        )
    for k in range(6):
        t = tmax * k / 5
        out.append(
            f'<text x="{px(t):.1f}" y="{y0 + h - 12}" font-size="10" text-anchor="middle" '
            f'font-family="sans-serif">{t / 60:.0f} min</text>'
        )
    pts = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in zip(ts, ys))
    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    if line:
        slope, icept, t_from = line
        out.append(
            f'<line x1="{px(t_from):.1f}" y1="{py(slope * t_from + icept):.1f}" x2="{px(tmax):.1f}" '
            f'y2="{py(slope * tmax + icept):.1f}" stroke="black" stroke-dasharray="5,3"/>'
        )


def main():
    path, svg = sys.argv[1], sys.argv[2]
    threshold = float(sys.argv[3]) if len(sys.argv) > 3 else 2048.0
    rows = [r for r in csv.DictReader(open(path)) if int(r["rss_kib"] or 0) > 0]
    if len(rows) < 4:
        print(f"soak verdict: FAIL (only {len(rows)} samples)")
        return 1
    t0 = float(rows[0]["unix_s"])
    ts = [float(r["unix_s"]) - t0 for r in rows]
    rss = [int(r["rss_kib"]) for r in rows]
    fds = [int(r["fds"]) for r in rows]
    sessions = [int(r["sessions"]) for r in rows]
    per_session = [r * 1024 / s if s else 0 for r, s in zip(rss, sessions)]
    load = [float(r["load1"]) for r in rows]
    span = ts[-1]
    window = min(45 * 60, span * 0.75)
    t_from = span - window
    sel = [i for i, t in enumerate(ts) if t >= t_from]
    slope_s, icept = fit([ts[i] for i in sel], [rss[i] for i in sel])
    growth_per_h = slope_s * 3600
    quarter = [fds[i] for i in sel if ts[i] < t_from + window / 4] or [fds[sel[0]]]
    fd_ok = fds[-1] <= max(quarter) + 16
    rss_ok = growth_per_h <= threshold

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="960" height="980" viewBox="0 0 960 980">',
        '<rect width="960" height="980" fill="#fafafa"/>',
    ]
    panel(out, 10, 10, 940, 230,
          f"gateway RSS (KiB); dashed: fit over the last {window / 60:.0f} min, "
          f"{growth_per_h:+.0f} KiB/h", ts, rss, "#c0392b", "", (slope_s, icept, t_from))
    panel(out, 10, 250, 940, 230, "open fds", ts, fds, "#2874a6", "")
    panel(out, 10, 490, 940, 230, "sessions (all states)", ts, sessions, "#1e8449", "")
    panel(out, 10, 730, 940, 230, "RSS per session (bytes); machine load average in the csv",
          ts, per_session, "#7d3c98", "")
    out.append("</svg>")
    with open(svg, "w") as f:
        f.write("\n".join(out))

    print(f"samples: {len(rows)} over {span / 60:.1f} min, every ~{span / max(len(rows) - 1, 1):.0f} s")
    print(f"rss: first {rss[0]} KiB, max {max(rss)} KiB, last {rss[-1]} KiB; "
          f"fit over the last {window / 60:.1f} min: {growth_per_h:+.1f} KiB/h "
          f"(limit {threshold:.0f}) -> {'ok' if rss_ok else 'GROWING'}")
    print(f"fds: first {fds[0]}, max {max(fds)}, last {fds[-1]}; first quarter of the window max "
          f"{max(quarter)} -> {'ok' if fd_ok else 'GROWING'}")
    print(f"sessions: max {max(sessions)}, mean {sum(sessions) / len(sessions):.0f}; "
          f"rss per session at the peak: {min(p for p in per_session if p) / 1024:.1f} KiB")
    print(f"machine load average (1 min): mean {sum(load) / len(load):.2f}, max {max(load):.2f}")
    ok = rss_ok and fd_ok
    print(f"soak verdict: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
