# Shared by the load scripts: build, start a gateway with a tuning profile on loopback, stop it.
# Sourced, not run. Every wait is bounded; everything stays on 127.0.0.0/8.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${FLEETGATE:-$ROOT/target/release/fleetgate}"
if [ -z "${FLEETGATE:-}" ]; then
    cargo build --release --quiet
fi
NCPU=$(nproc)
# Core placement: the gateway's shards on the first half of the cores, the generator on the rest
# (one core each on a 2-core host). Override with GATEWAY_CPUS / LOAD_CPUS.
GATEWAY_CPUS="${GATEWAY_CPUS:-0-$(( NCPU > 1 ? NCPU / 2 - 1 : 0 ))}"
LOAD_CPUS="${LOAD_CPUS:-$(( NCPU > 1 ? NCPU / 2 : 0 ))-$(( NCPU - 1 ))}"
SHARDS="${SHARDS:-$(( NCPU > 1 ? NCPU / 2 : 1 ))}"
# The gateway's other threads (acceptor, housekeeping, HTTP, trace writer, operator channel):
# gateway.service_cpus, by default beside the generator so that they never preempt a shard
# ("none": unpinned).
SERVICE_CPUS="${SERVICE_CPUS:-$LOAD_CPUS}"

# "0-2,5" -> "0,1,2,5"
cpu_list() {
    local out=() part a b
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ "$part" == *-* ]]; then
            a=${part%-*} b=${part#*-}
            for ((c = a; c <= b; c++)); do out+=("$c"); done
        else
            out+=("$part")
        fi
    done
    (IFS=,; echo "${out[*]}")
}
# serve arguments placing the shards (gateway.cpus) and the other threads (service_cpus).
placement_args() {
    local svc=""
    [ "$SERVICE_CPUS" = none ] || svc="$(cpu_list "$SERVICE_CPUS")"
    PLACEMENT=(--set "gateway.cpus=[$(cpu_list "$GATEWAY_CPUS")]" --set "gateway.service_cpus=[$svc]")
}
# Ports (override to run beside another gateway on the same host; PORT_OFFSET moves all four).
PORT_OFFSET="${PORT_OFFSET:-0}"
GW_HANDSHAKE="${GW_HANDSHAKE:-127.0.0.1:$(( 3006 + PORT_OFFSET ))}"
GW_TCP="${GW_TCP:-127.0.0.1:$(( 4210 + PORT_OFFSET ))}"
GW_SESSION_PORT_BASE="${GW_SESSION_PORT_BASE:-$(( 5000 + PORT_OFFSET ))}"
GW_METRICS="${GW_METRICS:-127.0.0.1:$(( 9464 + PORT_OFFSET ))}"

# results/<timestamp>-<name>
new_results() {
    OUT="$ROOT/results/$(date +%Y%m%d-%H%M%S)-$1"
    mkdir -p "$OUT"
    echo "results: $OUT"
    {
        echo "host: $(uname -srm), $NCPU cores"
        echo "gateway: $SHARDS shard(s) on cores $GATEWAY_CPUS (gateway.cpus), its other threads on $SERVICE_CPUS (gateway.service_cpus), profile ${PROFILE:-tuning/default.toml}"
        echo "generator: cores $LOAD_CPUS"
    } | tee "$OUT/placement.txt"
}

# start_gateway PROFILE [extra serve args...]
start_gateway() {
    local profile="$1"; shift
    PROFILE="$profile"
    # No taskset on the process: the shards pin themselves, the other threads follow
    # gateway.service_cpus (an explicit --set in "$@" comes later and wins).
    placement_args
    "$BIN" serve --config "$profile" --open-logon --shards "$SHARDS" "${PLACEMENT[@]}" \
        --handshake-addr "$GW_HANDSHAKE" --tcp-addr "$GW_TCP" \
        --session-port-base "$GW_SESSION_PORT_BASE" --metrics-addr "$GW_METRICS" --hist-log "$OUT/gateway.hlog" "$@" >"$OUT/gateway.log" 2>&1 &
    GW_PID=$!
    trap stop_gateway EXIT
    for _ in $(seq 1 50); do
        if ! kill -0 "$GW_PID" 2>/dev/null; then break; fi
        if curl -sf "http://$GW_METRICS/healthz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gateway did not come up; log:" >&2
    cat "$OUT/gateway.log" >&2
    return 1
}

# The gateway's RSS in KiB (0 once it is gone).
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0; }

# The gateway reserves its session slab and journals at start-up and writes every page of them,
# which goes on after /healthz answers (seconds for a large slab): wait (bounded, 60 s) until its
# RSS has settled, so that a generator's "RSS before" is taken after it and the growth it reports
# is the sessions' own. (compare-mosquitto.sh started its storm at once: 5.3 KB "per idle
# session" at 19,900 sessions was mostly the reservation still being written; 389 B once settled.)
wait_rss_settled() {
    local last=0 now
    for _ in $(seq 1 60); do
        now=$(rss_kib)
        if [ "$now" -gt 0 ] && [ $(( now - last )) -lt $(( now / 100 + 1024 )) ]; then return 0; fi
        last=$now
        sleep 1
    done
}

stop_gateway() {
    if [ -n "${GW_PID:-}" ] && kill -0 "$GW_PID" 2>/dev/null; then
        curl -sf "http://$GW_METRICS/metrics" >"$OUT/metrics.txt" 2>/dev/null || true
        kill -TERM "$GW_PID"
        # SIGTERM logs every session out and exits within 2 s (a gateway with a large slab
        # takes longer: STOP_WAIT).
        timeout "${STOP_WAIT:-5}" tail --pid="$GW_PID" -f /dev/null \
            || kill -KILL "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
    GW_PID=
}

# load SCENARIO [args...]: runs the generator, stores summary.json and load.hlog, prints the table.
load() {
    local scenario="$1"; shift
    local rc=0
    timeout "${LOAD_TIMEOUT:-300}" taskset -c "$LOAD_CPUS" "$BIN" load "$scenario" --json \
        --handshake "$GW_HANDSHAKE" --tcp "$GW_TCP" --hist-log "$OUT/load.hlog" "$@" >"$OUT/summary.json" || rc=$?
    echo "summary: $(cat "$OUT/summary.json")"
    return $rc
}

# plot: percentile plot of every .hlog of the run.
plot() {
    "$BIN" hist show "$OUT/load.hlog" || true
    "$BIN" hist plot "$OUT"/*.hlog -o "$OUT/latency.svg" && echo "plot: $OUT/latency.svg" || true
}
