#!/usr/bin/env bash
# Failover across several gateways (issue 10, DESIGN.md §4): three gateway processes on
# 127.0.0.1 (different ports, each with its operator socket), a fleet of DEVICES UDP devices and
# TCP TCP clients (default 3,000 + 300) carrying the list of the three. While the fleet is held,
# gateway 1 is drained (`fleetgate ctl drain --deadline DEADLINE`) and gateway 2 is killed with
# SIGKILL. Reported (and required, or the script exits 1):
#   - every device ends logged on to the live gateway (gateway 0), none lost (errors_total 0);
#   - the time until the last device is back, from the drain and from the SIGKILL, and the time
#     from each session's end to the device's next logon (p50, p99, max);
#   - no device held by the live gateway was disturbed (no session end, no ResendRequest).
# JSON and logs go to results/<stamp>-failover/.
#
#   scripts/load-failover.sh                      # io = auto (io_uring where usable)
#   IO=epoll scripts/load-failover.sh             # the epoll fallback
#   DEVICES=10000 TCP=500 HB=2 scripts/load-failover.sh
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-3000}" TCP="${TCP:-300}" IO="${IO:-auto}" HB="${HB:-5}"
DEADLINE="${DEADLINE:-5}" HOLD="${HOLD:-60}" RATE="${DRAIN_RATE:-1000}"
LOGON_RATE="${LOGON_RATE:-1000}"
TOTAL=$(( DEVICES + TCP ))
new_results failover
{
    echo "fleet: $DEVICES UDP devices + $TCP TCP clients, server list of 3 gateways, io=$IO," \
        "heartbeat $HB s, logons at $LOGON_RATE/s, drain deadline $DEADLINE s, drain pace $RATE sessions/s," \
        "hold $HOLD s"
    echo "machine load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$OUT/placement.txt"

PIDS=()
stop_all() {
    for i in 0 1 2; do
        local pid="${PIDS[$i]:-}"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            timeout 5 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
trap stop_all EXIT

SERVERS=""
# No taskset on the processes: each gateway pins its shard (gateway.cpus) and its other threads
# (gateway.service_cpus), as scripts/lib.sh's start_gateway does.
placement_args
for i in 0 1 2; do
    udp=$(( 13006 + 10000 * i )) tcp=$(( 14210 + 10000 * i ))
    "$BIN" serve --open-logon --shards 1 --io "$IO" "${PLACEMENT[@]}" \
        --handshake-addr "127.0.0.1:$udp" --tcp-addr "127.0.0.1:$tcp" \
        --session-port-base $(( 15000 + 10000 * i )) --metrics-addr "127.0.0.1:$(( 19464 + 10000 * i ))" \
        --set "gateway.admin_socket=\"$OUT/gw$i.sock\"" \
        --set "session.heartbeat_interval_s=$HB" --set "gateway.drain_logouts_per_s=$RATE" \
        --set "gateway.max_sessions_per_shard=$(( TOTAL + 1024 ))" \
        --set "tcp.max_connections_per_shard=$(( TCP + 256 ))" \
        >"$OUT/gw$i.log" 2>&1 &
    PIDS[$i]=$!
    SERVERS="${SERVERS:+$SERVERS,}127.0.0.1:$udp/$tcp"
done
ctl() { local i="$1"; shift; "$BIN" ctl --socket "$OUT/gw$i.sock" "$@"; }
active() { ctl "$1" --json status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"]["active"])' 2>/dev/null || echo 0; }
for i in 0 1 2; do
    for _ in $(seq 1 100); do ctl "$i" status >/dev/null 2>&1 && break; sleep 0.1; done
    ctl "$i" status >/dev/null || { echo "gateway $i did not come up:"; cat "$OUT/gw$i.log"; exit 1; }
done
echo "servers: $SERVERS"

# The fleet logs on at LOGON_RATE per second (a storm is `scripts/load-storm.sh`'s business) and
# is held for HOLD s; one socket per UDP device so that no handshake waits for another's.
timeout $(( HOLD + 180 )) taskset -c "$LOAD_CPUS" "$BIN" load idle --json --servers "$SERVERS" \
    --devices "$DEVICES" --tcp-clients "$TCP" --rate "$LOGON_RATE" --warmup 2 --duration "$HOLD" \
    --step-timeout 60 --sockets "$DEVICES" --source-ips 100 >"$OUT/summary.json" &
LOAD_PID=$!

T0=$SECONDS
while [ $(( SECONDS - T0 )) -lt 90 ]; do
    n=$(( $(active 0) + $(active 1) + $(active 2) ))
    [ "$n" -ge "$TOTAL" ] && break
    sleep 0.2
done
echo "logged on: $(active 0) + $(active 1) + $(active 2) of $TOTAL" | tee "$OUT/events.txt"
sleep 3
T_DRAIN=$(date +%s.%N)
ctl 1 drain --deadline "$DEADLINE" | tee -a "$OUT/events.txt"
echo "drained gateway 1 at $T_DRAIN" | tee -a "$OUT/events.txt"
sleep 2
T_KILL=$(date +%s.%N)
kill -KILL "${PIDS[2]}"
echo "killed gateway 2 (SIGKILL) at $T_KILL" | tee -a "$OUT/events.txt"
prev=0
for t in 5 15 30; do
    sleep $(( t - prev ))
    prev=$t
    echo "+${t}s after the kill: gateway 0 active $(active 0), gateway 1 active $(active 1)" | tee -a "$OUT/events.txt"
done
ctl 1 status | tee "$OUT/gw1-status.txt"
ctl 0 sessions --limit 5 >"$OUT/gw0-sessions.txt" || true
rc=0
wait "$LOAD_PID" || rc=$?

python3 - "$OUT/summary.json" "$T_DRAIN" "$T_KILL" "$TOTAL" <<'EOF' | tee "$OUT/figures.txt"
import json, sys
s = json.load(open(sys.argv[1]))
t_drain, t_kill, total = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
f = s["fleet"]
b = f["back_ns"]
ms = lambda ns: f"{ns / 1e6:.0f} ms"
print(f"devices {total}: errors_total {s['errors_total']} {s['errors']}")
print(f"moves by reason: {f['moves']}; resumed at the holder: {f['resumed_at_holder']}")
print(f"first logons by gateway {f['first_by_gateway']}; logged on at the end {f['at_end_by_gateway']}")
print(f"session end -> next logon: {b['count']} devices, p50 {ms(b['p50'])}, p99 {ms(b['p99'])}, max {ms(b['max'])}")
last = f.get("last_back_unix_s")
if last:
    print(f"last device back {last - t_drain:.1f} s after the drain, {last - t_kill:.1f} s after the SIGKILL")
und, first = f["undisturbed_by_gateway"], f["first_by_gateway"]
print(f"live gateway 0: {und[0]} of its {first[0]} devices undisturbed (no session end, no ResendRequest); sessions ended there: {f['sessions_ended_by_gateway'][0]}")
ok = (s["errors_total"] == 0 and f["at_end_by_gateway"][0] == total
      and und[0] == first[0] and not s["failed"])
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
check=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] && [ "$check" -eq 0 ]
