#!/usr/bin/env bash
# fleetgate side by side with its references, in one run (issue 12): latency tails against
# sockperf, CPU per echo against sockperf's server and the bare echo loop (benches/echo_floor.rs),
# saturation per shard core against that loop on the same core (io_uring and epoll backends),
# resend against QuickFIX, and one shard against several. Prints one table of ratios.
#
# Placement (stated in the results): the gateway's shard threads pinned by config
# (gateway.cpus = GATEWAY_CPUS, default core 0), its other threads (acceptor, housekeeping,
# HTTP, trace writer) by gateway.service_cpus = SERVICE_CPUS (default LOAD_CPUS; "none" leaves
# them unpinned); every reference server (sockperf, echo_floor, the QuickFIX
# acceptor) pinned to the first core of GATEWAY_CPUS; every generator and client to LOAD_CPUS
# (default core 1). Everything runs on loopback, every process under `timeout`.
#
# Nothing is installed here. What is missing is named with the way to get it, its rows are
# marked "missing" and the rest runs:
#   sockperf   apt-get install sockperf
#   QuickFIX   cp -r ../shared/peers/quickfix /tmp/peers/ && /tmp/peers/quickfix/build.sh
#              (needs libquickfix-dev g++ pkg-config); or set QUICKFIX_DIR to a built copy
#
# Results: results/<timestamp>-bench-compare/ (every raw output, results.json, table.txt,
# latency.svg). About 5 minutes with the defaults, plus up to SCALE_BUDGET for the scaling part.
#
# Environment:
#   GATEWAY_CPUS=0 LOAD_CPUS=1   core placement (cpu lists as taskset takes them)
#   SERVICE_CPUS=$LOAD_CPUS      the gateway's non-shard threads (gateway.service_cpus; none)
#   DURATION=10 WARMUP=3         measured and warm-up seconds per run
#   DEVICES=1000 TCP_CLIENTS=200 RATE=10000 RATE_HIGH=60000 SAT_RATE=200000 MSG_BYTES=48
#   PROFILE=tuning/low-latency.toml        the gateway's profile for the latency, saturation,
#                                resend and scaling runs
#   CPU_PROFILE=tuning/default.toml        ... and for the CPU-per-echo runs: a parking shard
#                                (a spinning one costs a whole core whatever the rate, so its
#                                CPU per echo is about 1/rate); every row names its profile
#   RESEND_N=10000 RESEND_REPEAT=5         resend part: messages per burst, repeats (medians)
#   PARTS="udp tcp cpu sat resend scale"   which parts to run
#   SHARD_COUNTS="1 2 4 8"       scaling part (default: 1, 2, 4, 8 up to the number of cores);
#   SCALE_BUDGET=600             ... and its time limit in seconds (runs that would not fit are
#                                skipped and say so)
#   QUICKFIX_DIR=/tmp/peers/quickfix  a built copy of the QuickFIX peer harness
#   NICE=0                       nice value of every process started here, servers and clients
#                                alike (e.g. -10 on a machine shared with other work: the
#                                measured processes then win the CPU from the rest). With
#                                autogroup scheduling on, nice only counts inside a session's
#                                group, so the script's own group gets it too while it runs
#                                (/proc/self/autogroup, put back at exit)
#   PORT_OFFSET=0                added to every port used (gateway 3006/4210/5000+/9464,
#                                echo_floor 7000, sockperf 11111-11112, QuickFIX 19876)
#   LOAD_SPIN=1                  latency parts (udp, tcp): the generator (`fleetgate load --spin`)
#                                and the echo_floor client (--busy-poll) busy-poll between sends,
#                                as sockperf's client does (it spins until each send time); 0:
#                                both sleep until the next send or reply. Stated in the header.
#   QUIET_WAIT=0 QUIET_PCT=10    before each run, wait up to QUIET_WAIT s for the machine to be
#                                under QUIET_PCT % busy (all cores) for 2 s running; every run
#                                records how much CPU other processes took during it anyway
set -euo pipefail
export GATEWAY_CPUS="${GATEWAY_CPUS:-0}" LOAD_CPUS="${LOAD_CPUS:-1}"
# The backend is chosen per run below (--io); FLEETGATE_IO would override it for every run.
unset FLEETGATE_IO
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-10}" WARMUP="${WARMUP:-3}"
DEVICES="${DEVICES:-1000}" TCP_CLIENTS="${TCP_CLIENTS:-200}"
RATE="${RATE:-10000}" RATE_HIGH="${RATE_HIGH:-60000}" SAT_RATE="${SAT_RATE:-200000}"
MSG_BYTES="${MSG_BYTES:-48}"
RESEND_N="${RESEND_N:-10000}" RESEND_REPEAT="${RESEND_REPEAT:-5}"
PROFILE="${PROFILE:-tuning/low-latency.toml}"
CPU_PROFILE="${CPU_PROFILE:-tuning/default.toml}"
PARTS="${PARTS:-udp tcp cpu sat resend scale}"
SCALE_BUDGET="${SCALE_BUDGET:-600}"
QUICKFIX_DIR="${QUICKFIX_DIR:-/tmp/peers/quickfix}"
QUIET_WAIT="${QUIET_WAIT:-0}" QUIET_PCT="${QUIET_PCT:-10}"
NICE="${NICE:-0}"
LOAD_SPIN="${LOAD_SPIN:-1}"
SPIN_ARGS=() FLOOR_SPIN=() CLIENTS="sleep until the next send or reply (fleetgate load, echo_floor client); sockperf's client spins between sends"
if [ "$LOAD_SPIN" = 1 ]; then
    SPIN_ARGS=(--spin) FLOOR_SPIN=(--busy-poll)
    CLIENTS="busy-poll between sends (fleetgate load --spin, echo_floor client --busy-poll), as sockperf's client spins between sends"
