#!/usr/bin/env bash
# Broker backends (issue 11): the rabbitmq route and the redis route of one
# gateway, in the same run. For each: memory per idle subscriber (SUBSCRIBERS,
# 1,000, held HOLD, 20 s; the gateway's RSS before and after, from loadgen's
# report) and fan-out deliveries per second (SUBSCRIBERS clients, COUNT
# events published through the route's publish endpoint at RATE per
# second). Loopback only. Needs Redis on 127.0.0.1:6379 and RabbitMQ's
# stream port on 127.0.0.1:5552 (.ci/run starts both).
source "$(dirname "$0")/lib.sh"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
HOLD="${HOLD:-20s}"
RATE="${RATE:-200}"
COUNT="${COUNT:-1000}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
build
# Fresh streams each run: nothing old to replay.
clear_streams() {
  redis-cli -h 127.0.0.1 del bench:busfanout >/dev/null || true
  rabbitmqctl delete_queue bench.busfanout >/dev/null 2>&1 || true
}
clear_streams
machine
start_gateway "$BENCH_DIR/configs/bus-rabbitmq.toml"
auth="Authorization: Bearer $BENCH_TOKEN"
for broker in rabbitmq redis; do
  echo "$broker: $SUBSCRIBERS idle subscribers held $HOLD"
  "$LOADGEN" "http://$GATEWAY_ADDR/$broker" -c "$SUBSCRIBERS" --rate 2000 --processes 1 --sources 4 \
    --hold "$HOLD" --idle-timeout 40s --watch-pid "$GATEWAY_PID" \
    --report "$RESULTS/bus-$broker-idle.json"
  echo "$broker: $COUNT events at $RATE/s to $SUBSCRIBERS subscribers"
  "$LOADGEN" "http://$GATEWAY_ADDR/$broker" -c "$SUBSCRIBERS" --rate 2000 --processes 1 --sources 4 \
    --events "$COUNT" --idle-timeout 30s --max-time 2m \
    --publish-url "http://$GATEWAY_ADDR/$broker/events" --publish-rate "$RATE" \
    --publish-count "$COUNT" --publish-delay 3s --publish-header "$auth" \
    --watch-pid "$GATEWAY_PID" --report "$RESULTS/bus-$broker-fanout.json"
done
kill "$GATEWAY_PID"
clear_streams
