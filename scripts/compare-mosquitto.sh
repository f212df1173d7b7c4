#!/usr/bin/env bash
# fleetgate's handshake storm beside mosquitto's CONNECT storm, in one run and the same placement
# (issue 11, deliverable 5): N (19,900: what mosquitto can hold under a 20,000 open-files limit)
# clients, C (200) handshakes in flight on both sides, SRC_IPS (8) loopback source addresses, the
# server on GATEWAY_CPUS and the client on LOAD_CPUS (see scripts/lib.sh). Prints, side by side
# with ratios: the rate until 99% of the fleet is logged on (from the first request), the
# handshake p99, and the RSS per idle session (growth over the server's RSS before the fleet),
# and the CPU per logon of each server and each client: the rate is bounded by whichever core
# fills first, and in both runs that has been the client's (issue 11), so the CPU per logon is
# the servers' own comparison. The whole fleetgate server (shards and service threads: the
# acceptor answers the ConnectionRequests) runs on the first of GATEWAY_CPUS, as mosquitto does.
#
# fleetgate: UDP devices, handshake + GetDeviceConfig + logon (`fleetgate load storm`).
# mosquitto: MQTT 3.1.1 CONNECT -> CONNACK over TCP, driven by the mqtt-storm harness.
#
# Needs mosquitto (apt-get install -y mosquitto) and the harness directory (HARNESS, default
# ../shared/peers/mqtt-storm beside the checkout), which is copied to a temporary directory to
# build: never into the project. Installs nothing; says what is missing. Bounded: each client
# run by `timeout`, each server stopped by pid.
source "$(dirname "$0")/lib.sh"
N="${N:-19900}" C="${C:-200}" SRC_IPS="${SRC_IPS:-8}" HOLD="${HOLD:-10}" PORT="${MQTT_PORT:-18830}"
if [ -z "${HARNESS:-}" ]; then
    for h in "$ROOT/../shared/peers/mqtt-storm" "$ROOT/../../shared/peers/mqtt-storm"; do
        if [ -f "$h/Cargo.toml" ]; then HARNESS="$h"; break; fi
    done
fi
MOSQ="${MOSQ:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
missing=()
[ -x "$MOSQ" ] || missing+=("mosquitto: apt-get install -y mosquitto (or MOSQ=/path/to/mosquitto)")
[ -f "${HARNESS:-/nonexistent}/Cargo.toml" ] \
    || missing+=("the mqtt-storm harness: HARNESS=/path/to/peers/mqtt-storm")
