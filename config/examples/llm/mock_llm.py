#!/usr/bin/env python3
"""A mock of an OpenAI-style chat completions API, for config/examples/llm.toml.

POST /v1/chat/completions with {"model": ..., "messages": [...], "stream": true}
streams, as Server-Sent Events, the answer "You asked: <the last user
message>. ..." word by word, the way the real API does: a role-only chunk,
one chunk per token, a final chunk with `finish_reason`, then
`data: [DONE]`. A body that is not such a request is answered 400 (no
Authorization header is needed). Standard library only. Loopback only:

    python3 config/examples/llm/mock_llm.py [--port 8090] [--delay 0.05]
"""
import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


def answer(prompt):
    words = ("You asked: " + prompt.strip().rstrip(".?!") + ". This answer streams one token at a time, "
             "as a real model would.").split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.05

    def refuse(self, status, message):
        body = json.dumps({"error": {"message": message}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.refuse(404, "no such path: " + self.path)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.refuse(413, "the body is too large")
        try:
            request = json.loads(self.rfile.read(length) or b"null")
            prompt = [m for m in request["messages"] if m.get("role") == "user"][-1]["content"]
            model = str(request.get("model", "mock"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return self.refuse(400, 'expected {"model": ..., "messages": [{"role": "user", "content": ...}]}')
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        created = int(time.time())

        def chunk(delta, finish=None):
            event = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return "data: " + json.dumps(event) + "\n\n"

        try:
            self.wfile.write(chunk({"role": "assistant"}).encode())
            for token in answer(str(prompt)):
                time.sleep(self.delay)
                self.wfile.write(chunk({"content": token}).encode())
                self.wfile.flush()
            self.wfile.write((chunk({}, "stop") + "data: [DONE]\n\n").encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left

    def log_message(self, fmt, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between tokens")
    args = parser.parse_args()
    Handler.delay = args.delay
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"mock LLM on http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
