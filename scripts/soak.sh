#!/usr/bin/env bash
# Soak: steady echo with churn and resends for SOAK_MINUTES (default 10), then checks that the
# gateway's RSS did not grow after warm-up (preallocation) and that no error was counted.
source "$(dirname "$0")/lib.sh"
MINUTES="${SOAK_MINUTES:-10}" DEVICES="${DEVICES:-2000}" RATE="${RATE:-3000}"
new_results soak
start_gateway tuning/default.toml --app feed --set gateway.feed_interval_ms=1000
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
(sleep 20; echo "rss_after_warmup_kib $(rss)" >>"$OUT/rss.txt") &
LOAD_TIMEOUT=$(( MINUTES * 60 + 120 )) load churn --devices "$DEVICES" --rate "$RATE" --warmup 10 \
    --duration $(( MINUTES * 60 )) --reconnect-every 30 --source-ips 250 --max-error-share 0.001
echo "rss_at_end_kib $(rss)" >>"$OUT/rss.txt"
cat "$OUT/rss.txt"
stop_gateway
plot
