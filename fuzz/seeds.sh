#!/usr/bin/env bash
# Writes the hand-made seeds of each target into fuzz/corpus/TARGET/seed-*,
# the inputs the fuzzer starts from (with the corpus it grew, committed).
# Rerun after changing a target's input layout.
set -euo pipefail
cd "$(dirname "$0")"
sep=$'\xff'
seed() { # target name content
  mkdir -p "corpus/$1"
  printf '%s' "$3" >"corpus/$1/seed-$2"
}
for t in sse ndjson; do
  seed $t plain $'\x07'"1${sep}update${sep}{\"a\":1}${sep}redis"
  seed $t lines $'\x0f'"1-0${sep}msg${sep}line one"$'\r\n'"two"$'\r'"three"$'\n'"${sep}x${sep}2${sep}${sep} data: fake"$'\n\n'"id: 9${sep}y"
  printf '\x03a\r\nb\0c\xffev\nent\xff\0\x01\xffs' >"corpus/$t/seed-controls"
  seed $t envelope $'\x0d'"42${sep}tick${sep}[1,\"two\",null]${sep}clock"
done
seed accept sse $'\x00'"${sep}text/event-stream"
seed accept ndjson $'\x00'"${sep}application/x-ndjson"
seed accept ranges $'\x00'"${sep}application/*, application/x-ndjson;q=0${sep}text/*;q=0.5${sep}*/*;q=0.1"
seed accept params $'\x00'"${sep}text/event-stream; charset=utf-8; q=1.0, application/json;q=0.9"
seed accept param $'\x01'"SSE${sep}text/html"
seed cursor single $'\x00'"demo${sep}b${sep}c${sep}x${sep}1700000000000-0${sep}5"
seed cursor form $'\x02'"redis${sep}nats${sep}demo${sep}redis=1-0&nats=7${sep}1-0${sep}7${sep}a b%c&d=e"
seed cursor odd $'\x01'"a=b${sep}a&b${sep}${sep}%zz${sep} lead${sep}é${sep}$'\t'"
seed upstream sse $'\x00'$'\x10\x40\x80\xc0'"retry: 100"$'\n'"id: 1"$'\n'"event: e"$'\n'"data: a"$'\n'"data: b"$'\r\n\r\n'": c"$'\n'"id"$'\n\n'"data:x"$'\r\r'
seed upstream ndjson $'\x01'$'\x08\x30\x90\xf0''{"id":"1","event":"e","data":1}'$'\n''[1,2]'$'\n''not json'$'\n''{"id":2}'
seed upstream lines $'\x02'$'\x01\x02\x03\x04'$'a\nb\r\nc'
seed upstream long $'\x00'$'\x10\x20\x30\x40'"data: $(printf 'x%.0s' $(seq 200))"$'\n\n'
for f in ../config/default.toml ../config/examples/*.toml; do
  seed config "$(basename "$f" .toml)" "$(cat "$f")"
done
# (bash strings hold no NUL: the variables after the file's NUL by printf)
printf '%s\0%s\n%s' "$(cat ../config/default.toml)" SERVER__PORT=9090 \
  ROUTES__REFERENCE__HEARTBEAT=1ms >corpus/config/seed-env
seed credentials raw $'\x00'"Bearer abc${sep}abc${sep}access_token=abc${sep}abc${sep}lobby"
seed credentials signed $'\x01''{"alg":"HS256","typ":"JWT"}'"${sep}"'{"exp":4102444800,"rooms":["lobby","team-*"]}'"${sep}${sep}${sep}team-a"
seed credentials cookie $'\x09'"${sep}"'{"exp":4102444800,"rooms":"*"}'"${sep}${sep}${sep}x"
seed credentials wrong $'\x03'"${sep}"'{"exp":4102444800,"rooms":"*"}'"${sep}${sep}${sep}x"
crlf=$'\r\n'
seed http_head get "GET / HTTP/1.1${crlf}Host: a${crlf}Accept: text/event-stream${crlf}${crlf}"
seed http_head ndjson "GET /?format=ndjson HTTP/1.1${crlf}Host: a${crlf}Last-Event-ID: 2${crlf}${crlf}"
seed http_head post "POST / HTTP/1.1${crlf}Host: a${crlf}Content-Type: application/json${crlf}Content-Length: 21${crlf}${crlf}{\"text\": \"a b c d e\"}"
seed http_head chunked "POST /rooms/x HTTP/1.1${crlf}Host: a${crlf}Transfer-Encoding: chunked${crlf}${crlf}5${crlf}{\"a\":${crlf}2${crlf}1}${crlf}0${crlf}${crlf}"
seed http_head bearer "GET /private/r?access_token=fuzz-static-token-0123456789 HTTP/1.1${crlf}Host: a${crlf}Origin: https://app.example${crlf}${crlf}"
seed http_head preflight "OPTIONS /private/r HTTP/1.1${crlf}Host: a${crlf}Origin: https://app.example${crlf}Access-Control-Request-Method: GET${crlf}${crlf}"
seed http_head metrics "GET /metrics HTTP/1.1${crlf}Host: a${crlf}Authorization: Bearer fuzz-metrics-token-0123456789${crlf}${crlf}"
seed http_head pipelined "GET /healthz HTTP/1.1${crlf}Host: a${crlf}${crlf}HEAD /nope HTTP/1.1${crlf}Host: a${crlf}Connection: close${crlf}${crlf}"
seed http_head jwt "GET /rooms/lobby HTTP/1.1${crlf}Host: a${crlf}Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDAsInJvb21zIjoiKiJ9.x${crlf}${crlf}"