fi
# Ports (all on 127.0.0.1), moved together by PORT_OFFSET when another gateway uses the defaults.
PORT_OFFSET="${PORT_OFFSET:-0}"
P_HS=$((3006 + PORT_OFFSET)) P_TCP=$((4210 + PORT_OFFSET)) P_SESSION=$((5000 + PORT_OFFSET))
P_METRICS=$((9464 + PORT_OFFSET)) P_FLOOR=$((7000 + PORT_OFFSET)) P_SP=$((11111 + PORT_OFFSET))
P_QF=$((19876 + PORT_OFFSET))
PRIO="nice -n $NICE"
CLK="$(getconf CLK_TCK)"

GW_LIST="$(cpu_list "$GATEWAY_CPUS")"
SVC_LIST=""
[ "$SERVICE_CPUS" = none ] || SVC_LIST="$(cpu_list "$SERVICE_CPUS")"
SRV_CPU="${GW_LIST%%,*}"
LOAD_LIST="$(cpu_list "$LOAD_CPUS")"
LOAD_THREADS=$(tr ',' '\n' <<<"$LOAD_LIST" | wc -l)
if [ -z "${SHARD_COUNTS:-}" ]; then
    SHARD_COUNTS=""
    for n in 1 2 4 8; do [ "$n" -le "$NCPU" ] && SHARD_COUNTS+="$n "; done
fi
want() { [[ " $PARTS " == *" $1 "* ]]; }

# Ports this script uses (gateway, metrics, echo_floor, sockperf, QuickFIX): all must be free.
for port in $P_HS $P_TCP $P_SESSION $P_METRICS $P_FLOOR $P_SP $((P_SP + 1)) $P_QF; do
    if ss -Htuln "sport = :$port" | grep -q .; then
        echo "port $port is in use on this host; stop what holds it (ss -lnp 'sport = :$port')" >&2
        exit 1
    fi
done

OUT="$ROOT/results/$(date +%Y%m%d-%H%M%S)-bench-compare"
mkdir -p "$OUT"
echo "results: $OUT"

