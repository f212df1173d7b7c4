#!/usr/bin/env bash
# Handshake storm: DEVICES UDP devices do handshake + config + logon at RATE/s (0 = all at once),
# in STEPS steps, then stay logged on for DURATION s. Reports the rate until 99% and until the last
# logon, the handshake percentiles and the retransmissions per step, the gateway's RSS per session
# and the generator's own cost. (A million devices: scripts/load-million.sh.)
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-5000}" RATE="${RATE:-0}" DURATION="${DURATION:-10}" STEPS="${STEPS:-1}"
new_results storm
start_gateway tuning/large-fleet.toml --set "gateway.max_sessions_per_shard=$(( DEVICES + 1000 ))"
load storm --devices "$DEVICES" --rate "$RATE" --steps "$STEPS" --warmup 1 --duration "$DURATION" \
    --source-ips 250 --gateway-pid "$GW_PID"
stop_gateway
plot
