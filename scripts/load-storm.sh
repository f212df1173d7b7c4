#!/usr/bin/env bash
# Handshake storm: DEVICES UDP devices do handshake + config + logon at RATE/s (0 = all at once).
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-5000}" RATE="${RATE:-0}" DURATION="${DURATION:-10}"
new_results storm
start_gateway tuning/large-fleet.toml
load storm --devices "$DEVICES" --rate "$RATE" --warmup 0 --duration "$DURATION" --source-ips 250
stop_gateway
plot
