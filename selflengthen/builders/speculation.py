"""Attempts started ahead of need while the server has idle slots, and chosen afterwards in order.

An extension round makes its attempts on the same text, and `generate` retries an answer, each
attempt with its own seed and none depending on another: which one is kept is decided by a rule
that reads the results in attempt order (`grow`, the retry loop). So later attempts can run
beside the first, and the rule be applied to their results in the same order, with the same
outcome: the kept rows do not change. A step's last rows otherwise run one request at a time
while the server could batch many (on a CPU, 16 requests in flight give ~8x the tokens/s of
one).

Speculation costs tokens when an earlier attempt turns out to be enough, so it only fills idle
capacity: a later attempt is started only while fewer requests are in flight than
`SPECULATE_BELOW` × the step's concurrency (the tail of a step, a small step), at most
`MAX_AHEAD` attempts beyond the one the rule waits for; attempts the rule no longer needs are
cancelled (a streamed request's connection is closed, and vLLM frees its slot). A saturated
server (many rows, a GPU at scale) speculates nothing. Their requests and tokens are counted
apart (`Tally.speculative_*`), so that the rest of the stats are the same with speculation on or
off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from selflengthen.builders.tally import Tally

T = TypeVar("T")
#: Speculate only while fewer requests than this share of the concurrency are in flight.
SPECULATE_BELOW = 0.5
#: At most this many attempts run beyond the one whose result the rule waits for.
MAX_AHEAD = 2
#: How often a waiting rule looks again for idle capacity to start a later attempt in.
_RECHECK_SECONDS = 0.5


class RequestMeter:
    """The requests a step has in flight, against the `limit` it sends at once (its
    concurrency): what speculation reads to find idle capacity, and what the progress bar
    shows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def idle(self) -> bool:
        """Whether the server is far enough from full for a speculative attempt."""
        return self.in_flight < self.limit * SPECULATE_BELOW


async def attempts_in_order(
    run: Callable[[int, Tally], Awaitable[T]],
    count: int,
    tally: Tally,
    speculate: bool,
) -> AsyncIterator[tuple[int, T]]:
    """Yield `(attempt, run(attempt, its tally))` for attempts 1..`count`, in that order; the
    caller stops iterating once it has what it needs (use `contextlib.aclosing`).

    Without `speculate` (or without a meter on `tally`), each attempt starts when the caller
    asks for its result, as a plain loop would. With it, later attempts start early while the
    step's server is idle (`RequestMeter.idle`). Each attempt counts into a tally of its own:
    the attempts the caller receives are merged into `tally`, the others (started but not
    needed, cancelled when the caller stops) into its speculative counts.
    """
    meter = tally.meter if speculate else None
    tasks: dict[int, asyncio.Task[T]] = {}
    tallies: dict[int, Tally] = {}

    def start(attempt: int) -> None:
        tallies[attempt] = tally.child()
        tasks[attempt] = asyncio.ensure_future(run(attempt, tallies[attempt]))

    try:
        for attempt in range(1, count + 1):
            if attempt not in tasks:
                start(attempt)
            # The first look comes one interval after the attempt started, never at once: when a
            # step starts, its rows begin one after another, and a row that looked at once would
            # find the server idle only because the others had not sent their requests yet.
            await asyncio.wait({tasks[attempt]}, timeout=_RECHECK_SECONDS if meter is not None else None)
            while not tasks[attempt].done():
                ahead = max(tasks) - attempt
                if meter is not None and max(tasks) < count and ahead < MAX_AHEAD and meter.idle():
                    start(max(tasks) + 1)
                    tally.speculated_attempts += 1
                    await asyncio.sleep(0)  # its first request is counted in flight before the next look
                    continue
                await asyncio.wait({tasks[attempt]}, timeout=_RECHECK_SECONDS if meter is not None else None)
            result = tasks[attempt].result()
            tally.merge(tallies.pop(attempt))
            del tasks[attempt]
            yield attempt, result
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)  # what they raise is not needed
        for attempt in tasks:
            tally.add_unneeded(tallies[attempt])


def mean_in_flight(request_seconds: float, spans: list[tuple[float, float]]) -> float:
    """The mean number of requests in flight while a step ran: the seconds its requests were
    open, summed, over the time at least one of its rollouts was running (the union of their
    `(start, end)` spans: a resumed step's pause between invocations does not count)."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return round(request_seconds / busy, 2) if busy > 0 else 0.0
