"""The checks every generated answer must pass: the configured filters (`filters:`, by default
ending, repetition, character loop and meta-comment, in that order), the finish reason, and a
prefix watch that stops a request once one of them is certain to reject it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.requests import stopped_early
from selflengthen.filters.base import DROP_DETAIL
from selflengthen.filters.prefix import PrefixWatch, at_word_end, watch_of
from selflengthen.filters.registry import FilterEntry, default_entries

#: What a rejected attempt that was stopped early records as what the filter found: the place is
#: the end of its (partial) text, where the rejection became certain.
STOPPED_EARLY_DETAIL = "stopped early: the rejection was certain at the end of this text"


def rejection(check: BaseFilter, kind: str) -> str:
    """How a rejection by `check` is counted (e.g. `🔁 Repetition: repeated_ngram`)."""
    return f"{getattr(check, 'name', type(check).__name__)}: {kind}"


class ResponseWatch:
    """The watches of the filters that offer one (a `PrefixWatch`), in the filters' order;
    reasons worded as `ResponseChecks.problem` words them. A filter without a watch, and the
    finish reason, are judged at the end only."""

    def __init__(self, filters: Sequence[BaseFilter]) -> None:
        self._watches = [(check, watch) for check in filters if (watch := watch_of(check)) is not None]

    def feed(self, chunk: str) -> str | None:
        for check, watch in self._watches:
            if (kind := watch.feed(chunk)) is not None:
                return rejection(check, kind)
        return None

    def at_word_end(self) -> str | None:
        """The first rejection that is certain once whitespace follows the text so far."""
        for check, watch in self._watches:
            if (kind := at_word_end(watch)) is not None:
                return rejection(check, kind)
        return None


class ResponseChecks:
    """The filters of `entries`, built once, applied in order to every finished answer."""

    def __init__(self, entries: Sequence[FilterEntry]) -> None:
        self.entries = tuple(entries)
        self.filters = tuple(entry.build() for entry in self.entries)

    def watch(self) -> PrefixWatch:
        """A fresh watch over the filters that offer one (for `chat`'s early stop)."""
        return ResponseWatch(self.filters)

    def problem(self, result: InferenceResult) -> str | None:
        """Why a response is not a finished, clean response (None if it is): stopped early
        because a filter's rejection was certain, cut off by max_tokens, or rejected by a filter
        (the first in order)."""
        found = self.verdict(result)
        return None if found is None else found[0]

    def verdict(self, result: InferenceResult) -> tuple[str, str | None] | None:
        """`problem`'s reason with what the filter recorded finding (`DROP_DETAIL`, e.g. the
        repeated n-gram), or None when the response is clean."""
        if (reason := stopped_early(result)) is not None:
            return reason, STOPPED_EARLY_DETAIL
        if result.finish_reason != "stop":
            return f"finish_reason: {result.finish_reason}", None
        document = Document(text=result.text, id="")
        for check in self.filters:
            keep, kind = get_filter_result(check.filter(document))
            if not keep:
                return rejection(check, kind or "dropped"), document.metadata.get(DROP_DETAIL)
        return None

    def describe(self) -> list[dict[str, Any]]:
        """The filters with their arguments, as stats.json and the dataset card list them."""
        return [entry.describe() for entry in self.entries]


#: The checks of a step whose config says nothing else.
DEFAULT_CHECKS = ResponseChecks(default_entries())
