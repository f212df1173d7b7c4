#!/usr/bin/env python3
"""The report of scripts/bench-compare.sh: reads the raw outputs in a results folder, prints the
table of ratios against the targets of issue 12, and writes results.json and latency.svg there.

    scripts/bench_compare.py results/<timestamp>-bench-compare

A figure whose reference is missing (tool not installed, run failed) is printed as "missing"
with the reason; a figure fleetgate cannot measure yet is printed as "not measured yet: needs
...". Nothing here invents a value.
"""
import json
import math
import os
import re
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "."


def path(name):
    return os.path.join(OUT, name)


def load_json(name):
    try:
        with open(path(name)) as f:
            text = f.read().strip()
        # The generator prints one JSON line; take the last line that parses.
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, ValueError):
        pass
    return None


def read(name):
    try:
        with open(path(name)) as f:
            return f.read()
    except OSError:
        return None


def env_missing():
    text = read("env.txt") or ""
    return [l[len("MISSING "):] for l in text.splitlines() if l.startswith("MISSING ")]


MISSING = env_missing()


def why_missing(tool):
    for m in MISSING:
        if m.lower().startswith(tool.lower()):
            return f"missing ({m})"
    return "missing (run failed or part skipped; see the raw files)"


# ------------------------------------------------------------------ parsers (latency in µs)


def json_latency(name, key="latency_ns"):
    """The percentiles (µs) of the nanosecond summary `key` in a fleetgate JSON file."""
    j = load_json(name)
    if not j or not j.get(key, {}).get("count"):
        return None
    l = j[key]
    fields = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9"),
              ("p99.99", "p99_99"), ("max", "max")]
    return {label: l[field] / 1e3 for label, field in fields}


def fg_latency(name):
    return json_latency(f"{name}.json")


def floor_latency(name, key="latency_ns"):
    return json_latency(f"{name}.client.json", key)