# ----------------------------------------------------------------------------- what is here
MISSING=()
FLOOR=""
echo "building the echo_floor bench (release)..."
FLOOR=$(cargo build --release --quiet --bench echo_floor --message-format=json \
    | python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "echo_floor" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$FLOOR" ] || { echo "could not build benches/echo_floor.rs" >&2; exit 1; }
if ! command -v sockperf >/dev/null 2>&1; then
    MISSING+=("sockperf: apt-get install sockperf")
fi
QF_ACC="$QUICKFIX_DIR/build/qfacceptor" QF_CLI="$QUICKFIX_DIR/client/target/release/qfclient"
if ! [ -x "$QF_ACC" ] || ! [ -x "$QF_CLI" ]; then
    MISSING+=("QuickFIX peer: cp -r ../shared/peers/quickfix /tmp/peers/ && /tmp/peers/quickfix/build.sh (needs libquickfix-dev g++ pkg-config), or QUICKFIX_DIR=<built copy>")
fi
command -v curl >/dev/null 2>&1 || { echo "curl is needed (apt-get install curl)" >&2; exit 1; }

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm), $NCPU cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "placement: gateway shards pinned by config gateway.cpus=[$GW_LIST], its other threads (acceptor, housekeeping, HTTP, trace writer, main) by gateway.service_cpus=[$SVC_LIST] ([] = unpinned; no taskset on the process); reference servers (sockperf, echo_floor, QuickFIX acceptor) taskset -c $SRV_CPU; generators and clients taskset -c $LOAD_CPUS; all at nice $NICE"
    echo "gateway: profile $PROFILE (CPU per echo: $CPU_PROFILE), $DEVICES UDP devices / $TCP_CLIENTS TCP clients, body 16 B; references: $MSG_BYTES-byte messages"
    echo "latency clients (udp, tcp parts): $CLIENTS"
    echo "runs: warm-up $WARMUP s, measured $DURATION s; rates $RATE and $RATE_HIGH/s; saturation offered $SAT_RATE/s"
    echo "tools: sockperf $(sockperf --version 2>&1 | grep -o 'version [^ ]*' | cut -d' ' -f2 || echo missing); QuickFIX $(dpkg-query -W -f='${Version}' libquickfix-dev 2>/dev/null || echo missing)"
    echo "loadavg_before: $(cat /proc/loadavg)"
    for m in "${MISSING[@]}"; do echo "MISSING $m"; done
} | tee "$OUT/env.txt"

# ----------------------------------------------------------------------------- helpers
PIDS=()
AUTOGROUP_NICE=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [ -n "$AUTOGROUP_NICE" ]; then echo "$AUTOGROUP_NICE" >/proc/self/autogroup 2>/dev/null || true; fi
}
trap cleanup EXIT
if [ "$NICE" != 0 ] && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ]; then
    prev=$(sed -n 's/.* nice \(-\{0,1\}[0-9]*\)$/\1/p' /proc/self/autogroup)
    if echo "$NICE" >/proc/self/autogroup 2>/dev/null; then
        AUTOGROUP_NICE="${prev:-0}"
        echo "autogroup: $(cat /proc/self/autogroup) while this script runs (was nice $AUTOGROUP_NICE)" | tee -a "$OUT/env.txt"
    else
        echo "autogroup: could not set its nice to $NICE (needs CAP_SYS_NICE); NICE applies within the group only" | tee -a "$OUT/env.txt"
    fi
fi

# The process `timeout` runs (taskset execs its command, so that is the real process).
child_of() {
    local c=""
    for _ in $(seq 100); do
        c=$(pgrep -P "$1" | head -1 || true)
        [ -n "$c" ] && break
        sleep 0.05
    done
    echo "$c"
}

