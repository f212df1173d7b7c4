#!/usr/bin/env bash
# Idle fleet: DEVICES sessions that only heartbeat (every 5 s here) for DURATION s; reports
# heartbeats per second, lost devices, the gateway's RSS per session and CPU per heartbeat (from
# /proc), and the generator's own RSS and CPU.
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-5000}" DURATION="${DURATION:-30}"
new_results idle
start_gateway tuning/large-fleet.toml --set session.heartbeat_interval_s=5 \
    --set "gateway.max_sessions_per_shard=$(( DEVICES + 1000 ))"
load idle --devices "$DEVICES" --rate 0 --warmup 5 --duration "$DURATION" --source-ips 250 \
    --gateway-pid "$GW_PID"
stop_gateway
plot