def sockperf(name):
    text = read(f"{name}.txt")
    if not text:
        return None
    pct = {}
    for m in re.finditer(r"percentile\s+([\d.]+)\s+=\s+([\d.]+)", text):
        q = float(m.group(1))
        pct[f"p{q:g}"] = float(m.group(2))
    m = re.search(r"<MAX> observation\s+=\s+([\d.]+)", text)
    if m:
        pct["max"] = float(m.group(1))
    total = re.search(r"\[Total Run\] RunTime=([\d.]+) sec;.*?SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    if "p50" not in pct:
        return None
    return {
        "pct": pct,
        "received_total": int(total.group(3)) if total else None,
        "sent_per_s": int(total.group(2)) / float(total.group(1)) if total else None,
        "valid_rate": int(valid.group(3)) / float(valid.group(1)) if valid else None,
    }


def qf_rtt(name):
    text = read(f"{name}.txt") or ""
    m = re.search(r"latency_from_intended_us\s+(.*)", text)
    if not m:
        return None
    kv = dict(x.split("=", 1) for x in m.group(1).split())
    return {k: float(v) for k, v in kv.items() if k in ("p50", "p90", "p99", "p99.9", "p99.99", "max")}


def qf_resend(name):
    text = read(f"{name}.txt") or ""
    m = re.search(r"median_resent_per_s=(\d+) median_elapsed_ms=([\d.]+) median_first_us=(\d+)", text)
    if not m:
        return None
    return {"resent_per_s": float(m.group(1)), "elapsed_ms": float(m.group(2)), "first_us": float(m.group(3))}


def metric(name, key):
    text = read(f"{name}.metrics.txt") or ""
    vals = [float(m.group(1)) for m in re.finditer(rf"^fleetgate_{key}(?:{{[^}}]*}})?\s+([\d.e+]+)$", text, re.M)]
    return sum(vals) if vals else None


def fg_cpu(name):
    """Shard-thread and gateway CPU per echo (µs), echoes/s, shard busy share, others' CPU.

    The CPU window lies inside the generator's measured window (see `window` in the script); the
    generator's echo count is scaled to it (open loop: a constant rate)."""
    j, c = load_json(f"{name}.json"), load_json(f"{name}.cpu.json")
    if not j or not c or not j.get("received") or not c.get("shard_ns"):
        return None
    secs = c["interval_ns"] / 1e9
    echoes = j["received"] * secs / c.get("run_s", j["seconds"])
    shard_s = c["shard_ns"] / 1e9
    gw_s = (c.get("gateway_ns") or 0) / 1e9
    gen_s = c.get("generator_ns")
    gen_s = gen_s / 1e9 if gen_s is not None else None
    busy_s = c["machine_busy_ticks"] / c["clk_tck"]
    msgs = metric(name, "app_messages_received_total")
    dgrams = metric(name, "datagrams_received_total")
    per_dgram = msgs / dgrams if msgs and dgrams else None
    return {
        "echoes": echoes,
        "rate": j["received"] / j["seconds"],
        "shard_us_per_echo": shard_s * 1e6 / echoes,
        "gateway_us_per_echo": gw_s * 1e6 / echoes,
        "shard_busy": shard_s / secs,
        "gateway_cpu_share": gw_s / secs,
        "generator_cpu_share": gen_s / secs if gen_s is not None else None,
        "echoes_per_shard_cpu_s": echoes / shard_s if shard_s > 0 else None,
        "msgs_per_datagram": per_dgram,
        "others_cpu_share": max(0.0, busy_s - gw_s - (gen_s or 0)) / secs,
        "loadavg": c.get("loadavg_start"),
        "errors": j.get("errors_total"),
        "retransmits": j.get("retransmits"),
    }


def profile(name):
    """The gateway profile a run used (written by gw_start), as a short note."""
    p = (read(f"{name}.profile") or "").strip()
    return f"profile {os.path.basename(p)}" if p else ""


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def floor_server(name):
    s, cl = load_json(f"{name}.server.json"), load_json(f"{name}.client.json")
    if not s or not s.get("echoed"):
        return None
    cpu_s = s["cpu_us"] / 1e6
    return {
        "us_per_echo": s["cpu_us_per_echo"],
        "echoes": s["echoed"],
        "echoes_per_cpu_s": s["echoed"] / cpu_s if cpu_s > 0 else None,
        "busy": cpu_s / s["wall_s"] if s["wall_s"] else None,
        "client_rate": cl["rate_per_s"] if cl else None,
        "client_lateness_us": (cl["send_lateness_ns"]["p50"] / 1e3, cl["send_lateness_ns"]["p99"] / 1e3)
        if cl and cl["send_lateness_ns"]["count"]
        else None,
        "note": s.get("note", ""),
    }


def sp_cpu(name):
    sp, c = sockperf(name), load_json(f"{name}.cpu.json")
    if not sp or not c or not sp["received_total"]:
        return None
    return {"us_per_echo": c["server_ns"] / 1e3 / sp["received_total"], "echoes": sp["received_total"]}


# ------------------------------------------------------------------ table

ROWS = []


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 1e5:
        return f"{v / 1e3:,.0f}k{unit}"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.2f}{unit}" if abs(v) < 10 else f"{v:.1f}{unit}"


def row(section, what, fg, ref_name, ref, target=None, better="lower", note="", fg_text=None, ref_text=None):
    """target: the ratio fleetgate/reference must stay <= (better=lower) or >= (better=higher)."""
    ratio = fg / ref if isinstance(fg, (int, float)) and isinstance(ref, (int, float)) and ref else None
    if ratio is None:
        verdict = "missing" if fg_text is None or fg_text.startswith("missing") or ref is None else "-"
        if fg_text and fg_text.startswith("not measured"):
            verdict = "not measured"
    elif target is None:
        verdict = "info"
    elif better == "lower":
        verdict = "ok" if ratio <= target else "MISS"
    else:
        verdict = "ok" if ratio >= target else "MISS"
    tgt = "" if target is None else (f"<= {target:g}x" if better == "lower" else f">= {target:g}x")
    ROWS.append(
        {
            "section": section,
            "what": what,
            "fleetgate": fg if isinstance(fg, (int, float)) else None,
            "fleetgate_text": fg_text or fmt(fg),
            "reference": ref_name,
            "reference_value": ref if isinstance(ref, (int, float)) else None,
            "reference_text": ref_text or fmt(ref),
            "ratio": ratio,
            "target": tgt,
            "verdict": verdict,
            "note": note,
        }
    )


