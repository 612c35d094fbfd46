#!/usr/bin/env bash
# Scenario 3, broadcast fan-out, and scenario 6, the same through nginx +
# nchan in the same run: SUBSCRIBERS (10,000) SSE clients of one stream;
# COUNT events published at SATURATE per second (more than can be
# delivered: deliveries per second at saturation), then at STEADY per second
# (publish-to-delivery latency at a lower rate). Needs Redis on
# 127.0.0.1:6379; nchan needs nginx and libnginx-mod-nchan (Debian).
# One command: bash tests/bench/run.sh fanout.
source "$(dirname "$0")/lib.sh"
SUBSCRIBERS="${SUBSCRIBERS:-10000}"
SATURATE="${SATURATE:-200}"
STEADY="${STEADY:-25}"
COUNT="${COUNT:-1000}"
export BENCH_TOKEN="bench-token-0123456789abcdef"
build

# run NAME SUB_URL PUB_URL RATE [publisher options…]
run() {
  local name="$1" sub="$2" pub="$3" rate="$4"; shift 4
  local count=$(( COUNT < rate * 20 ? COUNT : rate * 20 ))
  "$LOADGEN" "$sub" -c "$SUBSCRIBERS" --rate 5000 --processes 2 --sources 8 \
    --events "$count" --idle-timeout 30s --max-time 3m \
    --publish-url "$pub" --publish-rate "$rate" --publish-count "$count" \
    --publish-delay "$(( SUBSCRIBERS / 5000 + 3 ))s" "$@" \
    --watch-pid "$WATCH_PID" --report "$RESULTS/$name.json"
}

# PEERS_ONLY=1 runs only the nchan half.
if [ -z "${PEERS_ONLY:-}" ]; then
redis-cli -h 127.0.0.1 del bench:fanout >/dev/null
start_gateway "$BENCH_DIR/configs/fanout.toml"
WATCH_PID="$GATEWAY_PID"
auth="Authorization: Bearer $BENCH_TOKEN"
for rate in "$SATURATE" "$STEADY"; do
  echo "gateway, $rate events/s to $SUBSCRIBERS subscribers:"
  run "fanout-gateway-$rate" "http://$GATEWAY_ADDR/bus" "http://$GATEWAY_ADDR/bus/events" "$rate" \
    --publish-header "$auth"
done
kill "$GATEWAY_PID"
fi

if ! command -v nginx >/dev/null 2>&1 || ! ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
  echo "nchan: nginx or libnginx-mod-nchan missing (apt-get install nginx-light libnginx-mod-nchan); skipped" >&2
  exit 0
fi
dir="$(mktemp -d -t bench-nchan.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
sed "s/PORT/$port/" "$BENCH_DIR/configs/nchan.conf" > "$dir/nginx.conf"
sed -i "1i load_module /usr/lib/nginx/modules/ngx_nchan_module.so;" "$dir/nginx.conf"
nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/pub" && break; sleep 0.1; done
sleep 0.5
workers=(); for w in $(pgrep -P "$NGINX_PID"); do workers+=(--watch-pid "$w"); done
for rate in "$SATURATE" "$STEADY"; do
  echo "nchan, $rate events/s to $SUBSCRIBERS subscribers:"
  WATCH_PID="$NGINX_PID" run "fanout-nchan-$rate" "http://127.0.0.1:$port/sub" "http://127.0.0.1:$port/pub" "$rate" \
    --publish-body '{"seq":{seq},"ts_us":{ts_us}}' "${workers[@]}"
done
