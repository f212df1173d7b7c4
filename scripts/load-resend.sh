#!/usr/bin/env bash
# Loss with resend: the generator drops DROP of received datagrams and every device reconnects and
# resumes every RECONNECT s; the `feed` app pushes events and every one must arrive exactly once,
# in order (the run fails otherwise).
source "$(dirname "$0")/lib.sh"
DEVICES="${DEVICES:-500}" RATE="${RATE:-2000}" DURATION="${DURATION:-20}" DROP="${DROP:-0.05}" RECONNECT="${RECONNECT:-4}"
new_results resend
start_gateway tuning/default.toml --app feed --set gateway.feed_interval_ms=100 \
    --set journal.messages_per_session=1024 --set udp.handshake_rate_per_s=100
load resend --devices "$DEVICES" --rate "$RATE" --warmup 3 --duration "$DURATION" --drop "$DROP" \
    --reconnect-every "$RECONNECT" --max-error-share 0.01
stop_gateway
plot
