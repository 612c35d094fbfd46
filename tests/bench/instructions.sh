#!/usr/bin/env bash
# Instructions per delivery, a count that a busy machine does not move:
# SUBSCRIBERS (1,000) SSE clients of one stream get EVENTS, then 2×EVENTS,
# events, with the server under valgrind's callgrind; the difference of the
# two runs' instruction counts over the difference of their deliveries is
# the cost of one delivery, start-up and connections cancelled out. The
# gateway (fan-out from Redis through the publish route), then nginx + nchan
# (one process, master_process off, so callgrind sees every instruction).
# Writes results/instructions.json. Needs valgrind.
source "$(dirname "$0")/lib.sh"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
EVENTS="${EVENTS:-100}"
RATE="${RATE:-20}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
command -v valgrind >/dev/null 2>&1 || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 1; }
build
work="$(mktemp -d -t bench-instructions.XXXXXX)"

# subscribe_and_publish NAME SUB_URL PUB_URL EVENTS [publisher options…]
# (its report on stderr: stdout is the run's answer)
subscribe_and_publish() {
  local name="$1" sub="$2" pub="$3" events="$4"; shift 4
  "$LOADGEN" "$sub" -c "$SUBSCRIBERS" --rate 500 --processes 1 --sources 2 \
    --events "$events" --idle-timeout 60s --max-time 5m \
    --publish-url "$pub" --publish-rate "$RATE" --publish-count "$events" \
    --publish-delay "$(( SUBSCRIBERS / 500 + 10 ))s" "$@" --report "$work/$name.json" >&2
}

# counted NAME EVENTS PORT SUB_PATH PUB_PATH PUBLISH_OPTION VALUE -- COMMAND…:
# runs COMMAND (a server listening on PORT) under callgrind while its
# subscribers get EVENTS; prints the instructions it ran and the deliveries.
counted() {
  local name="$1" events="$2" port="$3" sub="$4" pub="$5" option="$6" value="$7"; shift 8
  local out="$work/$name-$events.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$work/$name-$events.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_for_port "$port"
  subscribe_and_publish "$name-$events" "http://127.0.0.1:$port$sub" "http://127.0.0.1:$port$pub" "$events" \
    "$option" "$value"
  # Both servers end on SIGTERM; callgrind writes its counts then.
  stop_pid "$pid"
  echo "$(callgrind_total "$out") $(python3 -c "import json; print(json.load(open('$work/$name-$events.json'))['events'])")"
}

# gateway_run EVENTS: the gateway's fan-out from Redis through its publish route.
gateway_run() {
  local port
  port="$(free_port)"
  redis-cli -h 127.0.0.1 del bench:fanout >/dev/null
  GATEWAY_CONFIG="$BENCH_DIR/configs/fanout.toml" GATEWAY__SERVER__PORT="$port" RUST_LOG=warn NO_COLOR=1 \
    counted gateway "$1" "$port" /bus /bus/events --publish-header "Authorization: Bearer $BENCH_TOKEN" \
    -- "$BIN/gateway"
}

# nchan_run EVENTS: nginx + nchan in one process (master_process off).
nchan_run() {
  local port dir
  port="$(free_port)"
  dir="$(mktemp -d -t bench-nchan.XXXXXX)"
  sed "s/PORT/$port/" "$BENCH_DIR/configs/nchan.conf" > "$dir/nginx.conf"
  sed -i "1i load_module /usr/lib/nginx/modules/ngx_nchan_module.so;" "$dir/nginx.conf"
  counted nchan "$1" "$port" /sub /pub --publish-body '{"seq":{seq},"ts_us":{ts_us}}' \
    -- nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off;"
}

per_delivery() {
  python3 -c "
import sys
(i1, d1), (i2, d2) = [map(int, a.split()) for a in sys.argv[1:3]]
print(round((i2 - i1) / (d2 - d1)))" "$1" "$2"
}

echo "gateway under callgrind: $SUBSCRIBERS subscribers, $EVENTS then $((2 * EVENTS)) events"
g1="$(gateway_run "$EVENTS")"; g2="$(gateway_run $((2 * EVENTS)))"
gateway="$(per_delivery "$g1" "$g2")"
echo "gateway: $gateway instructions per delivery ($g1 / $g2)"
nchan="null"
if command -v nginx >/dev/null 2>&1 && ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
  echo "nchan under callgrind: the same"
  n1="$(nchan_run "$EVENTS")"; n2="$(nchan_run $((2 * EVENTS)))"
  nchan="$(per_delivery "$n1" "$n2")"
  echo "nchan: $nchan instructions per delivery ($n1 / $n2)"
fi
cat > "$RESULTS/instructions.json" <<JSON
{"subscribers": $SUBSCRIBERS, "events": [$EVENTS, $((2 * EVENTS))],
 "gateway": {"runs": ["$g1", "$g2"], "instructions_per_delivery": $gateway},
 "nchan": {"runs": ["${n1:-}", "${n2:-}"], "instructions_per_delivery": $nchan}}
JSON
