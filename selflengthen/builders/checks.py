"""The checks every generated answer must pass (`response_problem`) and their prefix watch
(`ResponseWatch`), which stops a request once its rejection is certain."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.requests import stopped_early
from selflengthen.filters import CharacterLoopFilter, EndingFilter, MetaCommentFilter, RepetitionFilter
from selflengthen.filters.prefix import HeadMetaWatch, LoopWatch, RepeatWatch

#: The filters every answer must pass (`response_problem`), with their settings.
ENDING, REPETITION, META_COMMENT = EndingFilter(), RepetitionFilter(batch_size=1), MetaCommentFilter()
CHARACTER_LOOP = CharacterLoopFilter()
_RESPONSE_FILTERS = (ENDING, REPETITION, CHARACTER_LOOP, META_COMMENT)


def rejection(check: BaseFilter, kind: str) -> str:
    """How `response_problem` words a rejection by `check` (e.g. `🔁 Repetition: repeated_ngram`)."""
    return f"{check.name}: {kind}"


class ResponseWatch:
    """The prefix checks of `response_problem`'s filters (a `PrefixWatch`): a repeated n-gram,
    a character loop and a meta-comment in the first lines; reasons as `response_problem` words
    them. The ending filter and the finish reason can only be judged at the end."""

    def __init__(self) -> None:
        self._watches = (
            (REPETITION, RepeatWatch.for_filter(REPETITION)),
            (CHARACTER_LOOP, LoopWatch.for_filter(CHARACTER_LOOP)),
            (META_COMMENT, HeadMetaWatch.for_filter(META_COMMENT)),
        )

    def feed(self, chunk: str) -> str | None:
        for check, watch in self._watches:
            if (kind := watch.feed(chunk)) is not None:
                return rejection(check, kind)
        return None


def response_problem(result: InferenceResult) -> str | None:
    """Why a response is not a finished, clean response (None if it is): stopped early because
    a filter's rejection was certain, cut off by max_tokens, or rejected by the ending,
    repetition, character-loop or meta-comment filter."""
    if (reason := stopped_early(result)) is not None:
        return reason
    if result.finish_reason != "stop":
        return f"finish_reason: {result.finish_reason}"
    document = Document(text=result.text, id="")
    for check in _RESPONSE_FILTERS:
        verdict = check.filter(document)
        if verdict is not True:
            return rejection(check, verdict[1])
    return None