def lat_rows(section, fg, ref, ref_name, targets, ref_note=""):
    for q, t in zip(("p50", "p99", "p99.9"), targets):
        row(
            section,
            f"{q} (µs)",
            fg[q] if fg else None,
            ref_name,
            ref[q] if ref and q in ref else None,
            t,
            fg_text=None if fg else "missing (fleetgate run failed; see the raw files)",
            ref_text=None if ref else why_missing(ref_name.split()[0]),
            note=ref_note if q == "p50" else "",
        )


def sp_note(sp, rate):
    """sockperf measures from its actual send time: say how far behind its schedule it fell."""
    if not sp or not sp.get("sent_per_s") or not rate:
        return ""
    share = sp["sent_per_s"] / rate
    note = f"sockperf measures from its actual send time; it sent {100 * share:.0f}% of the intended {rate:,.0f}/s"
    return note + (" (it fell behind: its own stalls are not in its figures)" if share < 0.98 else "")


def pp_rows(sec, fg, sp, name, mode):
    """fleetgate and the bare echo loop measured as sockperf measures (one message in flight,
    from its actual send): the same targets by sockperf's own method, and how much of the
    headline ratio is the method rather than the server."""
    fpp = fg_latency(name.replace("floor-", "fg-"))
    if fpp or sp:
        for q, t in zip(("p50", "p99", "p99.9"), (1.25, 1.5, 2.0)):
            row(sec, f"{q} (µs), ping-pong", fpp[q] if fpp else None, "sockperf, by its method", sp["pct"].get(q) if sp else None, t,
                fg_text=None if fpp else "missing (fleetgate ping-pong run failed; see the raw files)",
                ref_text=None if sp else why_missing("sockperf"),
                note=("fleetgate load --ping-pong: one request in flight, latency from its actual send, as sockperf "
                      "measures; the headline above is open loop from the intended send time") if q == "p50" else "")
    pp = floor_latency(name, "latency_from_send_ns")
    if not pp:
        return
    for q in ("p50", "p99", "p99.9"):
        row(sec, f"{q} (µs), info", pp[q], "sockperf; left column: floor ping-pong", sp["pct"].get(q) if sp else None,
            fg_text=fmt(pp[q]),
            note=(f"here the fleetgate column is echo_floor {mode} driven like sockperf (one in flight, from actual send); "
                  "an open-loop client instead charges every message due during a stall") if q == "p50" else "")


RATE = None
SPIN = False


