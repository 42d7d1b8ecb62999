"""The one fake OpenAI-compatible server of the tests: real HTTP on 127.0.0.1, in a thread.

Routes: POST /v1/chat/completions (a chat completion: `reply`), POST /v1/completions (vLLM:
token-id `prompt`, `prompt_logprobs`), POST /generate (SGLang: `input_ids`,
`meta_info.input_token_logprobs`), GET /v1/models (one model, `owned_by` the kind it plays, and
`max_model_len` when given), GET /metrics (Prometheus text, when given), GET /props (a JSON
document, when given: llama.cpp's llama-server has one).
Prompt log-probabilities are canned: `canned(position)`. Each POST takes the next mode from a
script (then `default`): a good answer, or one of the faults a real network or server produces.
The server stops itself after `lifetime` seconds even if a test forgets to, and every handler
is bounded in time."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content, logprobs=None, finish_reason="stop"):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "x", "logprob": 0.0,
                                           "top_logprobs": [{"token": t, "logprob": lp} for t, lp in logprobs.items()]}]}
    return {"id": "x", "object": "chat.completion", "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def canned(position: int) -> float:
    """The log-probability the fake server reports for the prompt token at `position`."""
    return -0.25 * (position % 4 + 1)


def prompt_logprobs(path: str, body: dict) -> dict | None:
    """vLLM's (/v1/completions) or SGLang's (/generate) answer to a token-id prompt, with canned
    log-probabilities (vLLM also ranks); None for any other route."""
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        ids = body["prompt"]
        entries = [None] + [{str(t): {"logprob": canned(k), "rank": k % 3 + 1, "decoded_token": "?"}}
                            for k, t in enumerate(ids) if k]
        return {"choices": [{"text": "x", "prompt_logprobs": entries}]}
    if path == "/generate":
        ids = body["input_ids"]
        entries = [[None, ids[0], None]] + [[canned(k), t, None] for k, t in enumerate(ids) if k]
        return {"text": "x", "meta_info": {"input_token_logprobs": entries}}
    return None


class FakeServer:
    """Modes: ok (the route's answer; chat: any dict/str reply set with `reply`), cut (body
    shorter than Content-Length), cut_json (truncated JSON, consistent length), garbage (not HTTP
    at all), null (content: null), nochoices (JSON without choices), hang (no answer for
    `hang_seconds`), echo401 / echo500 / echo200 (the request's Authorization header sent back in
    the body; with `default` set to one, GET /v1/models answers the same), wait429 (429 asking
    for 0.4 s with retry-after-ms). Every request is recorded in `requests` (path, auth; a POST
    also its mode, body and headers)."""

    def __init__(self, reply="Hello there.", hang_seconds=1.5, lifetime=60.0, owned_by="fake", max_model_len=None,
                 metrics=None, props=None):
        self.script: list = []
        self.default = "ok"
        self.reply, self.hang_seconds, self.owned_by = reply, hang_seconds, owned_by
        # max_model_len: listed on /v1/models, and token-id prompts of that many tokens or more refused
        # with HTTP 400 as vLLM and SGLang do; metrics: the text of GET /metrics (404 without)
        self.max_model_len, self.metrics, self.props = max_model_len, metrics, props
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as asyncio servers (uvicorn: vLLM, SGLang, llama-cpp-python) set it: without it
            # a kept-alive connection waits ~40 ms per reply (headers and body are two writes; delayed ACK)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                    mode = server.default if server.default.startswith("echo") else "ok"
                if self.path in ("/metrics", "/props"):
                    text = server.metrics if self.path == "/metrics" else None if server.props is None else json.dumps(server.props)
                    data = (text or "").encode()
                    self.send_response(200 if text is not None else 404)
                    self.send_header("Content-Type", "text/plain" if self.path == "/metrics" else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                card = {"id": "m", "owned_by": server.owned_by}
                if server.max_model_len is not None:
                    card["max_model_len"] = server.max_model_len
                server.handle(self, mode, {"object": "list", "data": [card]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    mode = server.script.pop(0) if server.script else server.default
                    server.requests.append({"mode": mode, "path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization"),
                                            "headers": {k.lower(): v for k, v in self.headers.items()}})
                ids = body.get("input_ids") or body.get("prompt")
                if server.max_model_len is not None and isinstance(ids, list) and len(ids) >= server.max_model_len:
                    mode = "too_long"
                server.handle(self, mode, prompt_logprobs(self.path, body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # a client that gave up is not an error here
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.watchdog = threading.Timer(lifetime, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()

    def handle(self, h, mode, answer=None):
        if mode == "garbage":
            h.wfile.write(b"SSH-2.0-OpenSSH_9.6 not http\r\n\r\n")
            h.close_connection = True
            return
        if mode == "hang":
            time.sleep(self.hang_seconds)  # the client times out first; bounded anyway
            h.close_connection = True
            return
        status, payload = 200, None
        if mode == "ok":
            payload = answer if answer is not None else self.reply if isinstance(self.reply, dict) else completion(self.reply)
        elif mode == "null":
            payload = completion(None, finish_reason="length")
        elif mode == "nochoices":
            payload = {"object": "chat.completion", "usage": {}}
        elif mode == "wait429":  # a rate limit that says how long to wait (OpenAI's retry-after-ms)
            status, payload = 429, {"error": {"message": "rate limited"}}
        elif mode == "too_long":
            status = 400
            payload = {"error": {"message": f"The decoder prompt plus the number of requested output tokens (at "
                                            f"least 1) is longer than the maximum model length of {self.max_model_len}."}}
        elif mode.startswith("echo"):
            status = int(mode[4:])
            payload = {"error": {"message": f"bad request with headers Authorization: {h.headers.get('Authorization')}"}}
        data = json.dumps(payload).encode() if payload is not None else b""
        if mode == "cut_json":
            data = json.dumps(completion("This answer is cut")).encode()[:40]
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data) + (500 if mode == "cut" else 0)))
        if mode == "wait429":
            h.send_header("retry-after-ms", "400")
        h.end_headers()
        h.wfile.write(data)
        if mode == "cut":
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def modes(self):
        return [r["mode"] for r in self.requests if "mode" in r]

    def stop(self):
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
