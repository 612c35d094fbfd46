#!/usr/bin/env bash
# Issue 11, the postgres bus backend beside redis, in the same run, on
# loopback: memory per idle SSE subscriber (SUBSCRIBERS, 1,000, held HOLD,
# 20 s, each on a fresh gateway: RSS after the clients joined minus before,
# over their count), fan-out deliveries per second (the same subscribers,
# COUNT events published through each publish route at RATE per second),
# and the price of the ordering trigger: inserts per second into a table
# with it and one without, from each count of WRITERS concurrent pgbench
# clients (1, 4, 8) for
# SECONDS each. Needs PostgreSQL on 127.0.0.1:5432 (database test) and
# Redis on 127.0.0.1:6379. One command: bash tests/bench/run.sh bus-postgres.
source "$(dirname "$0")/lib.sh"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
HOLD="${HOLD:-20s}"
RATE="${RATE:-200}"
COUNT="${COUNT:-1000}"
WRITERS="${WRITERS:-1 4 8}"
SECONDS_EACH="${SECONDS_EACH:-10}"
PG="postgres://postgres@127.0.0.1:5432/test"
export BENCH_TOKEN="bench-token-0123456789abcdef"
build

psql "$PG" -qc "DROP TABLE IF EXISTS bench_fanout, bench_fanout_trim" 2>/dev/null
redis-cli -h 127.0.0.1 del bench:fanout >/dev/null

# Idle: memory per subscriber, a fresh gateway per backend.
for route in pg redis; do
  start_gateway "$BENCH_DIR/configs/bus-postgres.toml"
  echo "$route: $SUBSCRIBERS idle subscribers for $HOLD"
  "$LOADGEN" "http://$GATEWAY_ADDR/$route" -c "$SUBSCRIBERS" --rate 1000 --processes 1 --sources 2 \
    --hold "$HOLD" --idle-timeout 40s --watch-pid "$GATEWAY_PID" \
    --report "$RESULTS/bus-idle-$route.json"
  kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
done

# Fan-out: deliveries per second through each publish route.
for route in pg redis; do
  start_gateway "$BENCH_DIR/configs/bus-postgres.toml"
  echo "$route: $COUNT events at $RATE/s to $SUBSCRIBERS subscribers"
  "$LOADGEN" "http://$GATEWAY_ADDR/$route" -c "$SUBSCRIBERS" --rate 1000 --processes 1 --sources 2 \
    --events "$COUNT" --idle-timeout 30s --max-time 3m \
    --publish-url "http://$GATEWAY_ADDR/$route/events" --publish-rate "$RATE" --publish-count "$COUNT" \
    --publish-delay 3s --publish-header "Authorization: Bearer $BENCH_TOKEN" \
    --watch-pid "$GATEWAY_PID" --report "$RESULTS/bus-fanout-$route.json"
  kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
done

# The ordering trigger's price: WRITERS concurrent autocommit inserts, into
# a table made as `create = true` makes it (the trigger) and into one made
# as for `ordering = "unchecked"` (a plain bigserial), each key its own.
pgbench="$(find /usr/lib/postgresql -path '*/bin/pgbench' | sort -V | tail -n 1)"
script="$(mktemp -t bench-insert.XXXXXX)"
for table in bench_ordered bench_unordered; do
  psql "$PG" -qc "DROP TABLE IF EXISTS $table, ${table}_trim" 2>/dev/null
done
# A gateway makes both tables on its first request to each route.
cat > "$script.toml" <<TOML
[routes.ordered]
path = "/ordered"
[routes.ordered.backends.bus]
type = "postgres"
url = "$PG"
table = "bench_ordered"
key = "k"
[routes.unordered]
path = "/unordered"
[routes.unordered.backends.bus]
type = "postgres"
url = "$PG"
table = "bench_unordered"
key = "k"
ordering = "unchecked"
TOML
start_gateway "$script.toml"
for route in ordered unordered; do
  curl -s -o /dev/null --max-time 1 "http://$GATEWAY_ADDR/$route" || true
done
kill "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true
# Each insert is one autocommit statement, and both notify (the trigger
# does it for the ordered table; the unordered one's writers must, as the
# publish target does), so that only the ordering differs.
for table in bench_ordered bench_unordered; do
  values="VALUES ('k' || :client_id, '{\"n\":1}')"
  if [ "$table" = bench_ordered ]; then
    echo "INSERT INTO $table (key, data) $values;" > "$script"
  else
    echo "WITH i AS (INSERT INTO $table (key, data) $values RETURNING key) SELECT pg_notify('$table', key) FROM i;" > "$script"
  fi
  for writers in $WRITERS; do
    echo "$table: $writers writers for ${SECONDS_EACH}s"
    "$pgbench" -n -c "$writers" -j "$(( writers < 2 ? 1 : 2 ))" -T "$SECONDS_EACH" -f "$script" "$PG" 2>/dev/null |
      tee "$RESULTS/bus-insert-$table-$writers.txt" | grep -E '^(tps|latency)'
  done
done
rm -f "$script" "$script.toml"

# The figures.
python3 - "$RESULTS" "$SUBSCRIBERS" <<'PY'
import json, sys
results, n = sys.argv[1], int(sys.argv[2])
for route in ("pg", "redis"):
    idle = json.load(open(f"{results}/bus-idle-{route}.json"))
    rss = [s["rss_kib"] for s in idle["processes"]["samples"]]
    fan = json.load(open(f"{results}/bus-fanout-{route}.json"))
    print(f"{route}: idle {(max(rss) - rss[0]) * 1024 / n / 1000:.1f} KB per subscriber "
          f"({rss[0] / 1024:.1f} -> {max(rss) / 1024:.1f} MiB, {idle['errors'] or 'no'} errors); "
          f"fan-out {fan['events_per_second_in_window']:,.0f} deliveries/s "
          f"({fan['events']:,} deliveries, gaps {fan['gaps']}, missing {fan['missing']}, "
          f"repeats {fan['duplicates']}, latency p50 {fan['latency']['p50_us'] / 1000:.1f} ms "
          f"p99 {fan['latency']['p99_us'] / 1000:.1f} ms)")
PY