def main():
    global RATE, SPIN
    m = re.search(r"rates (\d+) and", read("env.txt") or "")
    RATE = float(m.group(1)) if m else None
    # The latency clients busy-polled (LOAD_SPIN=1) or slept; old results say neither.
    SPIN = "latency clients (udp, tcp parts): busy-poll" in (read("env.txt") or "")
    plot_series = []

    # --- UDP latency at 10k/s
    fg, sp, fl = fg_latency("fg-udp-10k"), sockperf("sp-udp-10k"), floor_latency("floor-udp-10k")
    if fg or sp or fl:
        sec = f"UDP echo 10k/s, 1,000 sessions (fleetgate: from intended send time; {profile('fg-udp-10k') or 'profile ?'})"
        lat_rows(sec, fg, sp["pct"] if sp else None, "sockperf UDP ping-pong", (1.25, 1.5, 2.0), sp_note(sp, RATE))
        for q in ("p50", "p99", "p99.9"):
            row(sec, f"{q} (µs), info", fg[q] if fg else None, "echo_floor udp-mmsg (from intended)", fl[q] if fl else None)
        fs = floor_latency("floor-udp-10k", "latency_from_send_ns")
        for q in ("p50", "p99", "p99.9"):
            row(sec, f"{q} (µs), info", fg[q] if fg else None, "echo_floor udp-mmsg (from actual send)", fs[q] if fs else None)
        other = "sleeping" if SPIN else "spinning"
        fsp = floor_latency("floor-udp-10k-other") or floor_latency("floor-udp-10k-spin")
        for q in ("p50", "p99", "p99.9"):
            row(sec, f"{q} (µs), info", fg[q] if fg else None, f"echo_floor udp-mmsg, {other} client", fsp[q] if fsp else None,
                note=f"the floor with a client that {'sleeps until each send or reply' if SPIN else 'spins between sends, as sockperf does'} (from intended)" if q == "p50" else "")
        pp_rows(sec, fg, sp, "floor-udp-10k-pp", "udp-mmsg")
        plot_series += [("fleetgate UDP 10k/s", fg), ("sockperf UDP 10k/s", sp["pct"] if sp else None), ("echo_floor UDP 10k/s", fl),
                        (f"echo_floor UDP 10k/s, {other} client", fsp)]
        c = metric("fg-udp-10k", "cycles_over_1ms_total")
        row(sec, "cycles over 1 ms (steady run)", c, "target", 0.0, None, fg_text=None if c is not None else "missing (no metrics scrape)", ref_text="0")
        if c is not None:
            ROWS[-1]["verdict"] = "ok" if c == 0 else "MISS"

    # --- TCP latency at 10k/s
    fg, sp, fl, qf = fg_latency("fg-tcp-10k"), sockperf("sp-tcp-10k"), floor_latency("floor-tcp-10k"), qf_rtt("qf-rtt-10k")
    if fg or sp or fl or qf:
        sec = f"TCP echo 10k/s, 200 clients ({profile('fg-tcp-10k') or 'profile ?'})"
        lat_rows(sec, fg, sp["pct"] if sp else None, "sockperf TCP ping-pong", (1.25, 1.5, 2.0), sp_note(sp, RATE))
        for q in ("p50", "p99", "p99.9"):
            row(sec, f"{q} (µs), info", fg[q] if fg else None, "QuickFIX rtt (from intended)", qf[q] if qf else None,
                ref_text=None if qf else why_missing("QuickFIX"))
        for q in ("p50", "p99", "p99.9"):
            row(sec, f"{q} (µs), info", fg[q] if fg else None, "echo_floor tcp-epoll (from intended)", fl[q] if fl else None)
        pp_rows(sec, fg, sp, "floor-tcp-10k-pp", "tcp-epoll")
        plot_series += [("fleetgate TCP 10k/s", fg), ("sockperf TCP 10k/s", sp["pct"] if sp else None),
                        ("QuickFIX rtt 10k/s", qf), ("echo_floor TCP 10k/s", fl)]

    # --- CPU per echo
    sec = "CPU per echo (µs; fleetgate: its shard thread over the measured window)"
    n10 = "fg-udp-10k-cpu" if fg_cpu("fg-udp-10k-cpu") else "fg-udp-10k"
    f10, s10 = fg_cpu(n10), sp_cpu("sp-udp-10k")
    if f10 or s10:
        row(sec, "10k/s", f10["shard_us_per_echo"] if f10 else None, "sockperf UDP server", s10["us_per_echo"] if s10 else None, 1.0,
            ref_text=None if s10 else why_missing("sockperf"), note=f"fleetgate {profile(n10)}")
        if f10:
            row(sec, "10k/s, whole gateway process, info", f10["gateway_us_per_echo"], "sockperf UDP server", s10["us_per_echo"] if s10 else None)
        fl10 = floor_server("floor-udp-10k")
        if fl10:
            row(sec, "10k/s, info", f10["shard_us_per_echo"] if f10 else None, "echo_floor udp-mmsg", fl10["us_per_echo"])
        if n10 != "fg-udp-10k" and fg_cpu("fg-udp-10k"):
            fl = fg_cpu("fg-udp-10k")
            row(sec, "10k/s, latency run, info", fl["shard_us_per_echo"], "sockperf UDP server", s10["us_per_echo"] if s10 else None,
                note=f"the UDP latency run's shard ({profile('fg-udp-10k')}): a spinning shard costs a core whatever the rate")
    f60 = fg_cpu("fg-udp-60k")
    fm, fu = floor_server("floor-mmsg-60k"), floor_server("floor-uring-60k")
    if f60 or fm or fu:
        best = min((x for x in ((fm, "udp-mmsg"), (fu, "udp-uring")) if x[0]), key=lambda x: x[0]["us_per_echo"], default=None)
        row(sec, "60k/s", f60["shard_us_per_echo"] if f60 else None, f"echo_floor {best[1]} (the cheaper)" if best else "echo_floor",
            best[0]["us_per_echo"] if best else None, 1.5, note=f"fleetgate {profile('fg-udp-60k')}")
        for fl, nm in ((fm, "udp-mmsg"), (fu, "udp-uring")):
            if fl:
                row(sec, "60k/s, info", f60["shard_us_per_echo"] if f60 else None, f"echo_floor {nm}", fl["us_per_echo"])
        if f60:
            row(sec, "60k/s, whole gateway process, info", f60["gateway_us_per_echo"], "-", None, fg_text=fmt(f60["gateway_us_per_echo"]), ref_text="-")
            ROWS[-1]["verdict"] = "info"

    # --- saturation
    sec = f"Saturation: echoes per CPU-second of the serving thread (one shard core; {profile('fg-sat-uring') or 'profile ?'})"
    su, se = fg_cpu("fg-sat-uring"), fg_cpu("fg-sat-epoll")
    fsu, fsm = floor_server("floor-sat-uring"), floor_server("floor-sat-mmsg")
    if su or se or fsu or fsm:
        for fg, fl, nm in ((su, fsu, "io_uring vs echo_floor udp-uring"), (se, fsm, "epoll vs echo_floor udp-mmsg")):
            note = ""
            if fg:
                note = (f"fleetgate {fg['rate']:,.0f} msgs/s achieved, shard {pct(fg['shard_busy'])} busy, "
                        f"generator {pct(fg['generator_cpu_share'])}, other processes {pct(fg['others_cpu_share'])} of a core")
            if fl:
                note += f"; floor {fl['client_rate'] or 0:,.0f}/s, server {pct(fl['busy'])} busy over its life"
            row(sec, f"{nm}, messages", fg["echoes_per_shard_cpu_s"] if fg else None, "echo_floor (1 message per datagram)",
                fl["echoes_per_cpu_s"] if fl else None, 1.0, better="higher", note=note)
            per = fg["msgs_per_datagram"] if fg else None
            row(sec, f"{nm}, datagrams, info",
                fg["echoes_per_shard_cpu_s"] / per if fg and per and fg["echoes_per_shard_cpu_s"] else None,
                "echo_floor", fl["echoes_per_cpu_s"] if fl else None,
                note=f"fleetgate carried {per:.2f} messages per datagram (generator and gateway coalesce when behind)" if per else "")
        row(sec, "fleetgate io_uring / epoll", su["echoes_per_shard_cpu_s"] if su else None, "fleetgate epoll",
            se["echoes_per_shard_cpu_s"] if se else None, 1.1, better="higher")
        row(sec, "fleetgate epoll / io_uring", se["echoes_per_shard_cpu_s"] if se else None, "fleetgate io_uring",
            su["echoes_per_shard_cpu_s"] if su else None, 0.8, better="higher")

    # --- resend
    qr = qf_resend("qf-resend-10000")
    fr = load_json("fg-resend.json")
    n = (fr or {}).get("messages", 10000)
    sec = (f"Resend of {n:,} missed messages over the wire (one UDP device, one TCP client; medians over repeats; "
           f"{profile('fg-resend') or 'profile ?'})")
    runs = (fr or {}).get("runs", [])
    failed = [r for r in runs if r.get("error")]
    if fr is None:
        fg_missing = "missing (fleetgate resend-burst run failed; see fg-resend.load.log)"
    elif failed:
        fg_missing = "missing: %d of %d runs failed: %s" % (len(failed), len(runs), failed[0]["error"])
    else:
        fg_missing = None
    for m in (fr or {}).get("summary", []) or [{"transport": "udp"}, {"transport": "tcp"}]:
        t = m["transport"]
        ok = fg_missing is None and m.get("ok_runs")
        note = ""
        if ok:
            note = (f"{m['ok_runs']} runs; live {m['median_live_per_s']:,.0f}/s, resent {m['median_resent_per_s']:,.0f}/s, "
                    f"last resent message {m['median_last_us']:,.0f} µs after the request")
        row(sec, f"{t}: resend rate vs live send rate", m["median_resent_per_s"] if ok else None,
            f"fleetgate live send rate ({t}, window 256)", m["median_live_per_s"] if ok else None, 0.8,
            better="higher", fg_text=None if ok else fg_missing, note=note)
        row(sec, f"{t}: resend rate vs QuickFIX", m["median_resent_per_s"] if ok else None,
            "QuickFIX resend (select acceptor)", qr["resent_per_s"] if qr else None, 20.0,
            better="higher", fg_text=None if ok else fg_missing, ref_text=None if qr else why_missing("QuickFIX"))
        row(sec, f"{t}: first resent message (µs after request)", m["median_first_us"] if ok else None,
            "target (absolute, µs)", 50.0, 1.0, fg_text=None if ok else fg_missing, ref_text="50",
            note=f"QuickFIX: {qr['first_us']:,.0f} µs" if qr else "")

    # --- generator calibration
    sec = "Generator calibration (UDP 10k/s): the generator's own share"
    fl = floor_server("floor-udp-10k")
    late = json_latency("fg-udp-10k.json", "lateness_ns")
    row(sec, "send lateness p50/p99/p99.9 (µs), UDP 10k/s", None, "echo_floor client (same rate)",
        None, None, fg_text=("%.1f / %.1f / %.1f" % (late["p50"], late["p99"], late["p99.9"])) if late else "missing (no fleetgate run)",
        ref_text=("%.1f / %.1f" % fl["client_lateness_us"]) if fl and fl["client_lateness_us"] else "-",
        note="actual minus intended send time; the echo_floor client's is p50 / p99")
    if late:
        ROWS[-1]["verdict"] = "info"
    raw, flr = json_latency("raw-udp-10k.json"), floor_latency("floor-udp-10k")
    for q in ("p50", "p99", "p99.9"):
        row(sec, f"generator floor {q} (µs)", raw[q] if raw else None, "echo_floor client, same server", flr[q] if flr else None,
            fg_text=None if raw else "missing (no raw-udp-10k run)",
            note=("`fleetgate load --raw-echo`: the generator's datagrams against the bare recvmmsg loop, no gateway; "
                  "fleetgate's latency above minus this is the gateway's share") if q == "p50" else "")

    # --- scaling
    sec = "Scaling: shards on their own cores, same generator (echo msgs/s achieved)"
    counts = sorted(
        int(m.group(1)) for f in os.listdir(OUT) for m in [re.match(r"scale-(\d+)\.(json|skipped)$", f)] if m
    )
    base = fg_cpu("scale-1")
    for n in counts:
        s = fg_cpu(f"scale-{n}")
        if os.path.exists(path(f"scale-{n}.skipped")):
            row(sec, f"{n} shard(s)", None, "1 shard", base["rate"] if base else None, None, fg_text="skipped: time budget")
            continue
        note = ""
        if s:
            note = (f"shards {pct(s['shard_busy'])} of one core in total, generator {pct(s['generator_cpu_share'])}, "
                    f"others {pct(s['others_cpu_share'])}, {s['echoes_per_shard_cpu_s'] or 0:,.0f} msgs per shard CPU-s, "
                    f"{s['msgs_per_datagram'] or 0:.2f} msgs per datagram")
            if n > (load_json("scale-1.cpu.json") or {}).get("ncpu", n):
                note += "; oversubscribed: more shards than cores"
        row(sec, f"{n} shard(s)", s["rate"] if s else None, "1 shard", base["rate"] if base else None,
            1.8 if n == 2 else None, better="higher", note=note)

    # --- print
    env = read("env.txt") or ""
    print()
    print("fleetgate bench-compare:", OUT)
    for l in env.splitlines():
        if l.startswith(("placement", "gateway", "latency clients", "runs", "loadavg", "MISSING", "host")):
            print("  " + l)
    for f in sorted(os.listdir(OUT)):
        if not f.endswith(".cpu.json") or f.startswith(("fg-", "scale-")):
            continue
        c = load_json(f)
        if c and c.get("machine_busy_ticks") is not None:
            busy = c["machine_busy_ticks"] / c["clk_tck"] / (c["interval_ns"] / 1e9)
            print(f"  machine during {f[:-9]}: {pct(busy)} of one core busy in all (this server and client included), "
                  f"loadavg {c.get('loadavg_end')}")
    for name in sorted(f[:-9] for f in os.listdir(OUT) if f.endswith(".cpu.json") and f.startswith(("fg-", "scale-"))):
        c = fg_cpu(name)
        if c:
            print(f"  machine during {name}: other processes {pct(c['others_cpu_share'])} of one core, loadavg {c['loadavg']}; "
                  f"generator {pct(c['generator_cpu_share'])}, gateway {pct(c['gateway_cpu_share'])} (shard {pct(c['shard_busy'])})")
    w = [max(len(r["what"]) for r in ROWS), 0, 0, 0]
    sect = None
    hdr = f"  {'what':<{w[0]}}  {'fleetgate':>12}  {'reference':<40} {'value':>12}  {'ratio':>7}  {'target':>8}  verdict"
    for r in ROWS:
        if r["section"] != sect:
            sect = r["section"]
            print()
            print(sect)
            print(hdr)
        fgt = r["fleetgate_text"]
        long_fg = len(fgt) > 12
        ref_t = r["reference_text"]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(
            f"  {r['what']:<{w[0]}}  {('see below' if long_fg else fgt):>12}  {r['reference'][:40]:<40} "
            f"{(ref_t if len(ref_t) <= 12 else 'see below'):>12}  {ratio:>7}  {r['target']:>8}  {r['verdict']}"
        )
        if long_fg:
            print(f"      fleetgate: {fgt}")
        if len(r["reference_text"]) > 12:
            print(f"      reference: {r['reference_text']}")
        if r["note"]:
            print(f"      {r['note']}")

    with open(path("results.json"), "w") as f:
        json.dump({"env": env, "rows": ROWS}, f, indent=1)
    svg = plot([(n, s) for n, s in plot_series if s])
    if svg:
        with open(path("latency.svg"), "w") as f:
            f.write(svg)
        print()
        print("plot:", path("latency.svg"))
    print("json:", path("results.json"))


