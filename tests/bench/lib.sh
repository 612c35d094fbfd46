# Shared by the benchmark scripts: build in release mode, start a gateway on
# a config and wait until it listens, stop everything on exit.
# shellcheck shell=bash
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/../.." && pwd)"
RESULTS="$BENCH_DIR/results"
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
  for _ in $(seq 100); do
    if grep -q "Listening on http://" "$log"; then
      GATEWAY_ADDR="$(grep -o 'Listening on http://[^/]*' "$log" | head -n1 | sed 's|Listening on http://||')"
      export GATEWAY_PID GATEWAY_ADDR GATEWAY_LOG
      return 0
    fi
    sleep 0.1
  done
  echo "the gateway did not start; its log:" >&2
  cat "$log" >&2
  exit 1
}

# machine: one line naming the machine, for the results.
machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), open files $(ulimit -Hn)"
}