command -v python3 >/dev/null || missing+=("python3")
command -v ss >/dev/null || missing+=("ss (iproute2)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare-mosquitto: missing, nothing installed:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi
if ss -ltnH "sport = :$PORT" | grep -q .; then
    echo "compare-mosquitto: port $PORT is busy (MQTT_PORT=...)" >&2
    exit 2
fi

# The whole fleetgate server on one core, as mosquitto (the placement line says so).
SERVER_CPU="${GATEWAY_CPUS%%-*}"
SERVICE_CPUS="$SERVER_CPU"
PROFILE=tuning/large-fleet.toml new_results compare-mosquitto
echo "both: $N clients, $C handshakes in flight, $SRC_IPS source addresses; server on cores $GATEWAY_CPUS, client on cores $LOAD_CPUS" \
    | tee -a "$OUT/placement.txt"
echo "machine load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/placement.txt"

# 1. fleetgate.
start_gateway tuning/large-fleet.toml --set "gateway.max_sessions_per_shard=$(( N + 1000 ))" \
    --set "gateway.cpus=[$SERVER_CPU]" --set "gateway.service_cpus=[$SERVER_CPU]"
wait_rss_settled
rc=0
load storm --devices "$N" --rate 0 --sockets "$C" --source-ips "$SRC_IPS" --warmup 2 \
    --duration "$HOLD" --gateway-pid "$GW_PID" || rc=$?
stop_gateway

# 1b. fleetgate again, on a fresh gateway, at half the rate until 99% it just reached (issue 11:
# handshake p99 <= 10 ms at half the maximum rate); results in $OUT/half/.
HALF=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(int(s['steps'][0]['rate_99_per_s'] / 2))" \
    "$OUT/summary.json" 2>/dev/null || echo 0)
if [ "$HALF" -gt 0 ]; then
    MAIN_OUT="$OUT"
    OUT="$MAIN_OUT/half"
    mkdir -p "$OUT"
    start_gateway tuning/large-fleet.toml --set "gateway.max_sessions_per_shard=$(( N + 1000 ))" \
        --set "gateway.cpus=[$SERVER_CPU]" --set "gateway.service_cpus=[$SERVER_CPU]"
    wait_rss_settled
    load storm --devices "$N" --rate "$HALF" --sockets "$C" --source-ips "$SRC_IPS" --warmup 1 \
        --duration 2 >/dev/null || rc=$?
    stop_gateway
    OUT="$MAIN_OUT"
fi

# 2. mosquitto, through the harness built outside the project.
BUILD="$(mktemp -d /tmp/fleetgate-mqtt-storm.XXXXXX)"
cp -r "$HARNESS"/. "$BUILD"/
chmod -R u+w "$BUILD"
rm -rf "$BUILD/target" "$BUILD/results"
sed -i "s/^listener .*/listener $PORT 127.0.0.1/" "$BUILD/mosquitto.conf"
echo "building the harness in $BUILD"
(cd "$BUILD" && cargo build --release -q)
HB="$BUILD/target/release/mqtt-storm"
MP=
stop_broker() {
    if [ -n "$MP" ]; then
        kill "$MP" 2>/dev/null || true
        timeout 10 tail --pid="$MP" -f /dev/null || kill -KILL "$MP" 2>/dev/null || true
        wait "$MP" 2>/dev/null || true
        MP=
    fi
}
trap 'stop_broker; stop_gateway' EXIT
broker_run() { # $1 = tag, rest = harness arguments
    local tag="$1"; shift
    taskset -c "$GATEWAY_CPUS" "$MOSQ" -c "$BUILD/mosquitto.conf" >"$OUT/mosquitto-$tag.log" 2>&1 &
    MP=$!
    for _ in $(seq 1 50); do
        if ss -ltnH "sport = :$PORT" | grep -q .; then break; fi
        sleep 0.1
    done
    (ulimit -n "$(ulimit -Hn)"; timeout 300 taskset -c "$LOAD_CPUS" "$HB" "$@" --port "$PORT" \
        --broker-pid "$MP") >"$OUT/mqtt-$tag.txt" 2>&1 || true
    stop_broker
    grep '^RESULT' "$OUT/mqtt-$tag.txt" || echo "no RESULT from the harness ($tag); see $OUT/mqtt-$tag.txt"
}
broker_run storm storm --n "$N" --concurrency "$C" --src-ips "$SRC_IPS" --timeout 60
sleep 5 # TIME_WAIT sockets of the storm's teardown
broker_run idle idle --n "$N" --hold "$HOLD" --settle 2 --concurrency "$C" --src-ips "$SRC_IPS" \
    --timeout 60
rm -rf "$BUILD"

# 3. Side by side.
python3 - "$OUT" "$N" <<'PY' | tee "$OUT/comparison.txt"
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
def result(tag):
    for line in open(f"{out}/mqtt-{tag}.txt"):
        if line.startswith("RESULT"):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    return {}
fg = json.load(open(f"{out}/summary.json"))
st = fg["steps"][0]
try:
    half = json.load(open(f"{out}/half/summary.json"))
    hst = half["steps"][0]
except Exception:
    half, hst = None, None
gw = fg.get("gateway") or {}
ms, mi = result("storm"), result("idle")
num = lambda d, k: float(d[k]) if k in d and d[k] not in ("?", "nan") else None
t99 = num(ms, "t99_s")
rows = [
    ("rate until 99% logged on (/s)", st["rate_99_per_s"],
     0.99 * n / t99 if t99 else None, "higher is better"),
    ("handshake p99 (ms)", st["handshake_ns"]["p99"] / 1e6,
     num(ms, "p99_us") / 1e3 if num(ms, "p99_us") else None, "lower is better"),
    ("handshake p99 at half rate (ms)",
     hst["handshake_ns"]["p99"] / 1e6 if hst else None, None, "target <= 10 ms"),
    ("RSS per idle session (B)", gw.get("rss_per_session_bytes"),
     num(mi, "broker_bytes_per_conn"), "lower is better"),
    ("server CPU per logon (us)", gw.get("cpu_per_logon_us"),
     num(ms, "broker_cpu_us_per_conn"), "lower is better"),
    ("client CPU per logon (us)", (fg.get("generator") or {}).get("cpu_per_logon_us"),
     num(ms, "client_cpu_us_per_conn"), "lower is better"),
]
fmt = lambda v: "-" if v is None else f"{v:,.1f}"
print(f"{'':34} {'fleetgate':>12} {'mosquitto':>12} {'ratio':>8}")
table = []
for name, a, b, better in rows:
    ratio = a / b if a is not None and b else None
    print(f"{name:34} {fmt(a):>12} {fmt(b):>12} {('-' if ratio is None else f'{ratio:.2f}x'):>8}  ({better})")
    table.append({"metric": name, "fleetgate": a, "mosquitto": b, "ratio": ratio})
print(f"fleetgate: {st['logged_on']}/{st['devices']} logged on, errors {fg['errors_total']}, "
      f"retransmissions {st['retransmissions']['total']}; RSS per session with what was reserved "
      f"at start-up: {fmt(gw.get('rss_total_per_session_bytes'))} B")
if half:
    print(f"fleetgate at half rate ({st['rate_99_per_s'] / 2:,.0f}/s asked): {half.get('rate_per_s', 0):,.0f}/s, "
          f"{hst['logged_on']}/{hst['devices']} logged on, errors {half['errors_total']}, handshake p50 "
          f"{hst['handshake_ns']['p50'] / 1e6:.1f} ms, p99 {hst['handshake_ns']['p99'] / 1e6:.1f} ms, "
          f"max {hst['handshake_ns']['max'] / 1e6:.1f} ms, retransmissions {hst['retransmissions']['total']}")
else:
    print("fleetgate at half rate: no run (no rate from the first storm)")
print(f"mosquitto: {ms.get('ok', '?')}/{n} connected, errors {ms.get('err', '?')}; "
      f"idle run {mi.get('ok', '?')}/{n} connected")
w = fg.get("wire") or {}
if w.get("udp_logons"):
    print(f"fleetgate datagrams per logon: {w['logon_datagrams_sent'] / w['udp_logons']:.2f} from "
          f"the device, {w['logon_datagrams_received'] / w['udp_logons']:.2f} to it (logouts after "
          f"the hold: one more each way)")
json.dump({"n": n, "rows": table, "fleetgate_failed": fg["failed"]},
          open(f"{out}/comparison.json", "w"), indent=1)
PY
plot
exit "$rc"
