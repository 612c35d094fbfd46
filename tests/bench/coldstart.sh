#!/usr/bin/env bash
# Scenario 5, cold start: process start to the first byte of `/` on the
# built-in default config (RUNS runs, median), and the release binary's size.
source "$(dirname "$0")/lib.sh"
RUNS="${RUNS:-50}"
build
"$BIN/coldstart" "$BIN/gateway" "$RUNS" | tee "$RESULTS/coldstart.txt"
echo "release binary: $(stat -c %s "$BIN/gateway") bytes" | tee -a "$RESULTS/coldstart.txt"
