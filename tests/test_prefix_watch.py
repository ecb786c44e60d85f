"""The incremental checks behind early stop, against the batch filters on the same texts: a
prefix is stopped only if the finished text is rejected, and the first stopping point is the
first prefix that contains the failure, however the text is cut into chunks."""

from __future__ import annotations

import asyncio
import itertools

from datatrove.data import Document
from datatrove.pipeline.inference.types import InferenceResult
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.builders.checks import DEFAULT_CHECKS as CHECKS
from selflengthen.builders.checks import ResponseChecks
from selflengthen.builders.extend import combine, split_parts
from selflengthen.builders.extend_watch import CombinedWatch, StageOneWatch, certainly_kept
from selflengthen.builders.requests import chat
from selflengthen.builders.tally import Tally
from selflengthen.engine.options import SamplingOptions
from selflengthen.engine.streaming import EARLY_STOP
from selflengthen.filters import CharacterLoopFilter, EndingFilter, MetaCommentFilter, RepetitionFilter
from selflengthen.filters.prefix import HeadMetaWatch, LoopWatch, PrefixWatch, RepeatWatch, watch_of
from selflengthen.filters.registry import parse_entries
from selflengthen.text import is_cjk, is_content, tokens
from tests.strategies import loop_texts, repetitive_texts, small_vocabulary, texts


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _first_stop(watch: PrefixWatch, chunks: list[str]) -> int | None:
    """The index of the chunk at which `watch` first reports a failure, or None."""
    for index, chunk in enumerate(chunks):
        if watch.feed(chunk) is not None:
            return index
    return None


def _complete_words(prefix: str) -> list[str]:
    """The content words of `prefix` that no continuation can change: all but a trailing run
    of non-CJK characters that is not followed by whitespace."""
    words = tokens(prefix)
    if words and not prefix[-1].isspace() and not is_cjk(words[-1][0]):
        words.pop()
    return [word for word in words if is_content(word)]


def _has_repeat(words: list[str], n: int) -> bool:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def _rejected(check: object, text: str) -> bool:
    return check.filter(Document(text=text, id="t")) is not True  # type: ignore[attr-defined]


#: The filter behind each reason the response watches give.
_FILTER_OF = {
    "🔁 Repetition: repeated_ngram": RepetitionFilter(),
    "🌀 Character loop: character_loop": CharacterLoopFilter(),
    "🗨 Meta-comment: meta_comment": MetaCommentFilter(),
}


@given(
    repetitive_texts(),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    st.sampled_from([None, 3, 10]),
)
def test_repeat_watch_stops_exactly_at_the_first_certain_repeat(
    text: str, cuts: list[int], ngram: int | None
) -> None:
    chunks = _chunks(text, cuts)
    stop = _first_stop(RepeatWatch(ngram), chunks)
    n = ngram or 13
    prefixes = ["".join(chunks[: index + 1]) for index in range(len(chunks))]
    expected = next((i for i, prefix in enumerate(prefixes) if _has_repeat(_complete_words(prefix), n)), None)
    assert stop == expected
    if stop is not None:  # then every rule the finished text could be judged by rejects it
        for size in {ngram} if ngram else {None, 10, 13}:
            assert _rejected(RepetitionFilter(ngram=size), text)


@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_repeat_watch_only_stops_texts_the_filter_rejects(text: str, cuts: list[int]) -> None:
    if _first_stop(RepeatWatch(), _chunks(text, cuts)) is not None:
        assert _rejected(RepetitionFilter(), text)


def test_repeat_watch_waits_for_the_last_word_and_for_thirteen_words() -> None:
    loop = "the cat sat on the mat and looked at the dog for a while. " * 2
    watch = RepeatWatch()
    words = loop.split()
    # 14 words per sentence; the 13th of the second one is "a", which may still become "another".
    prefix = " ".join(words[: 14 + 13])
    assert prefix.endswith(" for a")
    assert _first_stop(RepeatWatch(), [prefix]) is None
    assert _first_stop(watch, [prefix, " "]) == 1
    assert watch.found is not None and len(watch.found) == 13
    # Ten repeated words fail the English rule, but the final text could still turn Chinese.
    ten = " ".join(words[:10])
    assert _first_stop(RepeatWatch(), [f"{ten} and {ten} "]) is None
    assert _rejected(RepetitionFilter(), f"{ten} and {ten}")


def test_repeat_watch_cjk_characters_are_complete_words() -> None:
    line = "中文字符的重复检测需要十三个字"  # 15 characters
    assert _first_stop(RepeatWatch(), [line, line]) == 1
    assert _first_stop(RepeatWatch(), [line + line[:12]]) is None
    assert _first_stop(RepeatWatch(), [line + line[:13]]) == 0


