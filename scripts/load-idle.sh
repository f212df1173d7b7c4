#!/usr/bin/env bash
# Idle fleet: DEVICES sessions that only heartbeat; reports the gateway's RSS and CPU from /proc.
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-5000}" DURATION="${DURATION:-30}"
new_results idle
start_gateway tuning/large-fleet.toml --set session.heartbeat_interval_s=5
load idle --devices "$DEVICES" --rate 0 --warmup 5 --duration "$DURATION" --source-ips 250 \
    --gateway-pid "$GW_PID" 2> >(tee "$OUT/gateway-usage.txt" >&2)
stop_gateway
plot
