"""One chat request of a rollout, counted in its tally, streamed through a prefix watch that
can stop it early."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from datatrove.pipeline.inference.types import InferenceError, InferenceResult

from selflengthen.builders.tally import (
    Tally,
)
from selflengthen.engine.options import SamplingOptions
from selflengthen.engine.streaming import EARLY_STOP, LIVE_USAGE, REQUEST_WATCH, LiveUsage
from selflengthen.errors import SelflengthenError
from selflengthen.filters.prefix import PrefixWatch


async def chat(
    generate: Callable[[dict], Any],
    messages: list[dict[str, str]],
    sampling: SamplingOptions,
    seed_parts: tuple[object, ...],
    tally: Tally,
    continue_final: bool = False,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    watch: Callable[[], PrefixWatch] | None = None,
    min_tokens: int = 0,
) -> InferenceResult | None:
    """One chat request through the model's own chat template. With `continue_final`, the last
    (assistant) message is continued rather than answered; `stop` ends the generation at any
    of those strings; `min_tokens` keeps the model from ending before that many tokens (vLLM's
    `min_tokens`). Returns `None` (and counts why) when the server rejects the request, e.g.
    a prompt longer than the context.

    With `sampling.early_stop`, the answer streams through a fresh `watch()`; a request it
    cancels comes back with the finish reason `early_stop: <reason>`, the reason the finished
    text would have been rejected for (see `response_problem`). A cancelled answer taken from
    datatrove's request cache (a resumed step) is given its reason again by a fresh watch.
    """
    payload: dict[str, Any] = {"messages": messages, **sampling.payload(*seed_parts, max_tokens=max_tokens)}
    if stop:
        payload["stop"] = stop
    if min_tokens:
        payload["min_tokens"] = min_tokens
    if continue_final:
        payload |= {"add_generation_prompt": False, "continue_final_message": True}
    tally.requests += 1
    context = REQUEST_WATCH.set(watch if sampling.early_stop else None)
    live = LiveUsage()
    usage_context = LIVE_USAGE.set(live)
    try:
        with tally.in_flight():
            result: InferenceResult = await generate(payload)
    except InferenceError as error:
        tally.refused(str(error.error))
        return None
    except asyncio.CancelledError:  # a speculative attempt no longer needed: count what it wrote
        tally.completion_tokens += live.completion_tokens
        raise
    finally:
        REQUEST_WATCH.reset(context)
        LIVE_USAGE.reset(usage_context)
    tally.prompt_tokens += int(result.usage.get("prompt_tokens", 0))
    completion_tokens = int(result.usage.get("completion_tokens", 0))
    tally.completion_tokens += completion_tokens
    if result.finish_reason == EARLY_STOP:
        reason = watch().feed(result.text) if watch is not None else None
        if reason is None:
            raise SelflengthenError(
                f"a request was stopped early, but its text passes its checks: {result.text!r}"
            )
        tally.stop_early(reason, completion_tokens)
        return dataclasses.replace(result, finish_reason=f"{EARLY_STOP}: {reason}")
    return result


def stopped_early(result: InferenceResult) -> str | None:
    """The reason `chat` cancelled this request for, or None if it was not cancelled."""
    prefix = f"{EARLY_STOP}: "
    return result.finish_reason.removeprefix(prefix) if result.finish_reason.startswith(prefix) else None