@given(loop_texts, st.lists(st.integers(0, 500), max_size=10), st.integers(1, 12), st.integers(1, 4))
def test_loop_watch_stops_exactly_at_the_first_prefix_with_a_loop(
    text: str, cuts: list[int], max_chars: int, max_period: int
) -> None:
    check = CharacterLoopFilter(max_chars=max(max_chars, max_period), max_period=max_period)
    chunks = _chunks(text, cuts)
    stop = _first_stop(LoopWatch.for_filter(check), chunks)
    prefixes = ["".join(chunks[: index + 1]) for index in range(len(chunks))]
    assert stop == next((i for i, prefix in enumerate(prefixes) if check.find(prefix) is not None), None)
    if stop is not None:
        assert _rejected(check, text)


def test_loop_watch_stops_an_endless_token_loop_within_its_limit() -> None:
    watch = LoopWatch.for_filter(CharacterLoopFilter())
    assert watch.feed("A story about the sea. " + "z" * 80) is None
    assert watch.feed("z") == "character_loop"
    assert LoopWatch.for_filter(CharacterLoopFilter()).feed("\n" * 300 + "=" * 80 + " ok") is None


def test_stage_one_watch_stops_once_a_loop_is_in_the_kept_part() -> None:
    watch = StageOneWatch(CHECKS)
    assert watch.feed("Tea\n\n" + "💐" * 100) is None  # the loop's paragraph may not be kept
    assert watch.feed("\n\nMore.\n\nAnd more.\n\n") == "🌀 Character loop: character_loop"


def _meta_reference(prefix: str, check: MetaCommentFilter) -> bool:
    """Whether one of the first `head_lines` non-empty lines that are complete in `prefix`
    (followed by a line break) holds a meta word."""
    lines = prefix.splitlines(keepends=True)
    complete = [line for line in lines if line != line.rstrip("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")]
    non_empty = [line for line in complete if line.strip()][: check.head_lines]
    return any(check.meta_word(line) is not None for line in non_empty)


meta_lines = st.lists(
    st.sampled_from(
        [
            "Here is the revised version:",
            "A story",
            "",
            "  ",
            "The response",
            "回答如下",
            "tea",
            "versions\r",
            "x\u2028y",
        ]
    ),
    max_size=8,
)


@given(
    meta_lines,
    st.sampled_from(["\n", "\r\n", "\r", "\u2029"]),
    st.lists(st.integers(0, 500), max_size=8),
    st.integers(0, 3),
)
def test_head_meta_watch_stops_exactly_when_a_head_line_is_complete(
    lines: list[str], newline: str, cuts: list[int], head_lines: int
) -> None:
    check = MetaCommentFilter(head_lines=head_lines)
    text = newline.join(lines)
    chunks = _chunks(text, cuts)
    stop = _first_stop(HeadMetaWatch.for_filter(check), chunks)
    prefixes = ["".join(chunks[: index + 1]) for index in range(len(chunks))]
    assert stop == next((i for i, prefix in enumerate(prefixes) if _meta_reference(prefix, check)), None)
    if stop is not None:
        assert _rejected(check, text)


@given(st.one_of(texts, repetitive_texts(), loop_texts), st.lists(st.integers(0, 10_000), max_size=10))
def test_response_watch_stops_only_responses_the_filters_reject(text: str, cuts: list[int]) -> None:
    reason = None
    watch = CHECKS.watch()
    for chunk in _chunks(text, cuts):
        if (reason := watch.feed(chunk)) is not None:
            break
    if reason is not None:
        assert _rejected(_FILTER_OF[reason], text)
        assert CHECKS.watch().feed(text) == reason  # a cached answer gets the same reason back


@given(
    st.one_of(repetitive_texts(), loop_texts),
    st.one_of(repetitive_texts(), loop_texts),
    st.sampled_from(["\n", "\n\n"]),
    st.lists(st.integers(0, 500), max_size=6),
)
def test_combined_watch_judges_the_text_stage_two_is_judged_on(
    start: str, continuation: str, separator: str, cuts: list[int]
) -> None:
    start = start.strip()
    combined = CombinedWatch(CHECKS, start, separator)
    whole = combine(start, separator, continuation)
    reason = combined.reason_before
    for chunk in _chunks(continuation, cuts):
        reason = reason or combined.feed(chunk)
    if reason is not None:
        assert _rejected(_FILTER_OF[reason], whole)
    # Fed at once (a cached answer), the same text gives the same verdict.
    again = CombinedWatch(CHECKS, start, separator)
    assert (again.reason_before or again.feed(continuation)) == reason


def test_a_cached_early_stopped_answer_gets_its_reason_and_counts_again() -> None:
    """A resumed step takes a cancelled answer from datatrove's request cache: `chat` gives it
    the reason again from the text alone, and counts it as stopped early."""
    looped = "one two three four five six seven eight nine ten eleven twelve thirteen " * 2
    sent: list[dict] = []

    async def cached(payload: dict) -> InferenceResult:
        sent.append(payload)
        return InferenceResult(text=looped, finish_reason=EARLY_STOP, usage={"completion_tokens": 27})

    tally = Tally()
    result = asyncio.run(
        chat(
            cached,
            [{"role": "user", "content": "q"}],
            SamplingOptions(),
            ("t",),
            tally,
            watch=CHECKS.watch,
        )
    )
    assert result is not None and CHECKS.problem(result) == "🔁 Repetition: repeated_ngram"
    assert sent[0]["stream"] is True
    assert tally.as_dict()["stopped_early"] == {
        "🔁 Repetition: repeated_ngram": {"requests": 1, "completion_tokens": 27}
    }


