#!/usr/bin/env bash
# Broker backends (issue 11) side by side in one run: redis, nats, postgres
# and rabbitmq routes of the same config (configs/bus.toml), same limits,
# same build. For each broker, on a fresh gateway (so every one starts from
# the same memory): SUBSCRIBERS idle SSE subscribers held HOLD (memory per
# subscriber: the gateway's RSS before and at the peak, from /proc), then,
# on the same gateway, SUBSCRIBERS subscribers and COUNT events posted
# through the route's publish endpoint one after the other (at most RATE a
# second): deliveries per second, delivery latency, publish round trip, and
# every publish answer that was not 201. Each gateway's log is kept in
# results/bus-BROKER-gateway.log. BROKERS picks some. Loopback only; needs
# Redis :6379, NATS with JetStream :4222, PostgreSQL :5432 (database test),
# RabbitMQ's stream port :5552 (.ci/run starts them all).
# The price of the postgres ordering trigger is bus-postgres-insert.sh.
source "$(dirname "$0")/lib.sh"
BROKERS="${BROKERS:-redis nats postgres rabbitmq}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
HOLD="${HOLD:-20s}"
RATE="${RATE:-200}"
COUNT="${COUNT:-1000}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
build

# nats_stream VERB [CONFIG]: a JetStream API call over the plain NATS
# protocol (no nats CLI needed).
nats_stream() {
  python3 - "$@" <<'PY'
import json, socket, sys
verb = sys.argv[1]
body = json.dumps({"name": "BENCHBUS", "subjects": ["bench.busfanout"], "storage": "file",
                   "max_msgs": 100000}) if verb == "CREATE" else ""
s = socket.create_connection(("127.0.0.1", 4222), timeout=5)
s.recv(4096)  # INFO
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _bench.reply 1\r\n' +
          f"PUB $JS.API.STREAM.{verb}.BENCHBUS _bench.reply {len(body)}\r\n{body}\r\n".encode())
reply = b""
while reply.partition(b"MSG ")[2].count(b"\r\n") < 2:
    reply += s.recv(65536) or sys.exit("NATS closed the connection: " + reply.decode())
print(verb.lower(), "BENCHBUS:", reply.partition(b"MSG ")[2].split(b"\r\n")[1].decode()[:200])
PY
}

# Fresh streams each run: nothing old to replay.
clear_streams() {
  redis-cli -h 127.0.0.1 del bench:busfanout >/dev/null || true
  nats_stream DELETE || true
  psql postgres://postgres@127.0.0.1:5432/test -qc "DROP TABLE IF EXISTS bench_busfanout, bench_busfanout_trim" 2>/dev/null || true
  rabbitmqctl delete_queue bench.busfanout >/dev/null 2>&1 || true
}
clear_streams
nats_stream CREATE
machine | tee "$RESULTS/bus-machine.txt"
date -u +"run: %Y-%m-%dT%H:%M:%SZ, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/bus-machine.txt"
auth="Authorization: Bearer $BENCH_TOKEN"
for broker in $BROKERS; do
  start_gateway "$BENCH_DIR/configs/bus.toml"
  echo "$broker: $SUBSCRIBERS idle subscribers held $HOLD"
  "$LOADGEN" "http://$GATEWAY_ADDR/$broker" -c "$SUBSCRIBERS" --rate 2000 --processes 1 --sources 4 \
    --hold "$HOLD" --idle-timeout 40s --watch-pid "$GATEWAY_PID" \
    --report "$RESULTS/bus-$broker-idle.json"
  echo "$broker: $COUNT events at most $RATE/s to $SUBSCRIBERS subscribers"
  "$LOADGEN" "http://$GATEWAY_ADDR/$broker" -c "$SUBSCRIBERS" --rate 2000 --processes 1 --sources 4 \
    --events "$COUNT" --idle-timeout 30s --max-time 2m \
    --publish-url "http://$GATEWAY_ADDR/$broker/events" --publish-rate "$RATE" \
    --publish-count "$COUNT" --publish-delay 3s --publish-header "$auth" \
    --watch-pid "$GATEWAY_PID" --report "$RESULTS/bus-$broker-fanout.json" || true
  kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
  cp "$GATEWAY_LOG" "$RESULTS/bus-$broker-gateway.log"
done
clear_streams

# The figures, one row per broker.
python3 - "$RESULTS" "$SUBSCRIBERS" $BROKERS <<'PY' | tee "$RESULTS/bus.md"
import json, sys
results, n, brokers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| broker | idle: RSS per subscriber | fan-out: deliveries/s | latency p50 / p99 | publish round trip p50 | publishes not 201 | gaps / repeats |")
print("|---|---|---|---|---|---|---|")
for b in brokers:
    idle = json.load(open(f"{results}/bus-{b}-idle.json"))
    rss = [s["rss_kib"] for s in idle["processes"]["samples"]]
    fan = json.load(open(f"{results}/bus-{b}-fanout.json"))
    lat, rtt = fan["latency"], fan.get("publish_rtt") or {}
    print(f"| {b} | {(max(rss) - rss[0]) * 1024 / n / 1000:.1f} KB ({rss[0] / 1024:.1f} → {max(rss) / 1024:.1f} MiB) "
          f"| {fan['events_per_second_in_window']:,.0f} ({fan['events']:,} deliveries, {fan['published']} published) "
          f"| {lat['p50_us'] / 1000:.1f} ms / {lat['p99_us'] / 1000:.1f} ms "
          f"| {rtt.get('p50_us', 0) / 1000:.1f} ms | {fan['publish_errors'] or 'none'} "
          f"| {fan['gaps']} / {fan['duplicates']} |")
PY
