#!/usr/bin/env bash
# Runs one benchmark scenario, or all: bash tests/bench/run.sh [short|idle|fanout|instructions|firehose|coldstart|bus|bus-postgres-insert|all]
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)"
scenario="${1:-all}"
case "$scenario" in
  all) for s in coldstart firehose short fanout instructions idle bus bus-postgres-insert; do bash "$dir/$s.sh"; done ;;
  short|idle|fanout|instructions|firehose|coldstart|bus|bus-postgres-insert) bash "$dir/$scenario.sh" ;;
  *) echo "usage: $0 [short|idle|fanout|instructions|firehose|coldstart|bus|bus-postgres-insert|all]" >&2; exit 2 ;;
esac
{ echo "machine: $(source "$dir/lib.sh"; trap - EXIT; machine)"; date -u +"run: %Y-%m-%dT%H:%M:%SZ"; } > "$dir/results/machine.txt"