def plot(series):
    """Latency by percentile, one line per source, both axes logarithmic."""
    if not series:
        return None
    W, H, L, R, T, B = 960, 600, 70, 260, 40, 50
    qs = lambda k: 100.0 if k == "max" else float(k[1:])
    pts = []
    for name, s in series:
        p = sorted(((qs(k), v) for k, v in s.items() if (k == "max" or re.match(r"p[\d.]+$", k)) and v and v > 0), key=lambda x: x[0])
        pts.append((name, p))
    xs = lambda q: math.log10(1.0 / (1.0 - min(q, 99.999) / 100.0))
    vals = [v for _, p in pts for _, v in p]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi = max(hi, lo + 1)
    xmax = xs(99.999)
    X = lambda q: L + (W - L - R) * (xs(q) - xs(0)) / (xmax - xs(0))
    Y = lambda v: T + (H - T - B) * (1 - (math.log10(v) - lo) / (hi - lo))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">Echo latency by percentile (µs), bench-compare</text>']
    for e in range(lo, hi + 1):
        y = Y(10 ** e)
        o.append(f'<line x1="{L}" x2="{W - R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/><text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for q, lab in ((0, "0%"), (50, "50%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%"), (99.999, "99.999%")):
        x = X(q)
        o.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{T}" y2="{H - B}" stroke="#eee"/><text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle">{lab}</text>')
    for i, (name, p) in enumerate(pts):
        c = colors[i % len(colors)]
        line = " ".join(f"{X(q):.1f},{Y(v):.1f}" for q, v in p)
        o.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{line}"/>')
        for q, v in p:
            o.append(f'<circle cx="{X(q):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>')
        o.append(f'<rect x="{W - R + 15}" y="{T + 20 * i}" width="12" height="12" fill="{c}"/><text x="{W - R + 32}" y="{T + 20 * i + 11}">{name}</text>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">percentile (max plotted at 99.999%)</text>')
    o.append("</svg>")
    return "\n".join(o)


if __name__ == "__main__":
    main()
