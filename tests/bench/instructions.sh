#!/usr/bin/env bash
# Instructions per delivery, a count that a busy machine moves little:
# SUBSCRIBERS (1,000) SSE clients of one stream get EVENTS, then 2×EVENTS,
# events, with the server under valgrind's callgrind; the difference of the
# two runs' instruction counts over the difference of their deliveries is
# the cost of one delivery, start-up and connections cancelled out. The
# gateway (fan-out from Redis through the publish route), then nginx + nchan
# (one process, master_process off, so callgrind sees every instruction).
#
# Events are published at RATE (5) per second: under callgrind a server
# runs some 50 times slower, and at 20 per second the gateway fell behind
# and wrote several events at once, more or fewer with the machine's load,
# so the count moved by a third from run to run. ROUNDS (3) rounds of each;
# the median is the result. The gateway runs with WORKERS (1) runtime
# threads, as nchan runs in one process (with two, how often the workers
# steal tasks from each other and wake each other depends on timing too).
# GATEWAY_BIN measures another build of the gateway.
# Writes results/instructions.json. Needs valgrind.
source "$(dirname "$0")/lib.sh"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
EVENTS="${EVENTS:-100}"
RATE="${RATE:-5}"
ROUNDS="${ROUNDS:-3}"
WORKERS="${WORKERS:-1}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
command -v valgrind >/dev/null 2>&1 || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 1; }
build
GATEWAY="${GATEWAY_BIN:-$BIN/gateway}"
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
    TOKIO_WORKER_THREADS="$WORKERS" \
    counted gateway "$1" "$port" /bus /bus/events --publish-header "Authorization: Bearer $BENCH_TOKEN" \
    -- "$GATEWAY"
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

median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }

# rounds NAME RUN: ROUNDS rounds of RUN EVENTS and RUN 2×EVENTS; prints
# each round, then sets COUNTS (per round) and RUNS (the raw totals, JSON).
rounds() {
  local name="$1" run="$2" one two count
  COUNTS=(); RUNS=""
  for round in $(seq "$ROUNDS"); do
    one="$("$run" "$EVENTS")"; two="$("$run" $((2 * EVENTS)))"
    count="$(per_delivery "$one" "$two")"
    echo "$name, round $round: $count instructions per delivery ($one / $two)"
    COUNTS+=("$count"); RUNS="$RUNS${RUNS:+, }[\"$one\", \"$two\"]"
  done
}

echo "gateway under callgrind ($GATEWAY, $WORKERS worker threads): $SUBSCRIBERS subscribers, $EVENTS then $((2 * EVENTS)) events, $ROUNDS rounds"
rounds gateway gateway_run
gateway="$(median "${COUNTS[@]}")"; gateway_counts="$(IFS=,; echo "${COUNTS[*]}")"; gateway_runs="$RUNS"
echo "gateway: median $gateway instructions per delivery (rounds: $gateway_counts)"
nchan="null"; nchan_counts=""; nchan_runs=""
if command -v nginx >/dev/null 2>&1 && ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
  echo "nchan under callgrind: the same"
  rounds nchan nchan_run
  nchan="$(median "${COUNTS[@]}")"; nchan_counts="$(IFS=,; echo "${COUNTS[*]}")"; nchan_runs="$RUNS"
  echo "nchan: median $nchan instructions per delivery (rounds: $nchan_counts)"
fi
cat > "$RESULTS/instructions.json" <<JSON
{"subscribers": $SUBSCRIBERS, "events": [$EVENTS, $((2 * EVENTS))], "gateway_workers": $WORKERS,
 "gateway": {"runs": [$gateway_runs], "rounds": [$gateway_counts], "instructions_per_delivery": $gateway},
 "nchan": {"runs": [$nchan_runs], "rounds": [$nchan_counts], "instructions_per_delivery": $nchan}}
JSON
