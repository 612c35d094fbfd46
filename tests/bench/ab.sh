#!/usr/bin/env bash
# Two gateway builds side by side (or more), for a change's before and
# after. Build the other one first, e.g.
#   git worktree add /tmp/before COMMIT && (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p gateway)
# then
#   bash tests/bench/ab.sh cpu /tmp/before-target/release/gateway target/release/gateway
#   bash tests/bench/ab.sh firehose-instructions /tmp/before-target/release/gateway target/release/gateway
# BINARY@DELAY runs BINARY with the route's write_delay set to DELAY
# (`target/release/gateway@50ms`).
# `floor` in a binary's place runs tests/loadgen/src/floor.rs there: one
# write per subscriber per event and nothing else, the least any server
# that writes each event as it comes can spend (cpu only).
#
# cpu: SUBSCRIBERS (10,000) SSE clients of one stream, events published at
#   RATE (25) per second; the server's user and kernel CPU time (from /proc)
#   over WINDOW (12) seconds of steady delivery, after every client is
#   connected, so connecting does not count. The binaries take turns,
#   ROUNDS (3) times each: on a shared machine one run of a binary differs
#   from the next by as much as two binaries do.
# firehose-instructions: one SSE client reading ticker events as fast as
#   they come, the server under callgrind, 100,000 and then 300,000 events;
#   the difference of the instruction counts over the difference of the
#   events is the user-space cost of one event (start-up cancelled out).
source "$(dirname "$0")/lib.sh"
measure="${1:-}"; shift || true
[ "$#" -ge 1 ] || { echo "usage: $0 cpu|firehose-instructions GATEWAY_BINARY…" >&2; exit 2; }
SUBSCRIBERS="${SUBSCRIBERS:-10000}"
RATE="${RATE:-25}"
WINDOW="${WINDOW:-12}"
ROUNDS="${ROUNDS:-3}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
(cd "$ROOT" && cargo build --release --quiet -p loadgen)  # loadgen and floor

# ticks PID: the process's user and system CPU time, in clock ticks.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# tree_ticks PID: the CPU time (user and system, clock ticks) of the process
# and its children (the load generator's processes).
tree_ticks() {
  local pid total=0
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# start_floor: the `floor` server (tests/loadgen/src/floor.rs) in the
# gateway's place: GATEWAY_PID and GATEWAY_ADDR set as start_gateway sets them.
start_floor() {
  local log
  log="$(mktemp -t bench-floor.XXXXXX)"
  "$BIN/floor" 127.0.0.1:0 "${FLOOR_THREADS:-2}" 2>"$log" &
  GATEWAY_PID=$!
  PIDS+=("$GATEWAY_PID")
  GATEWAY_ADDR="$(listening_addr "$log" floor)" || exit 1
}

cpu_run() {
  local label="$1" binary="${1%@*}" events=$(( RATE * (WINDOW + 8) )) dir body=() delay=()
  dir="$(mktemp -d -t bench-ab.XXXXXX)"
  [[ "$label" == *@* ]] && delay=("GATEWAY__ROUTES__BUS__WRITE_DELAY=${label##*@}")
  if [ "$binary" = floor ]; then
    start_floor
    # The floor writes the body as the event's data, as nchan does.
    body=(--publish-body '{"seq":{seq},"ts_us":{ts_us}}')
  else
    ln -s "$(realpath "$binary")" "$dir/gateway"
    redis-cli -h 127.0.0.1 del bench:fanout >/dev/null
    BIN="$dir" start_gateway "$BENCH_DIR/configs/fanout.toml" "${delay[@]}"
  fi
  "$LOADGEN" "http://$GATEWAY_ADDR/bus" -c "$SUBSCRIBERS" --rate 5000 --processes 2 --sources 8 \
    --events "$events" --idle-timeout 30s --max-time 3m \
    --publish-url "http://$GATEWAY_ADDR/bus/events" --publish-rate "$RATE" --publish-count "$events" \
    --publish-delay "$(( SUBSCRIBERS / 5000 + 3 ))s" --publish-header "Authorization: Bearer $BENCH_TOKEN" \
    "${body[@]}" --report "$dir/report.json" >"$dir/loadgen.log" 2>&1 &
  local loader=$! user0 sys0 user1 sys1 load0 load1
  # Connected at 5,000 per second, then published to after 3 s more.
  sleep $(( SUBSCRIBERS / 5000 + 4 ))
  read -r user0 sys0 < <(ticks "$GATEWAY_PID")
  load0="$(tree_ticks "$loader")"
  sleep "$WINDOW"
  read -r user1 sys1 < <(ticks "$GATEWAY_PID")
  load1="$(tree_ticks "$loader")"
  wait "$loader"
  stop_pid "$GATEWAY_PID"
  local hz deliveries
  hz="$(getconf CLK_TCK)"
  deliveries=$(( SUBSCRIBERS * RATE * WINDOW ))
  python3 - "$label" "$(( user1 - user0 ))" "$(( sys1 - sys0 ))" "$hz" "$deliveries" "$dir/report.json" \
    "$(( load1 - load0 ))" "$WINDOW" <<'EOF'
import json, sys
binary, user, system, hz, deliveries, report, load, window = sys.argv[1:]
user, system = int(user) / int(hz), int(system) / int(hz)
cores = (user + system) / int(window)
load_cores = int(load) / int(hz) / int(window)
per = 1e6 / int(deliveries)
r = json.load(open(report))
lat = r["latency"]
print(f"{binary}: user {user * per:.2f} + kernel {system * per:.2f} = {(user + system) * per:.2f} CPU-s per 10^6 deliveries;"
      f" {r['missing']} lost, {r['duplicates']} repeated; latency p50 {lat['p50_us'] / 1000:.1f} p99 {lat['p99_us'] / 1000:.1f} ms;"
      f" cores busy: server {cores:.2f}, load generator {load_cores:.2f}")
EOF
}

firehose_run() {
  local binary="$1" events="$2" port out
  port="$(free_port)"
  out="$(mktemp -t bench-ab-callgrind.XXXXXX)"
  GATEWAY_CONFIG="$BENCH_DIR/configs/firehose.toml" GATEWAY__SERVER__PORT="$port" \
    GATEWAY__ROUTES__FIREHOSE__BACKENDS__TICKER__COUNT="$events" RUST_LOG=warn NO_COLOR=1 \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" 2>/dev/null &
  local pid=$!
  PIDS+=("$pid")
  wait_for_port "$port"
  local got
  got="$("$LOADGEN" "http://127.0.0.1:$port/firehose" -c 1 --ts-field "" 2>&1 | grep -oE '^events [0-9]+' | cut -d' ' -f2)"
  stop_pid "$pid"
  echo "$got $(callgrind_total "$out")"
}

case "$measure" in
  cpu)
    for _ in $(seq "$ROUNDS"); do
      for binary in "$@"; do cpu_run "$binary"; done
    done ;;
  firehose-instructions)
    command -v valgrind >/dev/null 2>&1 || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 1; }
    for binary in "$@"; do
      read -r e1 i1 < <(firehose_run "$binary" 100000)
      read -r e2 i2 < <(firehose_run "$binary" 300000)
      echo "$binary: $(( (i2 - i1) / (e2 - e1) )) instructions per event ($e1 and $e2 events read)"
    done ;;
  *) echo "usage: $0 cpu|firehose-instructions GATEWAY_BINARY…" >&2; exit 2 ;;
esac
