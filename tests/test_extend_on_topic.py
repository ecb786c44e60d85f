"""`extend.on_topic`: a row the Extender grew enough is scored for relevance to its instruction
and dropped (`off_topic`) when a segment after the first falls off it; without the setting
nothing is scored. The rollout's requests are answered by hand-made generations and the scores
are given, so that only the step's decision is under test (the scoring itself is tested on the
real engine: test_relevance_e2e, and the steps run's extend in test_generation_e2e)."""

import asyncio
from typing import Any

import pytest
from datatrove.data import Document
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.extend import ExtendSettings, extend_rollout, on_topic_summary
from selflengthen.config import ExtendSection, section_from_flags
from selflengthen.engine.options import SamplingOptions
from selflengthen.errors import SelflengthenError
from tests.test_extend_force_growth import CONTINUATION, STAGE_ONE, TEXT


class GivenScores:
    """A scorer (as `RelevanceScorer` is used: an async context, `score`) returning `ratios`."""

    def __init__(self, ratios: list[float]) -> None:
        self.ratios, self.scored = ratios, []

    async def __aenter__(self) -> "GivenScores":
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def score(self, instruction: str, text: str) -> list[float]:
        self.scored.append((instruction, text))
        return self.ratios


async def generate(payload: dict) -> InferenceResult:
    text = CONTINUATION if payload.get("continue_final_message") else STAGE_ONE
    return InferenceResult(text=text, finish_reason="stop", usage={"completion_tokens": 1})


def extend(on_topic: float | None, scorer: GivenScores | None) -> dict[str, Any]:
    settings = ExtendSettings(
        ExtendSection(rounds=1, max_retries=1, on_topic=on_topic),
        SamplingOptions(max_tokens=500, early_stop=False),
    )
    document = Document(text=TEXT, id="row", metadata={"instruction": "Write.", "language": "en"})
    relevance = (lambda: scorer) if scorer is not None else None
    return asyncio.run(extend_rollout(document, generate, settings=settings, relevance=relevance))


def test_a_grown_row_whose_later_segment_leaves_the_instruction_is_dropped() -> None:
    scorer = GivenScores([0.8, 0.9, 1.2])
    result = extend(0.96, scorer)
    assert result["failure"] == "off_topic" and result["extended_response"]  # kept to be looked at
    assert result["relevance"] == [0.8, 0.9, 1.2]
    assert result["off_topic"] == "off_topic: segment 3 of 3: ratio 1.200 > 0.96"
    ((instruction, text),) = scorer.scored
    assert instruction == "Write." and text.startswith(STAGE_ONE.split("\n\n")[0])


def test_a_grown_row_that_stays_on_topic_is_kept_with_its_scores() -> None:
    result = extend(0.96, GivenScores([1.3, 0.9, 0.95]))  # the first segment is not judged
    assert result["failure"] is None and result["extended_response"]
    assert result["relevance"] == [1.3, 0.9, 0.95] and result["off_topic"] is None


def test_without_on_topic_nothing_is_scored() -> None:
    result = extend(None, None)
    assert result["failure"] is None and result["extended_response"]
    assert "relevance" not in result and "off_topic" not in result


def test_a_row_that_did_not_grow_enough_is_not_scored() -> None:
    scorer = GivenScores([0.8, 0.9, 0.9])
    settings = ExtendSettings(
        ExtendSection(rounds=1, max_retries=1, min_ratio=50, on_topic=0.96), SamplingOptions(early_stop=False)
    )
    document = Document(text=TEXT, id="row", metadata={"instruction": "Write.", "language": "en"})
    result = asyncio.run(extend_rollout(document, generate, settings=settings, relevance=lambda: scorer))
    assert result["failure"] == "too_little_growth" and scorer.scored == []


def test_on_topic_must_be_positive() -> None:
    with pytest.raises(SelflengthenError, match="--on-topic: Input should be greater than 0"):
        section_from_flags(ExtendSection, {"on_topic": 0})


def test_the_steps_stats_summarise_what_was_scored() -> None:
    failures = {"no_round_succeeded": 2, "too_little_growth": 1, "off_topic": 2}
    summary = on_topic_summary(0.96, [0.91, 1.02, 0.97, 0.88], failures)
    assert summary == {
        "max_ratio": 0.96,
        "scored": 4,
        "off_topic": 2,
        "last_segment_ratio": {"median": 0.94, "max": 1.02},
    }
    assert on_topic_summary(0.96, [], {"off_topic": 0})["last_segment_ratio"] == {"median": None, "max": None}