def _start_of(stage_one: str) -> str:
    """The start stage 2 continues from, as `extend_once` takes it from stage 1's text."""
    written, separator = split_parts(stage_one)
    return separator.join(written[: max(1, round(len(written) * 2 / 3))])


structured_texts = st.lists(
    st.tuples(
        st.sampled_from([*small_vocabulary, "a b c d e f g"]),
        st.sampled_from([" ", "\n", "\n\n", "\n \n", "\r\n", "\n\n\n"]),
    ),
    max_size=40,
).map(lambda pairs: "".join(word + gap for word, gap in pairs))


@given(structured_texts, st.integers(0, 10_000))
def test_certainly_kept_is_always_the_beginning_of_the_start(text: str, cut: int) -> None:
    prefix = text[: cut % (len(text) + 1)]
    certain = tokens(certainly_kept(prefix))
    if text.strip():
        assert tokens(_start_of(text))[: len(certain)] == certain
    else:
        assert certain == []


@given(
    st.one_of(
        repetitive_texts(), loop_texts, st.sampled_from(["Here is the revised version:", "A\nrevised", "Tea"])
    ),
    structured_texts,
    st.lists(st.integers(0, 10_000), max_size=10),
    repetitive_texts(),
)
def test_stage_one_watch_stops_only_when_stage_two_cannot_pass(
    head: str, tail: str, cuts: list[int], continuation: str
) -> None:
    text = head + "\n" + tail
    stop = _first_stop(StageOneWatch(CHECKS), _chunks(text, cuts))
    if stop is not None:
        start = _start_of(text)
        for separator in ("\n", "\n\n"):
            combined = combine(start, separator, continuation)
            assert any(_rejected(check, combined) for check in _FILTER_OF.values())
        assert StageOneWatch(CHECKS).feed(text) is not None  # a cached answer gets the same verdict


def test_stage_one_watch_stops_a_looping_list_once_the_loop_is_kept() -> None:
    item = "- The history of tea in China goes back thousands of years and more.\n"
    watch = StageOneWatch(CHECKS)
    assert watch.feed("Tea\n\n" + item) is None
    assert watch.feed(item) is None  # the repeat is there, but of 3 lines only 2 are sure to be kept
    assert watch.feed(item) is not None  # of 4 lines, the first 3 are: they hold the repeat


def test_stage_one_watch_stops_at_a_meta_comment_in_its_first_line() -> None:
    watch = StageOneWatch(CHECKS)
    assert watch.feed("Here is the expanded version of the") is None  # the line may still go on
    assert watch.feed(" text:\n") == "🗨 Meta-comment: meta_comment"
    assert StageOneWatch(CHECKS).feed("Tea\nwas first drunk in China.\n\nIts revised history\n") is None


@given(repetitive_texts(), st.integers(0, 10_000), st.sampled_from([None, 3, 10]))
def test_at_word_end_is_what_whitespace_would_make_certain(text: str, cut: int, ngram: int | None) -> None:
    prefix = text[: cut % (len(text) + 1)]
    watch, spaced = RepeatWatch(ngram), RepeatWatch(ngram)
    watch.feed(prefix)
    assert watch.at_word_end() == spaced.feed(prefix + " ")
    rest = text[len(prefix) :]  # the watch itself is unchanged by the question
    assert watch.feed(rest) == RepeatWatch(ngram).feed(text)


def test_only_filters_that_offer_a_watch_stop_a_request() -> None:
    """A filter with `prefix_watch` (ours: repetition, character loop, meta-comment) stops a
    request; one without (datatrove's FineWebQualityFilter, ending) judges the finished text."""
    looped = "one two three four five six seven eight nine ten eleven twelve thirteen " * 2
    fineweb = "datatrove.pipeline.filters:FineWebQualityFilter"
    assert watch_of(RepetitionFilter()) is not None and watch_of(EndingFilter()) is None
    with_repetition = ResponseChecks(parse_entries(["ending", fineweb, "repetition"]))
    assert with_repetition.watch().feed(looped) == "🔁 Repetition: repeated_ngram"
    without = ResponseChecks(parse_entries(["ending", {fineweb: {"line_punct_thr": 0.5}}]))
    watch = without.watch()
    assert all(watch.feed(chunk) is None for chunk in [looped] * 20 + ["z" * 500])
    finished = InferenceResult(text="A line\nwithout a mark\nat all.", finish_reason="stop", usage={})
    assert without.problem(finished) == "🍷 FineWeb Quality: line_punct_ratio"
    assert [entry["filter"] for entry in without.describe()] == ["ending", fineweb]
    assert without.describe()[1]["line_punct_thr"] == 0.5
