#!/usr/bin/env bash
# Soak: churn, echo, resend and a periodic storm together against one gateway for SOAK_SECONDS
# (default 3600), with the gateway's RSS, open fds and sessions sampled every SAMPLE_S (10) s,
# plotted (soak.svg) and judged (verdict.txt, exit status):
#   - RSS: a least-squares line over the last 45 minutes (the last 3/4 of a shorter run) must not
#     climb more than MAX_GROWTH_KIB_PER_H (default 2048 KiB per hour);
#   - fds: the last sample is no higher than the highest of the first quarter after warm-up + 16;
#   - every load run passed (churn and resend error shares, every storm device logged on), and
#     the gateway is still alive at the end.
# Everything on loopback; each load run is bounded by `timeout`.
#
#   scripts/soak.sh                              # one hour
#   SOAK_SECONDS=300 STORM_EVERY=60 scripts/soak.sh
source "$(dirname "$0")/lib.sh"
SECONDS_TOTAL="${SOAK_SECONDS:-$(( ${SOAK_MINUTES:-60} * 60 ))}"
CHURN_DEVICES="${CHURN_DEVICES:-1500}" CHURN_RATE="${CHURN_RATE:-1500}"
RESEND_DEVICES="${RESEND_DEVICES:-200}" RESEND_RATE="${RESEND_RATE:-400}"
STORM_DEVICES="${STORM_DEVICES:-2000}" STORM_EVERY="${STORM_EVERY:-300}"
SAMPLE_S="${SAMPLE_S:-10}" MAX_GROWTH_KIB_PER_H="${MAX_GROWTH_KIB_PER_H:-2048}"
new_results soak
{
    echo "soak: ${SECONDS_TOTAL} s; churn ${CHURN_DEVICES} devices at ${CHURN_RATE}/s (reconnect every 30 s);"
    echo "      resend ${RESEND_DEVICES} devices at ${RESEND_RATE}/s (5% dropped, resume every 4 s);"
    echo "      storm of ${STORM_DEVICES} devices every ${STORM_EVERY} s; sample every ${SAMPLE_S} s"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$OUT/placement.txt"
start_gateway tuning/default.toml --app feed --set gateway.feed_interval_ms=500 \
    --set gateway.max_sessions_per_shard=6144 \
    --set udp.handshake_rate_per_s=200 --set udp.handshake_burst=400

# gen NAME TIMEOUT SCENARIO ARGS...: one generator run, its summary in NAME.json.
gen() {
    local name="$1" limit="$2" scenario="$3"; shift 3
    timeout "$limit" taskset -c "$LOAD_CPUS" "$BIN" load "$scenario" --json \
        --handshake "$GW_HANDSHAKE" --tcp "$GW_TCP" "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.err"
}

sampler() {
    local now rss fds sessions active
    echo "unix_s,rss_kib,fds,sessions,active,load1" >"$OUT/samples.csv"
    while kill -0 "$GW_PID" 2>/dev/null; do
        now=$(date +%s.%N)
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$GW_PID/fd" 2>/dev/null | wc -l)
        read -r sessions active < <(curl -sf --max-time 2 http://$GW_METRICS/metrics 2>/dev/null \
            | awk '/^fleetgate_sessions\{/ {s += $2; if ($0 ~ /active/) a += $2} END {print s+0, a+0}')
        echo "$now,$rss,$fds,${sessions:-0},${active:-0},$(cut -d' ' -f1 /proc/loadavg)" \
            >>"$OUT/samples.csv"
        sleep "$SAMPLE_S"
    done
}
sampler &
SAMPLER=$!

status=0
gen churn $(( SECONDS_TOTAL + 120 )) churn --devices "$CHURN_DEVICES" --rate "$CHURN_RATE" \
    --warmup 10 --duration "$SECONDS_TOTAL" --reconnect-every 30 --source-ips 250 \
    --user-prefix churn --max-error-share 0.001 &
CHURN=$!
gen resend $(( SECONDS_TOTAL + 120 )) resend --devices "$RESEND_DEVICES" --rate "$RESEND_RATE" \
    --warmup 5 --duration "$SECONDS_TOTAL" --drop 0.05 --reconnect-every 4 --source-ips 50 \
    --user-prefix resend --max-error-share 0.01 &
RESEND=$!

# The periodic storm: STORM_DEVICES at once, held 5 s, logged out; until the soak's end.
end=$(( $(date +%s) + SECONDS_TOTAL ))
storms=0 storm_failures=0
sleep 30
while [ $(( $(date +%s) + 30 )) -lt "$end" ]; do
    storms=$((storms + 1))
    if ! gen "storm-$storms" 120 storm --devices "$STORM_DEVICES" --rate 0 --warmup 1 \
        --duration 5 --source-ips 250 --user-prefix "storm$storms-" --attempts 5; then
        storm_failures=$((storm_failures + 1))
        echo "storm $storms FAILED: $(cat "$OUT/storm-$storms.json")"
    fi
    next=$(( $(date +%s) + STORM_EVERY ))
    while [ "$(date +%s)" -lt "$next" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
done
wait "$CHURN" || { status=1; echo "churn FAILED: $(cat "$OUT/churn.json") $(tail -3 "$OUT/churn.err")"; }
wait "$RESEND" || { status=1; echo "resend FAILED: $(cat "$OUT/resend.json") $(tail -3 "$OUT/resend.err")"; }
[ "$storm_failures" -eq 0 ] || status=1
alive=yes
kill -0 "$GW_PID" 2>/dev/null || { alive=no; status=1; }
sleep "$SAMPLE_S"
stop_gateway
wait "$SAMPLER" 2>/dev/null || true
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/placement.txt"
{
    echo "churn: $(cat "$OUT/churn.json")"
    echo "resend: $(cat "$OUT/resend.json")"
    echo "storms: $storms run, $storm_failures failed; gateway alive at the end: $alive"
} >"$OUT/loads.txt"
cat "$OUT/loads.txt"
python3 "$ROOT/scripts/soak_plot.py" "$OUT/samples.csv" "$OUT/soak.svg" "$MAX_GROWTH_KIB_PER_H" \
    | tee "$OUT/verdict.txt" || status=1
echo "plot: $OUT/soak.svg"
if [ "$status" -eq 0 ]; then echo "soak: PASS"; else echo "soak: FAIL"; fi
exit "$status"
