#!/usr/bin/env bash
# Devices bridged to a host (issue 10): DEVICES UDP devices type RATE keystrokes/s for DURATION s
# through the gateway to a byte-echo host (served by the generator at HOST_ADDR), with one
# device roaming every ROAM_EVERY s, against the same schedule sent straight to the host over
# TCP, in the same run. Every device's echo stream must be exact (no loss, duplication or
# reordering) and every roam must resume its session; the table gives keystroke-to-echo latency
# from the intended time on both paths.
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-50}" RATE="${RATE:-2000}" DURATION="${DURATION:-10}"
ROAM_EVERY="${ROAM_EVERY:-0.5}" HOST_ADDR="${HOST_ADDR:-127.0.0.1:7023}"
new_results host
start_gateway tuning/default.toml \
    --set "hosts=[{name=\"echo\", addr=\"$HOST_ADDR\"}]" \
    --set 'groups=[{name="pdt", device_type="PDT9090_E5", host="echo"}]'
rc=0
timeout "${LOAD_TIMEOUT:-300}" taskset -c "$LOAD_CPUS" "$BIN" load host --echo-host \
    --handshake "$GW_HANDSHAKE" --host "$HOST_ADDR" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" \
    --roam-every "$ROAM_EVERY" | tee "$OUT/summary.txt" || rc=$?
stop_gateway
grep -E "^fleetgate_host_" "$OUT/metrics.txt" | tee "$OUT/host-metrics.txt" || true
exit $rc
