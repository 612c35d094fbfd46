# Shared by the benchmark scripts: build in release mode, start a gateway on
# a config and wait until it listens, stop everything on exit.
# shellcheck shell=bash
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/../.." && pwd)"
# BENCH_RESULTS puts a run's reports elsewhere (a side run that should not
# replace the committed ones).
RESULTS="${BENCH_RESULTS:-$BENCH_DIR/results}"
mkdir -p "$RESULTS"
BIN="$ROOT/target/release"
export LOADGEN="$BIN/loadgen"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

build() {
  (cd "$ROOT" && cargo build --release --quiet -p gateway -p loadgen)
}

# start_gateway CONFIG [ENV=VALUE…]: starts the release gateway on CONFIG
# (port 0), sets GATEWAY_PID, GATEWAY_ADDR (host:port) and GATEWAY_LOG (its
# stderr).
start_gateway() {
  local config="$1"; shift
  local log
  log="$(mktemp -t bench-gateway.XXXXXX)"
  env "$@" GATEWAY_CONFIG="$config" GATEWAY__SERVER__PORT="${GATEWAY_PORT:-0}" RUST_LOG="${GATEWAY_RUST_LOG:-warn,gateway=info}" \
    NO_COLOR=1 "$BIN/gateway" 2>"$log" &
  GATEWAY_PID=$!
  GATEWAY_LOG="$log"
  PIDS+=("$GATEWAY_PID")
  GATEWAY_ADDR="$(listening_addr "$log" gateway)" || exit 1
  export GATEWAY_PID GATEWAY_ADDR GATEWAY_LOG
}

# listening_addr LOG NAME: waits (10 s at most) until the server NAME,
# started with its stderr in LOG, says `Listening on http://ADDR/`, and
# prints ADDR (host:port); otherwise shows the log and fails.
listening_addr() {
  for _ in $(seq 100); do
    if grep -q "Listening on http://" "$1"; then
      grep -o 'Listening on http://[^/]*' "$1" | head -n1 | sed 's|Listening on http://||'
      return 0
    fi
    sleep 0.1
  done
  echo "the $2 did not start; its log:" >&2
  cat "$1" >&2
  return 1
}

# machine: one line naming the machine, for the results.
machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), open files $(ulimit -Hn)"
}

# free_port: a loopback port nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for_port PORT: until something answers on 127.0.0.1:PORT (a server
# under valgrind starts slowly).
wait_for_port() {
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "nothing answers on 127.0.0.1:$1" >&2
  exit 1
}

# callgrind_total FILE: the instructions callgrind counted (its summary).
callgrind_total() {
  awk '/^(summary|totals):/ {print $2; exit}' "$1"
}

# start_nchan: starts nginx with nchan (configs/nchan.conf) on a free
# loopback port; sets NGINX_PID, NCHAN_PORT and NCHAN_WORKERS (the worker
# pids, where the subscribers live). Returns 1, with a note, when nginx or
# the module is missing.
start_nchan() {
  if ! command -v nginx >/dev/null 2>&1 || ! ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
    echo "nchan: nginx or libnginx-mod-nchan missing (apt-get install nginx-light libnginx-mod-nchan); skipped" >&2
    return 1
  fi
  local dir
  dir="$(mktemp -d -t bench-nchan.XXXXXX)"
  NCHAN_PORT="$(free_port)"
  sed "s/PORT/$NCHAN_PORT/" "$BENCH_DIR/configs/nchan.conf" > "$dir/nginx.conf"
  sed -i "1i load_module /usr/lib/nginx/modules/ngx_nchan_module.so;" "$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$NCHAN_PORT/pub" && break; sleep 0.1; done
  sleep 0.5
  NCHAN_WORKERS=()
  for w in $(pgrep -P "$NGINX_PID"); do NCHAN_WORKERS+=("$w"); done
  export NGINX_PID NCHAN_PORT
}

# stop_pid PID: stops a server and waits for it.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# perf_start NAME PID…: the server's CPU time with `perf stat` (task-clock;
# instructions too where the machine exposes hardware counters, which this
# VM does not: tests/bench/instructions.sh counts them with callgrind)
# until perf_stop, into results/NAME.perf.
perf_start() {
  local name="$1"; shift
  PERF_PID=""
  command -v perf >/dev/null 2>&1 || return 0
  local pids
  pids="$(IFS=,; echo "$*")"
  perf stat -x, -e instructions,task-clock -p "$pids" -o "$RESULTS/$name.perf" 2>/dev/null &
  PERF_PID=$!
  sleep 0.2
  if ! kill -0 "$PERF_PID" 2>/dev/null; then
    echo "perf stat could not attach; its counts skipped" >&2
    PERF_PID=""
  fi
}

perf_stop() {
  [ -n "${PERF_PID:-}" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
}
