"""The extension round rule (`grow`): which attempt a round keeps and when it stops retrying."""

import asyncio
import copy
import pickle
from collections.abc import Callable

from selflengthen.builders.extend import ExtendSettings, Extension, grow
from selflengthen.builders.tally import Tally
from selflengthen.config import ExtendSection


def words(n: int) -> str:
    return " ".join(["word"] * n)


def scripted(lengths: dict[tuple[int, int], int | None]) -> tuple[Callable, list[tuple[int, int, int]]]:
    """An extend callable answering (round, attempt) with a text of the given word count (None:
    the attempt failed), recording (round, attempt, words of the text it was asked to extend)."""
    calls: list[tuple[int, int, int]] = []

    async def extend(text: str, round_index: int, attempt: int, _: Tally) -> str | None:
        calls.append((round_index, attempt, len(text.split())))
        n = lengths.get((round_index, attempt))
        return None if n is None else words(n)

    return extend, calls


def run(lengths: dict[tuple[int, int], int | None], rounds: int = 2, retries: int = 3):
    extend, calls = scripted(lengths)
    tally = Tally()
    settings = ExtendSettings(ExtendSection(rounds=rounds, max_retries=retries, min_ratio=1.2))
    return asyncio.run(grow(words(100), settings, extend, tally)), calls, tally


def test_a_keepable_first_attempt_ends_the_round() -> None:
    growth, calls, _ = run({(0, 1): 130, (1, 1): 160})
    assert (growth.words, growth.rounds, growth.attempts) == (160, 2, 2)
    assert calls == [(0, 1, 100), (1, 1, 130)]


def test_a_gain_below_the_growth_filter_retries_the_same_text_and_keeps_the_longest() -> None:
    # 110 words is longer but leaves the row at 1.1x: the round retries from the same 100 words,
    # keeps 115 over a shorter 105, and round 2 extends the 115-word text.
    growth, calls, tally = run({(0, 1): 110, (0, 2): 105, (0, 3): 115, (1, 1): 140})
    assert calls == [(0, 1, 100), (0, 2, 100), (0, 3, 100), (1, 1, 115)]
    assert (growth.words, growth.rounds, growth.attempts) == (140, 2, 4)
    assert tally.rejections["not_longer"] == 1


def test_a_retry_that_makes_the_row_keepable_stops_the_round() -> None:
    growth, calls, _ = run({(0, 1): 110, (0, 2): 125, (1, 1): None, (1, 2): 90, (1, 3): 120})
    assert calls[:2] == [(0, 1, 100), (0, 2, 100)]
    assert [c for c in calls if c[0] == 1] == [(1, 1, 125), (1, 2, 125), (1, 3, 125)]
    assert (growth.words, growth.rounds) == (125, 1)


def test_rounds_end_at_the_first_round_that_grew_nothing() -> None:
    growth, calls, tally = run({(0, 1): 90, (0, 2): None, (0, 3): 100}, rounds=3)
    assert (growth.words, growth.rounds, growth.attempts) == (100, 0, 3)
    assert growth.text == words(100)
    assert tally.rejections["not_longer"] == 2
    assert {c[0] for c in calls} == {0}


def test_an_extension_keeps_where_stage_two_began_through_copies() -> None:
    """datatrove deep-copies a rollout's result when it saves it (a str subclass that cannot be
    rebuilt made the runner drop every kept row of a step)."""
    extension = Extension("first part. continued", continued_at=12)
    for copied in (copy.deepcopy(extension), pickle.loads(pickle.dumps(extension))):
        assert copied == "first part. continued" and copied.continued_at == 12
