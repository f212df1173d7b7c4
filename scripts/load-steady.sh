#!/usr/bin/env bash
# Steady open-loop echo: DEVICES UDP devices, RATE requests/s, DURATION s; compared with sockperf
# UDP ping-pong on the same loopback when sockperf is installed (apt-get install sockperf).
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-1000}" RATE="${RATE:-5000}" DURATION="${DURATION:-20}"
new_results steady
start_gateway tuning/low-latency.toml --set "gateway.cpus=[${GATEWAY_CPUS%%-*}]"
load steady --devices "$DEVICES" --rate "$RATE" --warmup 3 --duration "$DURATION" --body-bytes 16
stop_gateway
plot
if command -v sockperf >/dev/null 2>&1; then
    taskset -c "$GATEWAY_CPUS" sockperf server -i 127.0.0.1 -p 11111 >/dev/null 2>&1 &
    SP=$!
    sleep 0.5
    timeout 60 taskset -c "$LOAD_CPUS" sockperf ping-pong -i 127.0.0.1 -p 11111 -t "$DURATION" \
        --mps="$RATE" --full-rtt -m 48 >"$OUT/sockperf.txt" 2>&1 || true
    kill "$SP" 2>/dev/null || true
    python3 - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
s = json.load(open(f"{out}/summary.json"))
text = open(f"{out}/sockperf.txt").read()
ref = {m.group(1): float(m.group(2)) for m in re.finditer(r"percentile\s+([\d.]+)\s+=\s+([\d.]+)", text)}
rows = []
for name, key, q in [("p50", "p50", "50.000"), ("p99", "p99", "99.000"), ("p99.9", "p99_9", "99.900")]:
    fg = s["latency_ns"][key] / 1000.0
    sp = ref.get(q)
    if sp:
        rows.append(f"{name}: fleetgate echo {fg:.1f} us, sockperf UDP RTT {sp:.1f} us, ratio {fg / sp:.1f}x")
open(f"{out}/comparison.txt", "w").write("\n".join(rows) + "\n")
print("\n".join(rows) if rows else "sockperf output not understood; see sockperf.txt")
PY
else
    echo "sockperf not installed: no reference measurement (apt-get install sockperf)"
fi