# Summed CPU (ns, exact: schedstat) of the threads of PID whose name starts with PREFIX (all
# threads without one). Threads that exited are missing: use proc_ns for whole processes.
tasks_ns() {
    local pid=$1 pre=${2:-} sum=0 t c ns
    for t in /proc/"$pid"/task/*; do
        if [ -n "$pre" ]; then
            c=$(cat "$t/comm" 2>/dev/null || true)
            [[ "$c" == "$pre"* ]] || continue
        fi
        ns=$(cut -d' ' -f1 "$t/schedstat" 2>/dev/null || echo 0)
        sum=$((sum + ns))
    done
    echo "$sum"
}
# CPU (ns) of a whole process, exited threads included (utime + stime, in clock ticks); empty
# once the process is gone.
proc_ns() {
    local f
    f=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}') || true
    if [ -n "$f" ]; then echo $((f * 1000000000 / CLK)); fi
}
machine_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# Waits (at most QUIET_WAIT s) until the machine is quiet; says so when it is not.
quiet() {
    [ "$QUIET_WAIT" -gt 0 ] || return 0
    local t0=$SECONDS ok=0 a b pct
    while [ $((SECONDS - t0)) -lt "$QUIET_WAIT" ]; do
        a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
        sleep 1
        b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
        pct=$(echo "$a $b" | awk '{d = $4 - $2; print (d > 0 ? int(100 * ($3 - $1) / d) : 0)}')
        if [ "$pct" -lt "$QUIET_PCT" ]; then ok=$((ok + 1)); else ok=0; fi
        [ "$ok" -ge 2 ] && return 0
    done
    echo "  (machine still ${pct}% busy after ${QUIET_WAIT}s; going on)"
}

# The measured window of a generator run: from WARMUP + 0.25 s after its launch to 0.75 s
# before its measured window ends (so that no process has exited yet), timed from the launch, not
# from when this script got round to sampling; the report scales the generator's echo count by
# window / DURATION.
sleep_until() { # epoch ns
    local d=$(( $1 - $(date +%s%N) ))
    if [ "$d" -gt 0 ]; then sleep "$(awk -v d="$d" 'BEGIN {printf "%.3f", d / 1e9}')"; fi
}

# window NAME LAUNCH_NS SPEC...: samples CPU over the window and writes NAME.cpu.json. SPEC is
# label:threads:PID:PREFIX (summed schedstat of the threads whose name starts with PREFIX:
# exact, for threads that live through the window) or label:proc:PID (the whole process).
window() {
    local name=$1 launch=$2; shift 2
    local spec a k b c t0 t1 m0 m1 l0 v json=""
    declare -A s0
    sample() { # kind pid prefix
        if [ "$1" = threads ]; then tasks_ns "$2" "$3"; else proc_ns "$2"; fi
    }
    sleep_until $((launch + WARMUP * 1000000000 + 250000000))
    l0=$(cut -d' ' -f1-3 /proc/loadavg); m0=$(machine_busy_ticks); t0=$(date +%s%N)
    for spec in "$@"; do IFS=: read -r a k b c <<<"$spec"; s0[$a]=$(sample "$k" "$b" "$c"); done
    sleep_until $((launch + (WARMUP + DURATION) * 1000000000 - 750000000))
    for spec in "$@"; do
        IFS=: read -r a k b c <<<"$spec"
        v=$(sample "$k" "$b" "$c")
        if [ -n "$v" ] && [ -n "${s0[$a]}" ]; then json+="\"${a}_ns\":$((v - s0[$a])),"; else json+="\"${a}_ns\":null,"; fi
    done
    t1=$(date +%s%N); m1=$(machine_busy_ticks)
    echo "{${json}\"interval_ns\":$((t1 - t0)),\"run_s\":$DURATION,\"machine_busy_ticks\":$((m1 - m0)),\"clk_tck\":$CLK,\"ncpu\":$NCPU,\"loadavg_start\":\"$l0\",\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$OUT/$name.cpu.json"
}

GW_TO="" GW_PID="" GW_NAME=""
gw_start() { # NAME SHARDS CPULIST [serve args...]
    GW_NAME=$1; local shards=$2 cpus=$3; shift 3
    quiet
    local profile="${GW_PROFILE:-$PROFILE}"
    echo "$profile" >"$OUT/$GW_NAME.profile"
    timeout "$((WARMUP + DURATION + 90))" $PRIO "$BIN" serve --config "$profile" --open-logon \
        --shards "$shards" --set "gateway.cpus=[$cpus]" --set "gateway.service_cpus=[$SVC_LIST]" \
        --handshake-addr "127.0.0.1:$P_HS" --tcp-addr "127.0.0.1:$P_TCP" --session-port-base "$P_SESSION" \
        --metrics-addr "127.0.0.1:$P_METRICS" --hist-log "$OUT/$GW_NAME.gateway.hlog" "$@" \
        >"$OUT/$GW_NAME.gateway.log" 2>&1 &
    GW_TO=$!
    PIDS+=("$GW_TO")
    for _ in $(seq 50); do
        curl -sf http://127.0.0.1:$P_METRICS/healthz >/dev/null 2>&1 && break
        sleep 0.1
    done
    GW_PID=$(child_of "$GW_TO")
    if [ -z "$GW_PID" ] || ! curl -sf http://127.0.0.1:$P_METRICS/healthz >/dev/null 2>&1; then
        echo "gateway did not come up; log:" >&2
        cat "$OUT/$GW_NAME.gateway.log" >&2
        gw_stop
        return 1
    fi
}
gw_stop() {
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        curl -sf http://127.0.0.1:$P_METRICS/metrics >"$OUT/$GW_NAME.metrics.txt" 2>/dev/null || true
        kill -TERM "$GW_PID" 2>/dev/null || true
        # SIGTERM logs every session out and exits within 2 s.
        timeout 5 tail --pid="$GW_PID" -f /dev/null || kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    if [ -n "$GW_TO" ]; then wait "$GW_TO" 2>/dev/null || true; fi
    GW_TO="" GW_PID=""
}

# fg_load NAME LOAD_CPUS [load steady args...]: the generator against the running gateway, with
# the shard threads', the gateway's and the generator's CPU sampled over the measured window.
fg_load() {
    local name=$1 lcpus=$2; shift 2
    local to lp rc=0 launch
    launch=$(date +%s%N)
    timeout "$((WARMUP + DURATION + 60))" $PRIO taskset -c "$lcpus" "$BIN" load steady --json \
        --handshake "127.0.0.1:$P_HS" --tcp "127.0.0.1:$P_TCP" \
        --warmup "$WARMUP" --duration "$DURATION" --hist-log "$OUT/$name.hlog" "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.load.log" &
    to=$!
    PIDS+=("$to")
    lp=$(child_of "$to")
    window "$name" "$launch" "shard:threads:$GW_PID:fleetgate-shard" "gateway:proc:$GW_PID" "generator:proc:$lp"
    wait "$to" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    printf '  %-22s rc=%s %s\n' "$name" "$rc" "$(head -c 300 "$OUT/$name.json")"
}

# sockperf NAME udp|tcp RATE PORT
sp_run() {
    local name=$1 proto=$2 rate=$3 port=$4 flag="" to sp rc=0 s0 s1 t0 t1 m0 m1
    [ "$proto" = tcp ] && flag="--tcp"
    quiet
    timeout "$((DURATION + 40))" $PRIO taskset -c "$SRV_CPU" sockperf server -i 127.0.0.1 -p "$port" \
        $flag >"$OUT/$name.server.log" 2>&1 &
    to=$!
    PIDS+=("$to")
    sp=$(child_of "$to")
    sleep 0.5
    s0=$(tasks_ns "$sp"); t0=$(date +%s%N); m0=$(machine_busy_ticks)
    timeout "$((DURATION + 30))" $PRIO taskset -c "$LOAD_CPUS" sockperf ping-pong -i 127.0.0.1 -p "$port" \
        $flag -t "$DURATION" --mps="$rate" --full-rtt -m "$MSG_BYTES" >"$OUT/$name.txt" 2>&1 || rc=$?
    s1=$(tasks_ns "$sp"); t1=$(date +%s%N); m1=$(machine_busy_ticks)
    kill -TERM "$sp" 2>/dev/null || true
    wait "$to" 2>/dev/null || true
    echo "{\"server_ns\":$((s1 - s0)),\"interval_ns\":$((t1 - t0)),\"machine_busy_ticks\":$((m1 - m0)),\"clk_tck\":$CLK,\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$OUT/$name.cpu.json"
    printf '  %-22s rc=%s %s\n' "$name" "$rc" "$(grep -E 'Total Run|percentile 50.000' "$OUT/$name.txt" | tr -s ' ' | tr '\n' ' ' | head -c 200)"
}

# floor NAME SERVER_MODE udp|tcp [client args...]: echo_floor server on SRV_CPU, its client on
# LOAD_CPUS; the server reports its own CPU (echo thread, exact) at exit.
floor_run() {
    local name=$1 smode=$2 cmode=$3; shift 3
    local to rc=0 t0 t1 m0 m1
    quiet
    timeout "$((DURATION + 40))" $PRIO "$FLOOR" serve --mode "$smode" --addr "127.0.0.1:$P_FLOOR" \
        --cpu "$SRV_CPU" --secs "$((DURATION + 30))" --idle-exit 1 \
        >"$OUT/$name.server.json" 2>"$OUT/$name.server.log" &
    to=$!
    PIDS+=("$to")
    for _ in $(seq 50); do grep -qs listening "$OUT/$name.server.log" && break; sleep 0.05; done
    t0=$(date +%s%N); m0=$(machine_busy_ticks)
    timeout "$((DURATION + 30))" $PRIO taskset -c "$LOAD_CPUS" "$FLOOR" client --mode "$cmode" \
        --addr "127.0.0.1:$P_FLOOR" --size "$(( MSG_BYTES < 24 ? 24 : MSG_BYTES ))" --warmup 1 \
        --secs "$DURATION" --hlog "$OUT/$name.hlog" "$@" >"$OUT/$name.client.json" 2>"$OUT/$name.client.log" || rc=$?
    t1=$(date +%s%N); m1=$(machine_busy_ticks)
    wait "$to" || true
    echo "{\"interval_ns\":$((t1 - t0)),\"machine_busy_ticks\":$((m1 - m0)),\"clk_tck\":$CLK,\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$OUT/$name.cpu.json"
    echo "$rc" >"$OUT/$name.rc"
    printf '  %-22s rc=%s %s\n' "$name" "$rc" "$(head -c 250 "$OUT/$name.server.json")"
}

# raw NAME [load args...]: `fleetgate load steady --raw-echo` (the generator's datagrams, no
# sessions) against an echo_floor udp-mmsg server on SRV_CPU: the generator's own floor.
raw_run() {
    local name=$1; shift
    local to rc=0
    quiet
    timeout "$((WARMUP + DURATION + 40))" $PRIO "$FLOOR" serve --mode udp-mmsg --addr "127.0.0.1:$P_FLOOR" \
        --cpu "$SRV_CPU" --secs "$((WARMUP + DURATION + 30))" --idle-exit 1 \
        >"$OUT/$name.server.json" 2>"$OUT/$name.server.log" &
    to=$!
    PIDS+=("$to")
    for _ in $(seq 50); do grep -qs listening "$OUT/$name.server.log" && break; sleep 0.05; done
    timeout "$((WARMUP + DURATION + 30))" $PRIO taskset -c "$LOAD_CPUS" "$BIN" load steady --json \
        --raw-echo "127.0.0.1:$P_FLOOR" --warmup "$WARMUP" --duration "$DURATION" "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.load.log" || rc=$?
    wait "$to" || true
    echo "$rc" >"$OUT/$name.rc"
    printf '  %-22s rc=%s %s\n' "$name" "$rc" "$(head -c 200 "$OUT/$name.json")"
}

QF_TO=""
qf_start() { # NAME
    quiet
    sed "s/^SocketAcceptPort=.*/SocketAcceptPort=$P_QF/" "$QUICKFIX_DIR/acceptor/qfacceptor.cfg" >"$OUT/qfacceptor.cfg"
    timeout 300 $PRIO taskset -c "$SRV_CPU" "$QF_ACC" "$OUT/qfacceptor.cfg" select 240 \
        >"$OUT/$1.acceptor.log" 2>&1 &
    QF_TO=$!
    PIDS+=("$QF_TO")
    for _ in $(seq 50); do grep -q '^ready' "$OUT/$1.acceptor.log" && return 0; sleep 0.1; done
    echo "QuickFIX acceptor did not start: $(cat "$OUT/$1.acceptor.log")" >&2
    return 1
}
qf_stop() {
    local p
    p=$(child_of "$QF_TO")
    [ -n "$p" ] && kill -TERM "$p" 2>/dev/null
    wait "$QF_TO" 2>/dev/null || true
}
have_qf() { [ -x "$QF_ACC" ] && [ -x "$QF_CLI" ]; }
have_sp() { command -v sockperf >/dev/null 2>&1; }

