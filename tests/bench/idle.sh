#!/usr/bin/env bash
# Scenario 2, idle streams held: CONNECTIONS (19,000) SSE streams held for
# HOLD (60 s, four heartbeats) by one gateway process; its RSS per connection
# and CPU at rest. Then the same total over GATEWAYS (4) processes sharing the
# port with SO_REUSEPORT, with TOTAL (19,000 × GATEWAYS / 2) connections; then
# the floor: the same idle streams from a bare hyper server, and with no HTTP
# library at all (`ceiling ... raw`); then the peer:
# the same idle streams from nginx + nchan (EventSource subscribers of one
# channel, a ping every 15 s), its workers' RSS per connection. Then
# python3 tests/bench/report.py for the table and the plots.
source "$(dirname "$0")/lib.sh"
CONNECTIONS="${CONNECTIONS:-19000}"
HOLD="${HOLD:-60s}"
GATEWAYS="${GATEWAYS:-4}"
TOTAL="${TOTAL:-$((19000 * GATEWAYS / 2))}"
build
start_gateway "$BENCH_DIR/configs/idle.toml"
"$LOADGEN" "http://$GATEWAY_ADDR/idle" -c "$CONNECTIONS" --rate 4000 --processes 2 --sources 8 \
  --hold "$HOLD" --idle-timeout 40s --watch-pid "$GATEWAY_PID" --report "$RESULTS/idle.json"
kill "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true

# The same port, several processes.
start_gateway "$BENCH_DIR/configs/idle.toml"
port="${GATEWAY_ADDR##*:}"
watch=(--watch-pid "$GATEWAY_PID")
for _ in $(seq 2 "$GATEWAYS"); do
  GATEWAY_PORT="$port" start_gateway "$BENCH_DIR/configs/idle.toml"
  watch+=(--watch-pid "$GATEWAY_PID")
done
processes=$(( (TOTAL + 9499) / 9500 ))
"$LOADGEN" "http://127.0.0.1:$port/idle" -c "$TOTAL" --rate 4000 --processes "$processes" --sources 16 \
  --hold "$HOLD" --idle-timeout 40s "${watch[@]}" --report "$RESULTS/idle-reuseport.json"
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done

# floor REPORT [MODE]: the same idle streams from `ceiling` (one event, then
# nothing), held 20 s; its RSS per connection.
floor() {
  local log
  log="$(mktemp -t bench-ceiling.XXXXXX)"
  "$BIN/ceiling" 127.0.0.1:0 0 "${@:2}" 2>"$log" &
  CEILING_PID=$!
  PIDS+=("$CEILING_PID")
  addr="$(listening_addr "$log" ceiling)" || exit 1
  "$LOADGEN" "http://$addr/idle" -c "$CONNECTIONS" --rate 4000 --processes 2 --sources 8 \
    --hold 20s --ts-field "" --watch-pid "$CEILING_PID" --report "$RESULTS/$1"
  stop_pid "$CEILING_PID"
}
# The floor: what hyper alone costs per connection. Below it: no HTTP
# library at all (the head read into a buffer freed once answered, then
# only the socket held), what a connection driver of our own can reach.
floor idle-floor.json
floor idle-floor-raw.json raw

# The peer: nginx + nchan holding the same idle EventSource streams.
if start_nchan; then
  watch=(); for w in "${NCHAN_WORKERS[@]}"; do watch+=(--watch-pid "$w"); done
  "$LOADGEN" "http://127.0.0.1:$NCHAN_PORT/sub" -c "$CONNECTIONS" --rate 4000 --processes 2 --sources 8 \
    --hold "$HOLD" --idle-timeout 40s --ts-field "" "${watch[@]}" --report "$RESULTS/idle-nchan.json"
fi
