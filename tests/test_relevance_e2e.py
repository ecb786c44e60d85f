"""The relevance ratio on the real engine: scored on the reference run's server while it
generates (tests/e2e_runs.py), three hand-written texts on unrelated topics
(tests/data/relevance_pairs.jsonl), each with its own instruction, with another's, and with its
second half replaced by another text's."""

import math

import pytest

from selflengthen.relevance import SEGMENTS
from tests.e2e_runs import ReferenceRun

pytestmark = pytest.mark.e2e


def _mean(ratios: list[float]) -> float:
    return math.exp(sum(map(math.log, ratios)) / len(ratios))


def test_each_text_is_nearer_its_own_instruction_than_another(reference_run: ReferenceRun) -> None:
    scores = reference_run.relevance
    assert all(len(ratios) == SEGMENTS for case in scores.values() for ratios in case)
    assert all(ratio > 0 for case in scores.values() for ratios in case for ratio in ratios)
    for own, mismatched in zip(scores["own"], scores["mismatched"], strict=True):
        assert _mean(own) < 1 and _mean(own) < _mean(mismatched), scores


def test_a_second_half_on_another_topic_raises_the_last_segments_ratio(reference_run: ReferenceRun) -> None:
    scores = reference_run.relevance
    for own, drifted in zip(scores["own"], scores["drifted"], strict=True):
        assert drifted[-1] > own[-1], scores