T_START=$SECONDS
# ----------------------------------------------------------------------------- latency, UDP
if want udp; then
    echo "== UDP echo at $RATE/s over $DEVICES sessions"
    gw_start fg-udp-10k 1 "$SRV_CPU" \
        && fg_load fg-udp-10k "$LOAD_CPUS" --devices "$DEVICES" --rate "$RATE" --body-bytes 16 "${SPIN_ARGS[@]}"
    gw_stop
    # fleetgate measured as sockperf measures: one request in flight, from its actual send.
    gw_start fg-udp-10k-pp 1 "$SRV_CPU" \
        && fg_load fg-udp-10k-pp "$LOAD_CPUS" --devices "$DEVICES" --rate "$RATE" --body-bytes 16 --ping-pong "${SPIN_ARGS[@]}"
    gw_stop
    have_sp && sp_run sp-udp-10k udp "$RATE" "$P_SP"
    floor_run floor-udp-10k udp-mmsg udp --rate "$RATE" --flows "$DEVICES" "${FLOOR_SPIN[@]}"
    # The floor with the other client (sleeping when the run's spins, and the reverse): the
    # difference is what waking the client costs, not the server.
    if [ "$LOAD_SPIN" = 1 ]; then
        floor_run floor-udp-10k-other udp-mmsg udp --rate "$RATE" --flows "$DEVICES"
    else
        floor_run floor-udp-10k-other udp-mmsg udp --rate "$RATE" --flows "$DEVICES" --busy-poll
    fi
    # The generator's own floor: its datagrams against the bare loop, no gateway.
    raw_run raw-udp-10k --devices "$DEVICES" --rate "$RATE" --body-bytes 16 "${SPIN_ARGS[@]}"
    # The floor measured as sockperf measures: one message in flight, from its actual send.
    floor_run floor-udp-10k-pp udp-mmsg udp --rate "$RATE" --flows 1 --ping-pong "${FLOOR_SPIN[@]}"
