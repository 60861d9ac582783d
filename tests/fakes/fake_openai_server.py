#!/usr/bin/python3
"""A tiny OpenAI-compatible server for the process backend's tests (Python standard library only).

Listens on 127.0.0.1:$PORT. GET /health answers 200 (503 for the first $FAKE_READY_AFTER polls; 503
forever with FAKE_NEVER_READY=1). POST /v1/completions and /v1/chat/completions answer
max_tokens (default 4) tokens "t0", "t1", ... with usage (prompt tokens: the prompt's words), or,
with "stream": true, one server-sent event per token, each written and flushed alone, then the
finish chunk, the usage chunk (stream_options.include_usage) and "data: [DONE]". The prompt "hang"
streams its first event and then never answers more (the tests kill the server meanwhile). With
FAKE_HANG_COMPLETIONS=1 no completion is ever answered while /health still answers 200 (a stuck
request path).
Writes its pid to $FAKE_PID_FILE when set, first thing.
"""
import http.server
import json
import os
import sys
import threading

health_polls = 0
never = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        print("fake server: " + fmt % args, flush=True)

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global health_polls
        if self.path == "/health":
            health_polls += 1
            ready = os.environ.get("FAKE_NEVER_READY") != "1" and health_polls > int(
                os.environ.get("FAKE_READY_AFTER", "0"))
            self.send_json(200 if ready else 503, {"ready": ready, "polls": health_polls})
        else:
            self.send_json(404, {"error": {"message": "no " + self.path}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if os.environ.get("FAKE_HANG_COMPLETIONS") == "1":
            never.wait()
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            return self.send_json(404, {"error": {"message": "no " + self.path}})
        if "max_tokens" in body and not isinstance(body["max_tokens"], int):
            return self.send_json(400, {"error": {"message": "max_tokens: must be an integer"}})
        prompt = " ".join(m.get("content", "") for m in body.get("messages", [])) if chat else body.get("prompt", "")
        tokens = ["t%d" % i for i in range(body.get("max_tokens", 4))]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(tokens),
                 "total_tokens": len(prompt.split()) + len(tokens)}
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text = " ".join(tokens)
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return self.send_json(200, {"id": "fake-1", "object": kind, "model": "fake", "choices": [choice],
                                        "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def event(obj):
            self.wfile.write(("data: " + json.dumps(obj) + "\n\n").encode())
            self.wfile.flush()

        for i, t in enumerate(tokens):
            delta = {"delta": {"content": t}} if chat else {"text": t}
            event({"id": "fake-1", "object": kind + (".chunk" if chat else ""), "index": i,
                   "choices": [dict(index=0, finish_reason=None, **delta)], "usage": None})
            if prompt == "hang":
                never.wait()
        event({"id": "fake-1", "choices": [{"index": 0, "finish_reason": "length"}], "usage": None})
        if body.get("stream_options", {}).get("include_usage"):
            event({"id": "fake-1", "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main():
    if os.environ.get("FAKE_PID_FILE"):
        with open(os.environ["FAKE_PID_FILE"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.environ["FAKE_PID_FILE"] + ".tmp", os.environ["FAKE_PID_FILE"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    print("fake server listening on port", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
