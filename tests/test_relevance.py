import math

import pytest
from datatrove.data import Document
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.errors import SelflengthenError
from selflengthen.filters import DROP_DETAIL
from selflengthen.filters.on_topic import RELEVANCE_KEY, OnTopicFilter
from selflengthen.relevance import (
    MAX_SEGMENT_WORDS,
    MIN_SEGMENT_WORDS,
    relevance_ratio,
    score_pairs,
    segment_logprobs,
    segments,
)
from selflengthen.text import count_words, tokens
from tests.fake_endpoint import fake_endpoint
from tests.strategies import texts


def test_segments_are_thirds_of_the_words_cut_verbatim() -> None:
    text = " ".join(f"w{index}" for index in range(90)) + "\n\nEnd."
    first, second, third = segments(text)
    assert (count_words(first), count_words(second), count_words(third)) == (
        30,
        31,
        30,
    )  # cut at round(k * 91 / 3)
    assert first.startswith("w0 ") and first.endswith("w29")
    assert second.startswith("w30") and third.endswith("End.")
    assert text.index(second) > text.index(first)


def test_short_texts_get_fewer_segments() -> None:
    assert segments("") == [] and segments("  \n ") == []
    assert segments("one two three") == ["one two three"]  # fewer words than one segment's minimum
    two = " ".join(["word"] * (2 * MIN_SEGMENT_WORDS + 5))
    assert len(segments(two)) == 2


def test_a_long_segment_keeps_its_first_words() -> None:
    text = " ".join(f"w{index}" for index in range(3 * MAX_SEGMENT_WORDS + 300))
    pieces = segments(text)
    assert [count_words(piece) for piece in pieces] == [MAX_SEGMENT_WORDS] * 3
    assert pieces[1].startswith(f"w{MAX_SEGMENT_WORDS + 100} ")


@given(texts)
def test_segments_keep_the_words_in_order(text: str) -> None:
    """Re-read, the segments give back the text's words (texts of up to 300 characters: no
    segment reaches `MAX_SEGMENT_WORDS`)."""
    pieces = segments(text)
    assert len(pieces) <= 3
    assert [word for piece in pieces for word in tokens(piece)] == tokens(text)


def test_relevance_ratio_is_the_perplexity_ratio() -> None:
    with_instruction, without = [-1.0, -2.0, -3.0], [-2.0, -3.0, -4.0]
    # PPL(s | I) = exp(2), PPL(s | nothing) = exp(3): the instruction helps, ratio exp(-1)
    assert relevance_ratio(with_instruction, without) == pytest.approx(math.exp(-1))
    assert relevance_ratio(without, with_instruction) == pytest.approx(math.e)
    assert relevance_ratio(without, without) == 1.0
    with pytest.raises(ValueError, match="same, non-zero"):
        relevance_ratio([-1.0], [-1.0, -2.0])
    with pytest.raises(ValueError, match="same, non-zero"):
        relevance_ratio([], [])


def _entry(token: int, logprob: float) -> dict:
    return {str(token): {"logprob": logprob, "rank": 1, "decoded_token": "x"}}


def test_segment_logprobs_are_read_from_the_end_of_the_prompt() -> None:
    prompt = [None, _entry(1, -0.5), _entry(2, -0.1), _entry(7, -1.0), _entry(8, -2.0), _entry(9, -3.0)]
    assert segment_logprobs(prompt, [7, 8, 9]) == [-1.0, -2.0, -3.0]
    # The segment's first token was joined to what precedes it in the prompt: left out.
    assert segment_logprobs(prompt, [6, 8, 9]) == [-2.0, -3.0]
    assert segment_logprobs(prompt, [5]) == []
    assert segment_logprobs([None], [5]) == []


@given(
    st.lists(st.floats(-20, 0), min_size=1, max_size=30), st.lists(st.floats(-20, 0), min_size=1, max_size=30)
)
def test_ratio_below_one_exactly_when_the_instruction_helps(first: list[float], second: list[float]) -> None:
    size = min(len(first), len(second))
    first, second = first[:size], second[:size]
    ratio = relevance_ratio(first, second)
    helps = math.fsum(first) / size - math.fsum(second) / size
    assert ratio > 0
    if helps > 1e-9:
        assert ratio < 1
    elif helps < -1e-9:
        assert ratio > 1


def _scored(ratios: object) -> Document:
    return Document(text="an answer", id="1", metadata={RELEVANCE_KEY: ratios})


def test_on_topic_filter_judges_the_later_segments() -> None:
    check = OnTopicFilter(max_ratio=0.95)
    assert check.filter(_scored([0.7, 0.8, 0.95])) is True
    assert check.filter(_scored([1.3, 0.8, 0.9])) is True  # the first segment is not judged
    off = _scored([0.7, 0.8, 1.01])
    assert check.filter(off) == (False, "off_topic")
    assert off.metadata[DROP_DETAIL] == "segment 3 of 3: ratio 1.010 > 0.95"
    assert check.filter(_scored([0.7, 0.99, 0.8])) == (False, "off_topic")
    assert check.filter(_scored([0.7])) is True  # a one-segment answer has no later segment
    for missing in (None, "0.7", [0.7, "x"]):
        assert check.filter(_scored(missing)) == (False, "missing_relevance")
    with pytest.raises(ValueError, match="max_ratio must be > 0"):
        OnTopicFilter(max_ratio=0)


def test_on_topic_filter_counts_its_drops_in_a_pipeline() -> None:
    check = OnTopicFilter(max_ratio=0.95)
    documents = [_scored([0.7, 0.8]), _scored([0.7, 1.2]), _scored(None)]
    kept = list(check.run(iter(documents)))
    assert [document.metadata[RELEVANCE_KEY] for document in kept] == [[0.7, 0.8]]
    assert check.stats["dropped_off_topic"].total == 1
    assert check.stats["dropped_missing_relevance"].total == 1


def test_a_server_without_prompt_log_probabilities_is_one_line_naming_it() -> None:
    """An OpenAI-compatible server that is not vLLM (here one that answers every request with a
    chat completion): the scorer says what is missing instead of failing on a missing key."""
    text = " ".join(f"word{index}" for index in range(90)) + "."
    with fake_endpoint() as endpoint:
        base_url = endpoint.removesuffix("/v1")
        with pytest.raises(SelflengthenError, match="relevance needs a vLLM server") as error:
            score_pairs(base_url, "m", [("Describe a harbour.", text)])
    assert "\n" not in str(error.value) and base_url in str(error.value)
