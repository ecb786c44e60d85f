"""Incremental checks of a text that is still being written: the earliest point at which a
filter's rejection of the *finished* text is already certain.

A streamed generation is fed to a watch chunk by chunk (`feed`); the watch returns the reason
the finished text will be rejected as soon as that is certain, and `None` until then. Each
chunk is looked at once (no re-scan of the text), so the cost stays far below the decoding it
saves. Only certain failures count: whatever follows the prefix, the filter rejects the text.

- `RepeatWatch` (for `RepetitionFilter`): an n-gram that occurs twice in the prefix occurs twice
  in every continuation of it, once its last word is complete (followed by whitespace, or one
  CJK character; any other word at the very end, a run of letters, a piece of Thai or an emoji,
  may still grow). With `ngram=None` the filter
  picks n from the finished text's script mix (13 for mostly CJK, 10 otherwise), which a prefix
  does not settle, so the watch looks for repeated 13-grams: a repeated 13-gram contains a
  repeated 10-gram, so the text fails under either n.
- `LoopWatch` (for `CharacterLoopFilter`): a stretch that already repeats a unit over more
  than `max_chars` characters stays in the text whatever follows.
- `HeadMetaWatch` (for `MetaCommentFilter`): the first `head_lines` non-empty lines are always
  checked, and a line is final once a line break follows it. The tail lines cannot be known
  before the end.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from selflengthen.filters.character_loop import CharacterLoopFilter
from selflengthen.filters.meta_comment import MetaCommentFilter
from selflengthen.filters.repetition import CJK_NGRAM, DEFAULT_NGRAM, RepetitionFilter
from selflengthen.text import is_cjk, is_content, word_bounds

#: The line boundaries of `str.splitlines`.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class PrefixWatch(Protocol):
    def feed(self, chunk: str) -> str | None:
        """Take the next piece of the text; the rejection reason once it is certain, else None."""
        ...


@runtime_checkable
class WatchableFilter(Protocol):
    """A filter that can tell from a prefix that it will reject the finished text: it offers a
    fresh watch per text. A filter without `prefix_watch` only judges finished texts."""

    def prefix_watch(self) -> PrefixWatch: ...


def watch_of(check: object) -> PrefixWatch | None:
    """A fresh watch of `check` if it offers one, else None (never stopped early)."""
    return check.prefix_watch() if isinstance(check, WatchableFilter) else None


class RepeatWatch:
    """Finds the first repeated n-gram of complete words as the text arrives (see the module
    docstring); reason `repeated_ngram`, the key `RepetitionFilter` gives."""

    reason = "repeated_ngram"

    def __init__(self, ngram: int | None = None) -> None:
        self.ngram = ngram if ngram is not None else max(CJK_NGRAM, DEFAULT_NGRAM)
        self._window: deque[str] = deque(maxlen=self.ngram)
        self._seen: set[tuple[str, ...]] = set()
        self._pending = ""  # a run of non-CJK characters at the end that may still grow
        self.found: tuple[str, ...] | None = None

    @classmethod
    def for_filter(cls, check: RepetitionFilter) -> RepeatWatch:
        return cls(check.ngram)

    def feed(self, chunk: str) -> str | None:
        if self.found is not None:
            return self.reason
        text = self._pending + chunk
        self._pending = ""
        bounds = word_bounds(text)
        words = [text[start:end] for start, end in bounds]
        if words and not text[-1].isspace() and not (len(words[-1]) == 1 and is_cjk(words[-1])):
            # A word that is not one CJK character at the very end (a run of letters, a piece of
            # Thai, an emoji), with what follows it: the next chunk may continue it.
            self._pending = text[bounds[-1][0] :]
            words.pop()
        for gram in _grams(words, self._window):
            if gram in self._seen:
                self.found = gram
                return self.reason
            self._seen.add(gram)
        return None

    def at_word_end(self) -> str | None:
        """The reason if the text so far is rejected once whitespace follows it (its last word
        then complete); the watch itself is left as it is."""
        if self.found is not None:
            return self.reason
        window, added = deque(self._window, maxlen=self.ngram), set()
        for gram in _grams([self._pending[start:end] for start, end in word_bounds(self._pending)], window):
            if gram in self._seen or gram in added:
                return self.reason
            added.add(gram)
        return None


def _grams(words: list[str], window: deque[str]) -> Iterator[tuple[str, ...]]:
    """Each full n-gram of `window` as the content words of `words` enter it (the repetition
    filter skips punctuation-only words)."""
    for word in words:
        if is_content(word):
            window.append(word)
            if len(window) == window.maxlen:
                yield tuple(window)


def at_word_end(watch: PrefixWatch) -> str | None:
    """A watch's verdict on its text followed by whitespace (`RepeatWatch.at_word_end`), for
    watches that know one; None for the others."""
    check = getattr(watch, "at_word_end", None)
    return check() if callable(check) else None


class LoopWatch:
    """Finds the first stretch that `CharacterLoopFilter` rejects, character by character as
    the text arrives: per period, the length of the current run of characters equal to the one
    that period before; reason `character_loop`."""

    reason = "character_loop"

    def __init__(self, check: CharacterLoopFilter) -> None:
        self.max_chars, self.max_period = check.max_chars, check.max_period
        self._runs = [0] * (self.max_period + 1)  # index p: the run for period p (0 unused)
        self._tail = ""  # the last max_period characters
        self._position = 0
        self._last_visible = -1  # position of the last character that is not whitespace
        self.failed = False

    @classmethod
    def for_filter(cls, check: CharacterLoopFilter) -> LoopWatch:
        return cls(check)

    def feed(self, chunk: str) -> str | None:
        if self.failed:
            return self.reason
        runs, tail, longest = self._runs, self._tail, self.max_chars
        for char in chunk:
            if not char.isspace():
                self._last_visible = self._position
            for period in range(1, min(len(tail), self.max_period) + 1):
                if tail[-period] == char:
                    runs[period] += 1
                    # The stretch is the run plus the period it is measured against.
                    if runs[period] + period > longest and self._last_visible > self._position - longest - 1:
                        self.failed = True
                        return self.reason
                else:
                    runs[period] = 0
            tail = (tail + char)[-self.max_period :]
            self._position += 1
        self._tail = tail
        return None


class HeadMetaWatch:
    """Checks each of the first `head_lines` non-empty lines with the filter's own pattern once
    the line is complete; reason `meta_comment`."""

    reason = "meta_comment"

    def __init__(self, check: MetaCommentFilter) -> None:
        self._check = check
        self._lines_left = check.head_lines
        self._line = ""
        self.failed = False

    @classmethod
    def for_filter(cls, check: MetaCommentFilter) -> HeadMetaWatch:
        return cls(check)

    def feed(self, chunk: str) -> str | None:
        if self.failed:
            return self.reason
        if self._lines_left <= 0:
            return None
        pieces = _LINE_BREAK.split(self._line + chunk)
        self._line = pieces.pop()
        for line in pieces:
            if not line.strip():
                continue
            if self._check.meta_word(line) is not None:
                self.failed = True
                return self.reason
            self._lines_left -= 1
            if self._lines_left == 0:
                self._line = ""
                return None
        return None
