#!/usr/bin/python3
"""An OpenAI-compatible server for the character model of examples/training/train.py.

Serves GET /health, GET /v1/models, POST /v1/completions and POST /v1/chat/completions (streamed
as server-sent events ending with `data: [DONE]`, or whole), with usage counts, on 127.0.0.1:$PORT:
what troupe's process backend starts and forwards requests to (docs/serving.md, "The process
backend"). Python's standard library (http.server) and PyTorch only:

    PORT=8000 /usr/bin/python3 server.py --checkpoint /tmp/ckpt.pt
    curl -s localhost:8000/v1/completions -d '{"prompt": "This License", "max_tokens": 40}'

--checkpoint takes what train.py writes: its --checkpoint-file, a step directory of a troupe
checkpoint (step-N, holding rank-0/state.pt), or the job's checkpoint directory (its newest
complete step). Without one it serves freshly seeded weights, and says so: the text is noise.
Tokens are characters: prompt_tokens counts the prompt's characters, completion_tokens the
generated ones.
"""

import argparse
import http.server
import importlib.util
import json
import os
import re
import sys
import threading
import time
import uuid

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_PY = os.path.normpath(os.path.join(HERE, "..", "training", "train.py"))
MAX_TOKENS_LIMIT = 4096


def load_train_module():
    spec = importlib.util.spec_from_file_location("troupe_example_train", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_file(path):
    """The state.pt that `path` names: a file, a step directory, or a checkpoint directory."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise RuntimeError("checkpoint %s does not exist" % path)
    in_step = os.path.join(path, "rank-0", "state.pt")
    if os.path.isfile(in_step):
        return in_step
    steps = []
    for name in os.listdir(path):
        m = re.fullmatch(r"step-(\d+)", name)
        if m and os.path.isfile(os.path.join(path, name, "rank-0.done")):
            steps.append(int(m.group(1)))
    if not steps:
        raise RuntimeError("checkpoint directory %s holds no complete step (step-N/rank-0.done)" % path)
    return os.path.join(path, "step-%d" % max(steps), "rank-0", "state.pt")


class Model:
    """The CharMLP of train.py with its vocabulary; generate() is serialized by a lock."""

    def __init__(self, checkpoint, seed):
        train = load_train_module()
        self.context = train.CONTEXT
        torch.set_num_threads(1)
        if checkpoint:
            path = checkpoint_file(checkpoint)
            state = torch.load(path, map_location="cpu")
            self.vocab = state["vocab"]
            self.model = train.CharMLP(len(self.vocab))
            self.model.load_state_dict(state["model"])
            self.source = "%s (step %s)" % (path, state.get("step"))
        else:
            self.vocab, _ = train.load_corpus()
            torch.manual_seed(seed)
            self.model = train.CharMLP(len(self.vocab))
            self.source = "freshly seeded weights (seed %d): no --checkpoint given, the text is noise" % seed
        # The replica's slice (CUDA_VISIBLE_DEVICES, set by troupe's node agent) if it has one, as
        # train.py decides; the CPU otherwise. Sampling stays on the CPU (its generator is seeded
        # per request), so a request's text does not depend on where the model runs but for the
        # logits' rounding.
        use_cuda = torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "") != ""
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        self.model.to(self.device)
        if use_cuda:
            self.source += " on %s" % torch.cuda.get_device_name(0)
        self.model.eval()
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.pad = self.index.get(" ", 0)
        self.lock = threading.Lock()

    def generate(self, prompt, max_tokens, temperature, seed):
        """Yields max_tokens characters, one at a time."""
        ids = [self.index[c] for c in prompt if c in self.index]
        ids = [self.pad] * max(0, self.context - len(ids)) + ids[-self.context:]
        g = torch.Generator()
        g.manual_seed(seed)
        for _ in range(max_tokens):
            with self.lock, torch.no_grad():
                logits = self.model(torch.tensor([ids[-self.context:]], device=self.device))[0].float().cpu()
                if temperature <= 0:
                    nxt = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=g))
            ids.append(nxt)
            yield self.vocab[nxt]


class BadRequest(Exception):
    pass


def parse_request(body, chat):
    """(prompt, max_tokens, stream, include_usage, temperature, seed) of an OpenAI request."""
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: required, a non-empty array of {role, content}")
        parts = []
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if content is not None and not isinstance(content, str):
                raise BadRequest("messages[%d].content: must be a string" % i)
            parts.append(content or "")
        prompt = "\n".join(parts)
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt: must be a string")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest("max_tokens: must be an integer from 1 to %d, got %s" % (MAX_TOKENS_LIMIT,
                                                                               json.dumps(max_tokens)))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream: must be true or false")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise BadRequest("temperature: must be a number >= 0")
    seed = body.get("seed", 0)
    if not isinstance(seed, int):
        raise BadRequest("seed: must be an integer")
    return prompt, max_tokens, stream, include_usage, float(temperature), seed


def make_handler(model, model_name):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print("%s %s" % (self.address_string(), fmt % args), flush=True)

        def send_json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message, kind="invalid_request_error"):
            self.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

        def do_GET(self):
            if self.path == "/health":
                self.send_json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "troupe"}]})
            else:
                self.error(404, "no such path: GET %s" % self.path, "not_found_error")

        def do_POST(self):
            chat = self.path == "/v1/chat/completions"
            if not chat and self.path != "/v1/completions":
                return self.error(404, "no such path: POST %s" % self.path, "not_found_error")
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError as e:
                    raise BadRequest("body: not JSON: %s" % e)
                prompt, max_tokens, stream, include_usage, temperature, seed = parse_request(body, chat)
            except BadRequest as e:
                return self.error(400, str(e))
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
            created = int(time.time())
            name = body.get("model") or model_name
            usage = {"prompt_tokens": len(prompt), "completion_tokens": max_tokens,
                     "total_tokens": len(prompt) + max_tokens}
            tokens = model.generate(prompt, max_tokens, temperature, seed)
            if not stream:
                text = "".join(tokens)
                choice = {"index": 0, "logprobs": None, "finish_reason": "length"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                return self.send_json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                            "created": created, "model": name, "choices": [choice], "usage": usage})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            kind = "chat.completion.chunk" if chat else "text_completion"

            def event(choices, with_usage=None):
                chunk = {"id": rid, "object": kind, "created": created, "model": name, "choices": choices}
                if include_usage:
                    chunk["usage"] = with_usage
                self.wfile.write(("data: " + json.dumps(chunk) + "\n\n").encode())
                self.wfile.flush()

            try:
                for i, t in enumerate(tokens):
                    if chat:
                        delta = {"role": "assistant", "content": t} if i == 0 else {"content": t}
                        event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
                    else:
                        event([{"index": 0, "text": t, "logprobs": None, "finish_reason": None}])
                end = {"index": 0, "logprobs": None, "finish_reason": "length"}
                end.update({"delta": {}} if chat else {"text": ""})
                event([end])
                if include_usage:
                    event([], usage)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a cancel): stop generating

    return Handler


def main(argv):
    p = argparse.ArgumentParser(description="OpenAI-compatible server for train.py's character model.")
    p.add_argument("--checkpoint", default="", help="train.py's checkpoint file, step directory or checkpoint "
                                                    "directory (default: freshly seeded weights)")
    p.add_argument("--model-name", default="troupe-charmlp", help="the model's id in /v1/models and responses")
    p.add_argument("--seed", type=int, default=1, help="seed of the weights when no checkpoint is given")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: $PORT)")
    args = p.parse_args(argv)
    port = args.port if args.port is not None else os.environ.get("PORT")
    if port is None:
        p.error("give --port or set PORT")
    model = Model(args.checkpoint, args.seed)
    print("serving %s as %s: %s" % (TRAIN_PY, args.model_name, model.source), flush=True)
    server = http.server.ThreadingHTTPServer((args.host, int(port)), make_handler(model, args.model_name))
    server.daemon_threads = True
    print("listening on %s:%d" % server.server_address[:2], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
