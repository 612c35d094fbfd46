#!/usr/bin/env bash
# Scenario 4, firehose: one SSE connection reading COUNT (2,000,000) small
# ticker events as fast as they come, through the gateway and through a
# bare hyper server sending the same bytes (the ceiling).
source "$(dirname "$0")/lib.sh"
COUNT="${COUNT:-2000000}"
build
start_gateway "$BENCH_DIR/configs/firehose.toml" GATEWAY__ROUTES__FIREHOSE__BACKENDS__TICKER__COUNT="$COUNT"
echo "gateway:"
"$LOADGEN" "http://$GATEWAY_ADDR/firehose" -c 1 --ts-field "" --watch-pid "$GATEWAY_PID" \
  --report "$RESULTS/firehose-gateway.json"
kill "$GATEWAY_PID"

log="$(mktemp -t bench-ceiling.XXXXXX)"
"$BIN/ceiling" 127.0.0.1:0 "$COUNT" 2>"$log" &
CEILING_PID=$!
PIDS+=("$CEILING_PID")
addr="$(listening_addr "$log" ceiling)" || exit 1
echo "bare hyper server:"
"$LOADGEN" "http://$addr/firehose" -c 1 --ts-field "" --watch-pid "$CEILING_PID" \
  --report "$RESULTS/firehose-ceiling.json"
