"""`force_growth`: stage 2 of an extension is held (vLLM `min_tokens`) until it could make the
text `min_ratio` × longer; without it, no request carries `min_tokens`."""

import asyncio

import pytest
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.extend import ExtendSettings, extend_once, stage_two_min_tokens
from selflengthen.builders.tally import Tally
from selflengthen.config import ExtendSection
from selflengthen.engine.options import SamplingOptions

#: 6 paragraphs of 10 words: 60 words.
TEXT = "\n\n".join(" ".join(f"w{p}x{i}" for i in range(10)) + "." for p in range(6))
#: Stage 1's answer: 3 paragraphs of 12 words, of which stage 2 continues the first 2 (24 words).
STAGE_ONE = "\n\n".join(" ".join(f"s{p}x{i}" for i in range(12)) + "." for p in range(3))
CONTINUATION = "\n\n".join(" ".join(f"c{p}x{i}" for i in range(15)) + "." for p in range(4))


def settings(force_growth: bool, max_tokens: int = 500, min_ratio: float = 1.2) -> ExtendSettings:
    sampling = SamplingOptions(max_tokens=max_tokens, early_stop=False)
    section = ExtendSection(rounds=1, max_retries=1, min_ratio=min_ratio, force_growth=force_growth)
    return ExtendSettings(section, sampling)


def extend_with(force_growth: bool) -> tuple[str | None, list[dict]]:
    payloads: list[dict] = []

    async def generate(payload: dict) -> InferenceResult:
        payloads.append(payload)
        text = CONTINUATION if payload.get("continue_final_message") else STAGE_ONE
        return InferenceResult(text=text, finish_reason="stop", usage={"completion_tokens": 1})

    result = asyncio.run(extend_once(generate, "Write.", TEXT, "en", settings(force_growth), ("t",), Tally()))
    return result, payloads


def test_forced_stage_two_asks_for_the_missing_words_as_tokens() -> None:
    result, (stage_one, stage_two) = extend_with(force_growth=True)
    assert "min_tokens" not in stage_one
    # 1.2 x 60 = 72 words wanted, 24 already in the start: 48 tokens before it may end.
    assert stage_two["min_tokens"] == 48
    assert stage_two["continue_final_message"] is True
    assert result is not None and len(result.split()) == 24 + 60


def test_without_force_growth_no_request_carries_min_tokens() -> None:
    _, payloads = extend_with(force_growth=False)
    assert len(payloads) == 2
    assert all("min_tokens" not in payload for payload in payloads)


@pytest.mark.parametrize(
    ("start_words", "max_tokens", "expected"),
    [(24, 500, 48), (80, 500, 0), (0, 50, 50), (71, 500, 1), (72, 500, 0)],
)
def test_min_tokens_is_the_missing_words_at_most_max_tokens(
    start_words: int, max_tokens: int, expected: int
) -> None:
    start = " ".join(["word"] * start_words)
    assert stage_two_min_tokens(TEXT, start, settings(True, max_tokens)) == expected
    assert stage_two_min_tokens(TEXT, start, settings(False, max_tokens)) == 0
