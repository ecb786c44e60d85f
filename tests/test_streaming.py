"""The streaming client against a misbehaving OpenAI-compatible server on 127.0.0.1 (a real HTTP
server in a thread): what the server sent is what the error says, a stalled stream ends, and a
well-formed stream comes back as a non-streamed completion."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest.mock import patch

import pytest
from datatrove.pipeline.inference.types import InferenceError

from selflengthen.engine import streaming
from selflengthen.engine.streaming import stream_chat
from tests.fake_endpoint import ListsModelM


def chunk(text: str = "", finish: str | None = None) -> bytes:
    body = {"choices": [{"delta": {"content": text}, "finish_reason": finish}], "usage": None}
    return f"data: {json.dumps(body)}\n\n".encode()


#: What the server sends after its 200 and headers, per path; None: it stalls there.
SCRIPTS: dict[str, list[bytes | None]] = {
    "/good": [chunk("Hello"), chunk(" world", "stop"), b"data: [DONE]\n\n"],
    "/malformed": [chunk("Hello"), b"data: {not json\n\n"],
    "/html": [b"<html><body>Welcome to nginx!</body></html>\n"],
    "/cut": [chunk("Hello"), chunk(" wor")],
    "/stall": [chunk("Hello"), None],
}


class Scripted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if self.path == "/html" else "text/event-stream")
        self.end_headers()
        for part in SCRIPTS[self.path]:
            if part is None:
                time.sleep(3)
                return
            self.wfile.write(part)
            self.wfile.flush()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    web = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()


def ask(url: str) -> dict:
    return asyncio.run(stream_chat(url, {"stream": True, "messages": []}, {}))


def test_a_well_formed_stream_is_one_completion(server: str) -> None:
    answer = ask(f"{server}/good")
    assert answer["choices"][0]["message"]["content"] == "Hello world"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 2  # no per-chunk usage: one token per chunk


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/malformed", "the server's stream has a line that is not a JSON chunk ('{not json'): malformed"),
        ("/html", "answered HTTP 200 without a stream of chat chunks (server-sent events); it sent "
                  "'<html><body>Welcome to nginx!</body></html>'"),
    ],
)  # fmt: skip
def test_a_server_that_answers_something_else_fails_the_request_saying_what_it_sent(
    server: str, path: str, message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(InferenceError) as error:  # not retried: it would send the same again
        ask(f"{server}{path}")
    assert message in str(error.value) and time.monotonic() - started < 5


def test_a_stream_closed_before_the_answer_ended_is_a_broken_connection(server: str) -> None:
    with pytest.raises(
        ConnectionError, match="closed the stream after 2 chunks, before the answer was finished"
    ):
        ask(f"{server}/cut")  # datatrove's runner retries these


def test_a_stalled_stream_ends_with_what_happened(server: str) -> None:
    started = time.monotonic()
    with patch.object(streaming, "STALL_SECONDS", 0.5), pytest.raises(InferenceError) as error:
        ask(f"{server}/stall")
    assert "sent nothing for 0.5 s in the middle of a streamed answer (after 1 chunks)" in str(error.value)
    assert time.monotonic() - started < 2.5  # the stall (3 s) was not waited out


class MalformedEndpoint(ListsModelM):
    """An endpoint that lists its model like an OpenAI-compatible server, then streams garbage."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = chunk("Once") + b"data: {not json\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_step_on_an_endpoint_that_streams_garbage_stops_at_once_saying_so(tmp_path: Path) -> None:
    """Before: ~330 s of retries, then "no answer within 30 s, or it failed (... no connection)"."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), MalformedEndpoint)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text('{"instruction": "Write a long story about a lighthouse."}\n')
    command = [
        shutil.which("selflengthen", path=str(Path(sys.executable).parent)), "generate",
        "--run-dir", str(tmp_path / "run"), "--instructions", str(instructions), "--model", "m",
        "--endpoint", f"http://127.0.0.1:{web.server_address[1]}/v1", "--max-retries", "1",
        "--samples-per-instruction", "1",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        web.shutdown()
    assert result.returncode == 2 and time.monotonic() - started < 120
    line = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("selflengthen: error: ") and "Traceback" not in result.stderr
    assert "initial: all 1 requests failed (malformed_stream: " in line
    assert "not a JSON chunk ('{not json'): malformed server-sent events" in line
