#!/usr/bin/env bash
# A million UDP devices on one host (issue 11): storms DEVICES (1,000,000) devices onto a 2-shard
# gateway (tuning/large-fleet.toml) in STEPS (10) steps, each reported with its logon rate and
# handshake percentiles while earlier steps stay logged on and heartbeat; holds the fleet idle for
# HOLD (60) s; then reports the gateway's RSS per session (growth over the RSS before the storm,
# and the total), its CPU per heartbeat over the hold, the generator's own RSS and CPU, and the
# lost devices (there must be none: the run fails otherwise). JSON, .hlog and a plot go to
# results/<stamp>-million/.
#
# Bounded: the generator stops itself after LIMIT - 60 s (default LIMIT 600) and reports what it
# has; `timeout` ends it at LIMIT whatever happens. If the host's available memory falls under
# MEM_FLOOR_MB (2048) the gateway is stopped and the report says so: the gateway may not yet hold
# a million sessions leanly, and this script says what it measured, whatever the gateway does.
#
#   scripts/load-million.sh                       # the full run (about 5-10 minutes)
#   DEVICES=100000 STEPS=5 HOLD=20 scripts/load-million.sh
SHARDS="${SHARDS:-2}"
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-1000000}" STEPS="${STEPS:-10}" HOLD="${HOLD:-60}" LIMIT="${LIMIT:-600}"
SOURCE_IPS="${SOURCE_IPS:-1000}" SOCKETS="${SOCKETS:-1024}" MEM_FLOOR_MB="${MEM_FLOOR_MB:-2048}"
# A gateway holding a million sessions takes a while to log them out and exit.
STOP_WAIT="${STOP_WAIT:-40}"
# Datagrams the kernel dropped because a UDP receive buffer was full (whole host).
udp_rcvbuf_errors() { awk '/^Udp:/ { n++; if (n == 2) print $6 }' /proc/net/snmp; }
T0=$SECONDS
PROFILE=tuning/large-fleet.toml new_results million
{
    echo "fleet: $DEVICES UDP devices in $STEPS steps, all at once per step, hold $HOLD s"
    echo "generator: $SOCKETS sockets on $SOURCE_IPS loopback addresses (one handshake in flight per socket)"
    echo "host: net.core.rmem_max=$(cat /proc/sys/net/core/rmem_max) (tuning/sysctl.conf asks 16777216)," \
        "MemAvailable $(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo) MiB," \
        "open files hard limit $(ulimit -Hn)"
    echo "machine load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$OUT/placement.txt"

# GATEWAY_SET: one more `--set key=value` for the gateway, e.g. 'gateway.idle="coalesce"'.
start_gateway tuning/large-fleet.toml --set "gateway.cpus=[${GATEWAY_CPUS%%-*}]" \
    ${GATEWAY_SET:+--set "$GATEWAY_SET"}

wait_rss_settled
echo "gateway RSS before the storm: $(( $(rss_kib) / 1024 )) MiB ($(grep -o 'reserved [0-9]* MiB' "$OUT/gateway.log" | head -1) at start-up)" \
    | tee -a "$OUT/placement.txt"

# Memory guard: stop the gateway (never this host) if available memory runs low.
(
    while kill -0 "$GW_PID" 2>/dev/null; do
        avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
        if [ "$avail" -lt "$MEM_FLOOR_MB" ]; then
            echo "$(date +%T) MemAvailable ${avail} MiB < ${MEM_FLOOR_MB} MiB with gateway RSS $(( $(rss_kib) / 1024 )) MiB: gateway stopped" \
                >"$OUT/memory-guard.txt"
            kill -KILL "$GW_PID" 2>/dev/null
            break
        fi
        sleep 0.5
    done
) &
GUARD=$!

drops0=$(udp_rcvbuf_errors)
left=$(( LIMIT - (SECONDS - T0) ))
rc=0
LOAD_TIMEOUT=$left load storm --devices "$DEVICES" --steps "$STEPS" --rate 0 --warmup 2 \
    --duration "$HOLD" --source-ips "$SOURCE_IPS" --sockets "$SOCKETS" --step-timeout 120 \
    --time-limit $(( left - 60 )) --no-logout --gateway-pid "$GW_PID" || rc=$?
kill "$GUARD" 2>/dev/null || true
{
    echo "UDP datagrams dropped by the kernel (receive buffer full, whole host) during the run: $(( $(udp_rcvbuf_errors) - drops0 ))"
    echo "gateway session sockets (skmem d = drops):"
    ss -uamn 2>/dev/null | grep -A1 -E "127\.0\.0\.1:50(0[0-9]) " | sed 's/^/  /' || true
} | tee -a "$OUT/placement.txt"

gateway_state="running"
if [ -f "$OUT/memory-guard.txt" ]; then
    gateway_state="STOPPED BY THE MEMORY GUARD: $(cat "$OUT/memory-guard.txt")"
elif ! kill -0 "$GW_PID" 2>/dev/null; then
    wait "$GW_PID" 2>/dev/null; st=$?
    gateway_state="DIED during the run (exit status $st$([ "$st" = 137 ] && echo ', SIGKILL: out of memory?'))"
    tail -5 "$OUT/gateway.log" >&2
fi
echo "gateway: $gateway_state" | tee -a "$OUT/placement.txt"
if [ "$rc" = 124 ]; then
    echo "THE GENERATOR WAS KILLED AT THE ${LIMIT} s LIMIT: no summary" | tee -a "$OUT/placement.txt"
fi

python3 - "$OUT" "$rc" <<'PY' | tee "$OUT/report.txt"
import json, sys
out, rc = sys.argv[1], int(sys.argv[2])
try:
    s = json.load(open(f"{out}/summary.json"))
except Exception as e:
    print(f"no summary ({e}); generator exit status {rc}")
    sys.exit(0)
ms = lambda ns: ns / 1e6
f = lambda v, fmt="{:.0f}": "-" if v is None else fmt.format(v)
print(f"{'step':>4} {'devices':>8} {'on':>8} {'rate99/s':>9} {'rate/s':>8} {'t99 s':>7} "
      f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'max ms':>8} {'retries':>8}")
for st in s["steps"]:
    h = st["handshake_ns"]
    print(f"{st['step']:>4} {st['devices']:>8} {st['logged_on']:>8} {f(st['rate_99_per_s']):>9} "
          f"{f(st['rate_all_per_s']):>8} {f(st['t99_s'], '{:.2f}'):>7} {ms(h['p50']):>8.1f} "
          f"{ms(h['p90']):>8.1f} {ms(h['p99']):>8.1f} {ms(h['p99_9']):>8.1f} {ms(h['max']):>8.1f} "
          f"{st['retransmissions']['total']:>8}")
hold = s["hold"]
print(f"hold {hold['seconds']:.0f} s: heartbeats sent {hold['heartbeats_sent']} "
      f"({hold['heartbeats_sent_per_s']:.0f}/s), received {hold['heartbeats_received']} "
      f"({hold['heartbeats_received_per_s']:.0f}/s), test requests from the gateway "
      f"{hold['test_requests_received']}")
g = s.get("gateway") or {}
mib = lambda b: "-" if b is None else f"{b / 1048576:.0f} MiB"
print(f"gateway: RSS {mib(g.get('rss_before_bytes'))} before the storm, "
      f"{mib(g.get('rss_fleet_bytes'))} with the fleet; per session "
      f"{f(g.get('rss_per_session_bytes'))} B added ({f(g.get('rss_total_per_session_bytes'))} B "
      f"with what was reserved); CPU over the hold {f(g.get('hold_cpu_s'), '{:.2f}')} s "
      f"({f(g.get('hold_cpu_percent'), '{:.1f}')}% of a core), "
      f"{f(g.get('cpu_per_heartbeat_us'), '{:.2f}')} µs per heartbeat"
      + ("; THE GATEWAY PROCESS IS GONE" if g.get("gone") else ""))
print(f"gateway at the end: RSS {mib(g.get('rss_end_bytes'))}, "
      f"{f(g.get('rss_end_per_session_bytes'))} B added per session logged on then")
gen = s["generator"]
print(f"generator: RSS {mib(gen.get('rss_fleet_bytes') or gen['rss_end_bytes'])} with the fleet "
      f"(peak {mib(gen['hwm_bytes'])}), {gen['rss_per_device_bytes']:.0f} B per device; "
      f"CPU {gen['cpu_user_s']:.1f} s user + {gen['cpu_sys_s']:.1f} s sys "
      f"({gen['cpu_percent']:.0f}% of a core over {gen['wall_s']:.0f} s)")
lost = s["device_errors"]
print(f"devices logged on at the end: {s['active_at_end']} of {s['devices']}; "
      f"lost devices: {lost} {s['errors'] if s['errors'] else ''}")
print("RESULT: " + ("FAILED" if s["failed"] else "ok"))
PY

stop_gateway
plot
exit "$rc"