fi

# ----------------------------------------------------------------------------- latency, TCP
if want tcp; then
    echo "== TCP echo at $RATE/s over $TCP_CLIENTS clients"
    gw_start fg-tcp-10k 1 "$SRV_CPU" \
        && fg_load fg-tcp-10k "$LOAD_CPUS" --devices 0 --tcp-clients "$TCP_CLIENTS" --rate "$RATE" --body-bytes 16 "${SPIN_ARGS[@]}"
    gw_stop
    gw_start fg-tcp-10k-pp 1 "$SRV_CPU" \
        && fg_load fg-tcp-10k-pp "$LOAD_CPUS" --devices 0 --tcp-clients "$TCP_CLIENTS" --rate "$RATE" --body-bytes 16 --ping-pong "${SPIN_ARGS[@]}"
    gw_stop
    have_sp && sp_run sp-tcp-10k tcp "$RATE" "$((P_SP + 1))"
    floor_run floor-tcp-10k tcp-epoll tcp --rate "$RATE" --flows "$TCP_CLIENTS" "${FLOOR_SPIN[@]}"
    floor_run floor-tcp-10k-pp tcp-epoll tcp --rate "$RATE" --flows 1 --ping-pong "${FLOOR_SPIN[@]}"
    if have_qf; then
        qf_start qf-rtt-10k && {
            timeout "$((DURATION + 60))" $PRIO taskset -c "$LOAD_CPUS" "$QF_CLI" rtt --port "$P_QF" \
                --n "$(( (DURATION + 1) * RATE ))" --rate "$RATE" --warmup "$RATE" \
                --max-secs "$((DURATION + 30))" --label qf-rtt-10k >"$OUT/qf-rtt-10k.txt" 2>&1 || true
            qf_stop
            printf '  %-22s %s\n' qf-rtt-10k "$(grep latency_from_intended "$OUT/qf-rtt-10k.txt" | head -c 200)"
        }
    fi
