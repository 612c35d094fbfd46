#!/usr/bin/env bash
# Scenario 1, many short streams: the reference stream to CONNECTIONS
# (10,000) concurrent clients, all at once; p99 time to first byte and the
# wall time against one stream's own duration; then the same clients
# arriving over one second.
source "$(dirname "$0")/lib.sh"
CONNECTIONS="${CONNECTIONS:-10000}"
build
start_gateway "$BENCH_DIR/configs/short.toml"
echo "one stream alone:"
"$LOADGEN" "http://$GATEWAY_ADDR/" -c 1 --format ndjson --report "$RESULTS/short-one.json"
echo "$CONNECTIONS at once:"
"$LOADGEN" "http://$GATEWAY_ADDR/" -c "$CONNECTIONS" --format ndjson --processes 2 --sources 8 \
  --watch-pid "$GATEWAY_PID" --report "$RESULTS/short.json"
echo "$CONNECTIONS arriving over one second:"
"$LOADGEN" "http://$GATEWAY_ADDR/" -c "$CONNECTIONS" --rate "$CONNECTIONS" --format ndjson --processes 2 \
  --sources 8 --watch-pid "$GATEWAY_PID" --report "$RESULTS/short-ramped.json"
