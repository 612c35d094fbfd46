#!/usr/bin/env bash
# Runs every fuzz target (or those named) on its committed corpus.
#
#   bash fuzz/run.sh                       # 5 s each (CI's short run)
#   FUZZ_SECONDS=600 bash fuzz/run.sh sse  # longer, one target
#   FUZZ_RUNS=10000000 bash fuzz/run.sh    # a fixed count of executions each
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# New inputs that reach new code are added to fuzz/corpus/TARGET; a crash
# stops the run with the target's name, leaves the input in
# fuzz/artifacts/TARGET, and fails the script. Each target's final libFuzzer
# lines go to fuzz/logs/TARGET.log (for FUZZING.md).
set -euo pipefail
cd "$(dirname "$0")"
all=(sse ndjson accept cursor upstream config credentials http_head stream_head)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
seconds=${FUZZ_SECONDS:-5}
runs=${FUZZ_RUNS:-}

max_len() {
  case $1 in
    http_head|stream_head) echo 16384 ;;
    upstream) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

cargo +nightly fuzz build --release --debug-assertions --sanitizer none
mkdir -p logs
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  limit=(-max_total_time="$seconds")
  [ -n "$runs" ] && limit=(-runs="$runs")
  dict=()
  [ "$target" = http_head ] && dict=(-dict=dict/http.dict)
  if [ -n "$runs" ]; then echo "fuzzing $target ($runs runs)"; else echo "fuzzing $target ($seconds s)"; fi
  # Inputs that once failed (fuzz/regressions/TARGET) run first, every time.
  extra=()
  [ -d "regressions/$target" ] && extra=("regressions/$target")
  if ! cargo +nightly fuzz run --release --debug-assertions --sanitizer none "$target" "corpus/$target" "${extra[@]}" -- \
    "${limit[@]}" "${dict[@]}" -max_len="$(max_len "$target")" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 >"logs/$target.log" 2>&1; then
    tail -n 40 "logs/$target.log"
    echo "fuzz target $target FAILED: see fuzz/logs/$target.log and fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "logs/$target.log" || tail -n 3 "logs/$target.log"
done