fi

# ----------------------------------------------------------------------------- CPU per echo
if want cpu; then
    echo "== CPU per echo at $RATE/s and $RATE_HIGH/s (profile $CPU_PROFILE)"
    GW_PROFILE="$CPU_PROFILE" gw_start fg-udp-10k-cpu 1 "$SRV_CPU" \
        && fg_load fg-udp-10k-cpu "$LOAD_CPUS" --devices "$DEVICES" --rate "$RATE" --body-bytes 16
    gw_stop
    if ! want udp; then
        have_sp && sp_run sp-udp-10k udp "$RATE" "$P_SP"
        floor_run floor-udp-10k udp-mmsg udp --rate "$RATE" --flows "$DEVICES"
    fi
    GW_PROFILE="$CPU_PROFILE" gw_start fg-udp-60k 1 "$SRV_CPU" \
        && fg_load fg-udp-60k "$LOAD_CPUS" --devices "$DEVICES" --rate "$RATE_HIGH" --body-bytes 16
    gw_stop
    floor_run floor-mmsg-60k udp-mmsg udp --rate "$RATE_HIGH" --flows "$DEVICES"
    floor_run floor-uring-60k udp-uring udp --rate "$RATE_HIGH" --flows "$DEVICES"
fi

# ----------------------------------------------------------------------------- saturation
if want sat; then
    echo "== saturation: offered $SAT_RATE/s to one shard; the echo floor closed loop, 256 in flight"
    gw_start fg-sat-uring 1 "$SRV_CPU" --io uring \
        && fg_load fg-sat-uring "$LOAD_CPUS" --devices "$DEVICES" --rate "$SAT_RATE" --threads "$LOAD_THREADS" --body-bytes 16
    gw_stop
    gw_start fg-sat-epoll 1 "$SRV_CPU" --io epoll \
        && fg_load fg-sat-epoll "$LOAD_CPUS" --devices "$DEVICES" --rate "$SAT_RATE" --threads "$LOAD_THREADS" --body-bytes 16
    gw_stop
    floor_run floor-sat-uring udp-uring udp --rate 0 --window 256 --flows 4
    floor_run floor-sat-mmsg udp-mmsg udp --rate 0 --window 256 --flows 4
