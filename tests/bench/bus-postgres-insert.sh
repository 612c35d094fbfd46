#!/usr/bin/env bash
# Issue 11: the price of the postgres backend's ordering trigger (README:
# PostgreSQL): inserts per second into a table made as `create = true` makes
# it (the trigger) and one made for `ordering = "unchecked"` (a plain
# bigserial), from each count of WRITERS concurrent pgbench clients (1, 4,
# 8) for SECONDS_EACH seconds. Loopback only; needs PostgreSQL on
# 127.0.0.1:5432 (database test). The postgres route's memory and fan-out
# beside the other brokers are in bus.sh.
source "$(dirname "$0")/lib.sh"
WRITERS="${WRITERS:-1 4 8}"
SECONDS_EACH="${SECONDS_EACH:-10}"
PG="postgres://postgres@127.0.0.1:5432/test"
build
machine

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
