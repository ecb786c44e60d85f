"""Speculative attempts: the rule that picks among a row's attempts gives the same result
whether later attempts ran ahead or not, however their requests finish; attempts no longer
needed are cancelled and counted apart; a cancelled request still counts what it wrote."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from unittest.mock import patch

from datatrove.pipeline.inference.types import InferenceResult
from hypothesis import given, settings
from hypothesis import strategies as st

from selflengthen.builders import speculation
from selflengthen.builders.extend import ExtendSettings, grow
from selflengthen.builders.requests import chat
from selflengthen.builders.speculation import MAX_AHEAD, RequestMeter, attempts_in_order
from selflengthen.builders.tally import Tally
from selflengthen.config import ExtendSection
from selflengthen.engine.options import SamplingOptions
from selflengthen.engine.streaming import LIVE_USAGE


def words(n: int) -> str:
    return " ".join(["word"] * n)


#: Per (round, attempt): the words of its result (None: it failed) and how long it takes.
outcomes = st.dictionaries(
    st.tuples(st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.none() | st.integers(50, 200), st.floats(0, 0.004)),
    max_size=9,
)


def grow_with(script: dict, speculate: bool) -> tuple:
    async def extend(text: str, round_index: int, attempt: int, tally: Tally) -> str | None:
        length, delay = script.get((round_index, attempt), (None, 0.0))
        tally.requests += 1
        tally.completion_tokens += 7
        await asyncio.sleep(delay)
        return None if length is None else words(length)

    tally = Tally(meter=RequestMeter(limit=64))
    sampling = SamplingOptions(speculate=speculate)
    # Looks for idle capacity every millisecond (not every 0.5 s), so that attempts of a few
    # milliseconds run ahead too.
    with patch.object(speculation, "_RECHECK_SECONDS", 0.001):
        growth = asyncio.run(
            grow(words(100), ExtendSettings(ExtendSection(rounds=3, max_retries=3), sampling), extend, tally)
        )
    return growth, tally


@settings(max_examples=60, deadline=None)
@given(outcomes)
def test_the_round_rule_keeps_the_same_text_with_attempts_finishing_in_any_order(script: dict) -> None:
    plain, plain_tally = grow_with(script, speculate=False)
    ahead, ahead_tally = grow_with(script, speculate=True)
    assert (ahead.text, ahead.words, ahead.rounds, ahead.attempts, ahead.kept) == (
        plain.text,
        plain.words,
        plain.rounds,
        plain.attempts,
        plain.kept,
    )
    # The attempts the rule used are counted as without speculation; the rest apart.
    assert (ahead_tally.requests, ahead_tally.completion_tokens) == (
        plain_tally.requests,
        plain_tally.completion_tokens,
    )
    assert ahead_tally.rejections == plain_tally.rejections
    assert plain_tally.speculative_requests == 0
    assert ahead_tally.speculative_tokens == 7 * ahead_tally.speculative_requests


def test_attempts_not_needed_are_cancelled_and_counted_apart() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def attempt(index: int, tally: Tally) -> int:
        started.append(index)
        tally.requests += 1
        tally.completion_tokens += 10
        try:
            await asyncio.sleep(0.01 if index == 1 else 5)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return index

    async def first_only(tally: Tally) -> list[int]:
        seen = []
        async with aclosing(attempts_in_order(attempt, 5, tally, speculate=True)) as attempts:
            async for index, _ in attempts:
                seen.append(index)
                break
        return seen

    tally = Tally(meter=RequestMeter(limit=64))
    with patch.object(speculation, "_RECHECK_SECONDS", 0.001):
        assert asyncio.run(first_only(tally)) == [1]
    assert started == [1, *range(2, 2 + MAX_AHEAD)]  # no more than MAX_AHEAD beyond the one awaited
    assert cancelled == list(range(2, 2 + MAX_AHEAD))
    assert (tally.requests, tally.completion_tokens) == (1, 10)
    assert (tally.speculative_requests, tally.speculative_tokens) == (MAX_AHEAD, 10 * MAX_AHEAD)
    assert tally.speculated_attempts == MAX_AHEAD


def test_a_busy_server_or_speculate_off_runs_one_attempt_at_a_time() -> None:
    running: list[int] = []
    most: list[int] = [0]

    async def attempt(index: int, tally: Tally) -> None:
        running.append(index)
        most[0] = max(most[0], len(running))
        await asyncio.sleep(0.002)
        running.remove(index)

    async def all_of(tally: Tally, speculate: bool) -> None:
        async with aclosing(attempts_in_order(attempt, 4, tally, speculate)) as attempts:
            async for _ in attempts:
                pass

    busy = RequestMeter(limit=4)
    busy.in_flight = 2  # half the concurrency: no longer idle
    for tally, speculate in (
        (Tally(meter=busy), True),
        (Tally(meter=RequestMeter(64)), False),
        (Tally(), True),
    ):
        most[0] = 0
        asyncio.run(all_of(tally, speculate))
        assert most[0] == 1 and tally.speculative_requests == 0


def test_rows_that_start_together_do_not_speculate_before_the_others_have_sent() -> None:
    """When a step starts, its rows begin one after another: the first must not find the
    server idle only because the others have not sent their first requests yet."""
    meter = RequestMeter(limit=16)  # idle below 8 in flight

    async def attempt(index: int, tally: Tally) -> int:
        with tally.meter.request():  # type: ignore[union-attr]
            await asyncio.sleep(0.7)
        return index

    async def row(tally: Tally) -> None:
        async with aclosing(attempts_in_order(attempt, 3, tally, speculate=True)) as attempts:
            async for _ in attempts:
                break

    async def step(rows: int) -> list[Tally]:
        tallies = [Tally(meter=meter) for _ in range(rows)]
        await asyncio.gather(*(row(tally) for tally in tallies))
        return tallies

    assert sum(tally.speculated_attempts for tally in asyncio.run(step(10))) == 0
    # a step's tail of 2 rows leaves the server idle: each runs its next attempts ahead
    assert [tally.speculated_attempts for tally in asyncio.run(step(2))] == [MAX_AHEAD, MAX_AHEAD]


def test_a_cancelled_request_counts_the_tokens_it_had_streamed() -> None:
    async def generate(payload: dict) -> InferenceResult:
        live = LIVE_USAGE.get()
        assert live is not None
        live.completion_tokens = 42  # as the stream reports them
        await asyncio.sleep(5)
        raise AssertionError("not cancelled")

    async def cancelled_chat(tally: Tally) -> None:
        task = asyncio.ensure_future(
            chat(generate, [{"role": "user", "content": "x"}], SamplingOptions(), ("s",), tally)
        )
        await asyncio.sleep(0.01)
        assert tally.meter is not None and tally.meter.in_flight == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    tally = Tally(meter=RequestMeter(limit=8))
    asyncio.run(cancelled_chat(tally))
    assert (tally.requests, tally.completion_tokens) == (1, 42)
    assert tally.meter is not None and tally.meter.in_flight == 0
    assert tally.request_seconds > 0
