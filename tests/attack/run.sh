#!/usr/bin/env bash
# The attack suite at full scale: builds in release mode, runs every
# scenario (or those named) against the release gateway, writes each one's
# JSON report to tests/attack/results/ and exits non-zero if one failed.
#
#   bash tests/attack/run.sh                      # all, about 10 minutes
#   bash tests/attack/run.sh shutdown churn       # some
#
# Loopback only. Each scenario stops by itself (a deadline of its own in the
# binary, at most 10 minutes); `timeout` bounds it again from outside, and
# the gateway it started is killed when it is interrupted.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$dir/../.." && pwd)"
results="$dir/results"
mkdir -p "$results"
all=(slow-heads big-heads malformed amplification slow-readers churn shutdown)
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  scenarios=("${all[@]}")
fi
(cd "$root" && cargo build --release --quiet -p gateway -p attack)
bin="$root/target/release"
failed=()
for scenario in "${scenarios[@]}"; do
  echo "== $scenario"
  if ! timeout --kill-after=30 900 "$bin/attack" "$scenario" --scale full \
    --gateway "$bin/gateway" --report "$results/$scenario.json"; then
    failed+=("$scenario")
  fi
done
{
  # The benchmarks' description of the machine (lib.sh is checked apart).
  # shellcheck disable=SC1091
  echo "machine: $(source "$root/tests/bench/lib.sh"; trap - EXIT; machine)"
  date -u +"run: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git -C "$root" rev-parse --short HEAD)"
} > "$results/machine.txt"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
