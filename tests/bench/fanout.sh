#!/usr/bin/env bash
# Scenario 3, broadcast fan-out, and scenario 6, the same through nginx +
# nchan in the same run: for each count in SUBSCRIBER_COUNTS (1,000 and
# 10,000) SSE clients of one stream, COUNT events published at SATURATE per
# second (more than can be delivered: deliveries per second at saturation),
# then at STEADY per second (publish-to-delivery latency at a rate both
# carry). Each run also counts the server's instructions and CPU time with
# `perf stat` (results/NAME.perf). Needs Redis on 127.0.0.1:6379; nchan
# needs nginx and libnginx-mod-nchan (Debian).
# One command: bash tests/bench/run.sh fanout; then
# python3 tests/bench/report.py for the table and the plots.
# WRITE_DELAYS (default "0s") runs the gateway half once per route
# write_delay; a run with a delay is named gateway_delay_DELAY.
source "$(dirname "$0")/lib.sh"
SUBSCRIBER_COUNTS="${SUBSCRIBER_COUNTS:-1000 10000}"
SATURATE="${SATURATE:-200}"
STEADY="${STEADY:-25}"
COUNT="${COUNT:-1000}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
build

# run NAME SUBSCRIBERS SUB_URL PUB_URL RATE WATCHED_PIDS [publisher options…]
run() {
  local name="$1" subscribers="$2" sub="$3" pub="$4" rate="$5" watched="$6"; shift 6
  local count=$(( COUNT < rate * 20 ? COUNT : rate * 20 ))
  local watch=() pid
  for pid in $watched; do watch+=(--watch-pid "$pid"); done
  # shellcheck disable=SC2086
  perf_start "$name" $watched
  "$LOADGEN" "$sub" -c "$subscribers" --rate 5000 --processes 2 --sources 8 \
    --events "$count" --idle-timeout 30s --max-time 3m \
    --publish-url "$pub" --publish-rate "$rate" --publish-count "$count" \
    --publish-delay "$(( subscribers / 5000 + 3 ))s" "$@" \
    "${watch[@]}" --report "$RESULTS/$name.json"
  perf_stop
}

# PEERS_ONLY=1 runs only the nchan half.
if [ -z "${PEERS_ONLY:-}" ]; then
  auth="Authorization: Bearer $BENCH_TOKEN"
  for delay in ${WRITE_DELAYS:-0s}; do
    name=gateway
    [ "$delay" = 0s ] || name="gateway_delay_$delay"
    redis-cli -h 127.0.0.1 del bench:fanout >/dev/null
    start_gateway "$BENCH_DIR/configs/fanout.toml" "GATEWAY__ROUTES__BUS__WRITE_DELAY=$delay"
    for subscribers in $SUBSCRIBER_COUNTS; do
      for rate in "$SATURATE" "$STEADY"; do
        echo "$name, $rate events/s to $subscribers subscribers:"
        run "fanout-$name-$subscribers-$rate" "$subscribers" "http://$GATEWAY_ADDR/bus" \
          "http://$GATEWAY_ADDR/bus/events" "$rate" "$GATEWAY_PID" --publish-header "$auth"
      done
    done
    stop_pid "$GATEWAY_PID"
  done
fi

start_nchan || exit 0
for subscribers in $SUBSCRIBER_COUNTS; do
  for rate in "$SATURATE" "$STEADY"; do
    echo "nchan, $rate events/s to $subscribers subscribers:"
    run "fanout-nchan-$subscribers-$rate" "$subscribers" "http://127.0.0.1:$NCHAN_PORT/sub" \
      "http://127.0.0.1:$NCHAN_PORT/pub" "$rate" "${NCHAN_WORKERS[*]}" \
      --publish-body '{"seq":{seq},"ts_us":{ts_us}}'
  done
done
