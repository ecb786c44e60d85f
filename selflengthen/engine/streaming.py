"""Streamed chat completions that our code reads as they arrive, and cancels when told to.

datatrove's servers send a request and wait for the whole answer. A request whose payload asks
for a stream (`SamplingOptions.early_stop`) is sent here instead: the text is fed to the
request's watch chunk by chunk (the watch `chat` set for it), and the moment the watch reports
a certain rejection the connection is closed, which makes vLLM abort the request and free its
slot. The answer comes back in the shape of a non-streamed completion, so datatrove's runner,
request cache and metrics treat it like any other; a cancelled one has the finish reason
`early_stop`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx
from datatrove.pipeline.inference.types import InferenceError, ServerError

from selflengthen.filters.prefix import PrefixWatch

#: The finish reason of a request we cancelled because its rejection was certain.
EARLY_STOP = "early_stop"
#: How to make the watch of the request being sent. datatrove's generate callback takes only a
#: payload, so `chat` sets this around its call (each rollout runs in its own task and context).
#: A factory, not a watch: a request that datatrove retries starts over with a fresh one.
REQUEST_WATCH: ContextVar[Callable[[], PrefixWatch] | None] = ContextVar(
    "selflengthen_request_watch", default=None
)
_CONNECT_SECONDS = 30.0
#: A stream that sends nothing for this long has stalled: the request fails (not retried) with a
#: message that says so. Generous, because on a saturated CPU server a request can wait for a
#: slot (or its KV cache) as long as another takes to finish: the lengthening experiment's
#: extension requests ran at ~2.2 tokens/s each, so a 2,000-token answer takes ~15 minutes.
STALL_SECONDS = 1800.0


@dataclass
class LiveUsage:
    """The completion tokens a streamed request has written so far (vLLM's per-chunk usage)."""

    completion_tokens: int = 0


#: Where the request being sent reports its tokens as they arrive, so that a request cancelled
#: from outside (a speculative attempt no longer needed) still counts what it cost. Set by `chat`.
LIVE_USAGE: ContextVar[LiveUsage | None] = ContextVar("selflengthen_live_usage", default=None)


async def stream_chat(url: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """POST a streamed chat completion to `url` and return it as a non-streamed response.

    Errors are raised as datatrove's servers raise them (HTTP 400 as a bad request, which its
    cache remembers; 500 as a server error; a broken connection as `ConnectionError`, which
    its runner retries). A server that answers but not with a stream of chat chunks (a line that
    is not JSON, no server-sent events at all), or that stalls for `STALL_SECONDS`, fails the
    request with `InferenceError` saying what it sent: retrying would not change it.
    """
    make_watch = REQUEST_WATCH.get()
    live = LIVE_USAGE.get()
    watch = make_watch() if make_watch is not None else None
    text, reasoning, finish_reason = [], [], None
    usage: dict[str, Any] | None = None
    chunks_with_text = chunks = 0
    first_line: str | None = None
    timeout = httpx.Timeout(None, connect=_CONNECT_SECONDS, read=STALL_SECONDS)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("POST", url, json=payload, headers=headers) as response,
        ):
            if response.status_code != 200:
                _raise_for_status(
                    response.status_code, (await response.aread()).decode(errors="replace"), payload
                )
            async for line in response.aiter_lines():
                if first_line is None and line.strip():
                    first_line = line
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise InferenceError(
                        None,
                        f"the server's stream has a line that is not a JSON chunk ({data[:80]!r}): "
                        "malformed server-sent events",
                        payload=payload,
                    ) from None
                chunks += 1
                if "error" in chunk:
                    raise InferenceError(
                        None, f"the server ended the stream with an error: {data}", payload=payload
                    )
                usage = chunk.get("usage") or usage
                if live is not None and usage is not None:
                    live.completion_tokens = int(usage.get("completion_tokens", 0))
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or ""
                    reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
                    finish_reason = choice.get("finish_reason") or finish_reason
                    if not piece:
                        continue
                    text.append(piece)
                    chunks_with_text += 1
                    if watch is not None and finish_reason is None and watch.feed(piece) is not None:
                        finish_reason = EARLY_STOP
                if finish_reason == EARLY_STOP:
                    break  # leaving the block closes the connection: vLLM aborts the request
    except httpx.ReadTimeout:
        raise InferenceError(
            None,
            f"the server sent nothing for {STALL_SECONDS:g} s in the middle of a streamed answer "
            f"(after {chunks} chunks): a stalled stream",
            payload=payload,
        ) from None
    except httpx.TransportError as error:
        raise ConnectionError(f"streamed request to {url} failed: {error!r}") from error
    if finish_reason is None and chunks == 0:
        raise InferenceError(
            None,
            "the server answered HTTP 200 without a stream of chat chunks (server-sent events); "
            f"it sent {first_line[:80]!r}"
            if first_line
            else "the server answered HTTP 200 with nothing",
            payload=payload,
        )
    if finish_reason is None:
        raise ConnectionError(
            f"streamed request to {url}: the server closed the stream after {chunks} chunks, before "
            "the answer was finished"
        )
    if usage is None:  # a server without per-chunk usage: each chunk carries about one token
        usage = {"prompt_tokens": 0, "completion_tokens": chunks_with_text}
    return {
        "choices": [
            {
                "message": {"content": "".join(text), "reasoning": "".join(reasoning)},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def _raise_for_status(status: int, body: str, payload: dict[str, Any]) -> None:
    if status == 400:
        raise InferenceError(None, f"Got BadRequestError from server: {body}", payload=payload)
    if status == 500:
        raise ServerError(f"Got InternalServerError from server: {body}")
    raise InferenceError(None, f"Error http status {status}: {body[:200]}", payload=payload)