fi

# ----------------------------------------------------------------------------- resend
if want resend; then
    echo "== resend of $RESEND_N messages"
    # fleetgate: `fleetgate load resend-burst`: per repeat, one UDP device and one TCP client
    # receive RESEND_N echo replies live (the live send rate), then ask for them all with one
    # ResendRequest; first/last resent message and resent msgs/s timed at the device, every
    # message checked. The gateway keeps a journal of 16,384 per session (few sessions).
    gw_start fg-resend 1 "$SRV_CPU" --set journal.messages_per_session=16384 \
        --set gateway.max_sessions_per_shard=64 && {
        rc=0
        timeout 120 $PRIO taskset -c "$LOAD_CPUS" "$BIN" load resend-burst --json \
            --handshake "127.0.0.1:$P_HS" --tcp "127.0.0.1:$P_TCP" --devices 1 --tcp-clients 1 \
            --messages "$RESEND_N" --window 256 --repeat "$RESEND_REPEAT" \
            >"$OUT/fg-resend.json" 2>"$OUT/fg-resend.load.log" || rc=$?
        echo "$rc" >"$OUT/fg-resend.rc"
        printf '  %-22s rc=%s %s\n' fg-resend "$(cat "$OUT/fg-resend.rc")" \
            "$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(" ".join("%s: live %.0f/s resent %.0f/s first %.0f us" % (m["transport"], m["median_live_per_s"], m["median_resent_per_s"], m["median_first_us"]) for m in j["summary"]))' "$OUT/fg-resend.json" 2>/dev/null)"
    }
    gw_stop
    if have_qf; then
        qf_start qf-resend-10000 && {
            timeout 150 $PRIO taskset -c "$LOAD_CPUS" "$QF_CLI" resend --port "$P_QF" --n "$RESEND_N" --repeat "$RESEND_REPEAT" --window 256 \
                --max-secs 60 --label qf-resend-10000 >"$OUT/qf-resend-10000.txt" 2>&1 || true
            qf_stop
            printf '  %-22s %s\n' qf-resend-10000 "$(grep median "$OUT/qf-resend-10000.txt")"
        }
    fi
fi

# ----------------------------------------------------------------------------- scaling
if want scale; then
    ALL_CPUS="$(cpu_list "0-$((NCPU - 1))")"
    echo "== scaling: shard counts $SHARD_COUNTS (shards on cores [$ALL_CPUS] round robin, generator on all cores, $NCPU threads; budget ${SCALE_BUDGET}s)"
    t_scale=$SECONDS
    for n in $SHARD_COUNTS; do
        per_run=$((WARMUP + DURATION + 8))
        if [ $((SECONDS - t_scale + per_run)) -gt "$SCALE_BUDGET" ]; then
            echo "  scale-$n: skipped (would pass the ${SCALE_BUDGET}s budget)"
            echo "skipped: time budget" >"$OUT/scale-$n.skipped"
            continue
        fi
        gw_start "scale-$n" "$n" "$ALL_CPUS" \
            && fg_load "scale-$n" "$ALL_CPUS" --devices "$DEVICES" --rate "$(( SAT_RATE * n ))" --threads "$NCPU" --body-bytes 16
        gw_stop
    done
fi

echo "loadavg_after: $(cat /proc/loadavg)" | tee -a "$OUT/env.txt"
echo "elapsed_s: $((SECONDS - T_START))" | tee -a "$OUT/env.txt"

# ----------------------------------------------------------------------------- report
python3 "$ROOT/scripts/bench_compare.py" "$OUT" | tee "$OUT/table.txt"
hlogs=()
for f in "$OUT"/fg-*0k.hlog "$OUT"/floor-*0k.hlog; do [ -s "$f" ] && hlogs+=("$f"); done
if [ "${#hlogs[@]}" -gt 0 ]; then
    "$BIN" hist plot "${hlogs[@]}" -o "$OUT/latency-hlog.svg" --log-y >/dev/null 2>&1 \
        && echo "plot (HdrHistogram logs): $OUT/latency-hlog.svg" || true
fi
