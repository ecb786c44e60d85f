"""An OpenAI-compatible chat server on 127.0.0.1 that answers every request with the same
300-word text, streamed or not, `delay` seconds apart per chunk: a stand-in for the model server
in tests of what happens around requests (caches, locks, interruptions), not of the model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = [f"word{index}" for index in range(299)] + ["end."]


class ListsModelM(BaseHTTPRequestHandler):
    """An OpenAI-compatible server's model list (`GET /v1/models`: the model `m`); subclasses
    answer the chat requests."""

    protocol_version = "HTTP/1.0"

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def log_message(self, *_: object) -> None:
        pass


def _handler(delay: float) -> type[BaseHTTPRequestHandler]:
    class Answering(ListsModelM):
        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not payload.get("stream"):
                usage = {"prompt_tokens": 10, "completion_tokens": len(WORDS)}
                message = {"content": " ".join(WORDS)}
                self._json({"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for index, word in enumerate(WORDS):
                finish = "stop" if index == len(WORDS) - 1 else None
                delta = {"content": word if index == 0 else f" {word}"}
                usage = {"prompt_tokens": 10, "completion_tokens": index + 1}
                chunk = {"choices": [{"delta": delta, "finish_reason": finish}], "usage": usage}
                try:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                except OSError:  # the client went away
                    return
                time.sleep(delay)
            self.wfile.write(b"data: [DONE]\n\n")

    return Answering


@contextmanager
def fake_endpoint(delay: float = 0.0) -> Iterator[str]:
    """The server's `--endpoint` URL while the block runs."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), _handler(delay))
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{web.server_address[1]}/v1"
    finally:
        web.shutdown()
