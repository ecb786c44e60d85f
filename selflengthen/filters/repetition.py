"""Drop texts that repeat themselves: some run of n consecutive words occurs twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from selflengthen.filters.base import MISSING_TEXT, TextFilter, drop
from selflengthen.text import TokenSpans, content_mask, token_spans

if TYPE_CHECKING:
    from selflengthen.filters.prefix import PrefixWatch

#: The paper's settings: 13-grams of characters for Chinese, 10-grams of words otherwise.
CJK_NGRAM = 13
DEFAULT_NGRAM = 10
DEFAULT_BATCH_SIZE = 64
#: Texts are hashed together in groups of about this many characters (arrays stay in cache).
CHARACTERS_PER_PASS = 100_000
_REASON_PREVIEW_CHARS = 120

_NGRAM_BASE = 0x9E3779B97F4A7C15  # odd, so its inverse modulo 2**64 exists
_WORD_MULTIPLIERS = [np.uint32(k) for k in (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)]
_TEXT_SALT = np.uint32(0x165667B1)
_HIGH_HALF = np.uint64(32)


class _PowerTable:
    """base**k and base**-k modulo 2**64 for k < length, grown by doubling and reused."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.inverse = pow(base, -1, 2**64)
        self.powers = np.ones(1, dtype=np.uint64)
        self.inverse_powers = np.ones(1, dtype=np.uint64)

    def upto(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        if length > len(self.powers):
            size = max(length, 2 * len(self.powers), 4096)
            self.powers = self._geometric(self.base, size)
            self.inverse_powers = self._geometric(self.inverse, size)
        return self.powers[:length], self.inverse_powers[:length]

    @staticmethod
    def _geometric(ratio: int, size: int) -> np.ndarray:
        steps = np.full(size, ratio, dtype=np.uint64)
        steps[0] = 1
        return np.cumprod(steps, dtype=np.uint64)  # wraps modulo 2**64, as intended


_NGRAM_POWERS = _PowerTable(_NGRAM_BASE)


def _word_hashes(spans: TokenSpans) -> np.ndarray:
    """A 32-bit hash per word (as uint64) from its length and its first, middle and last
    characters: three gathers per word, no pass over every character.

    Equal words always get equal hashes. Different words may collide (e.g. words that share
    length and those three characters), which only costs an exact comparison later.
    """
    points, starts, ends = spans.codepoints, spans.starts, spans.ends
    hashes = points.take(starts) * _WORD_MULTIPLIERS[0]  # NumPy promotes to uint32
    hashes ^= points.take((starts + ends) >> 1) * _WORD_MULTIPLIERS[1]
    hashes ^= points.take(ends - 1) * _WORD_MULTIPLIERS[2]
    hashes ^= (ends - starts).astype(np.uint32) * _WORD_MULTIPLIERS[3]
    return hashes.astype(np.uint64)


def _ngram_hashes(word_hashes: np.ndarray, ngram: int) -> np.ndarray:
    """Polynomial hash modulo 2**64 of every run of `ngram` consecutive word hashes."""
    powers, inverse_powers = _NGRAM_POWERS.upto(len(word_hashes))
    prefix = np.zeros(len(word_hashes) + 1, dtype=np.uint64)
    np.cumsum(word_hashes * powers, out=prefix[1:])
    firsts = len(word_hashes) - ngram + 1
    return (prefix[ngram : ngram + firsts] - prefix[:firsts]) * inverse_powers[:firsts]


def find_repeated_ngrams(texts: Sequence[str], ngram: int | None = None) -> list[str | None]:
    """For each text, the first n-gram (in reading order of its second occurrence) that occurs
    twice in it, as it is written in the text, or `None` when no n-gram repeats.

    All texts are segmented and hashed together in a few array passes (they are joined by a
    newline, so no word crosses two texts), which is what makes batches fast. `ngram=None`
    chooses 13 for a text whose words are mostly CJK characters and 10 otherwise.
    """
    found: list[str | None] = []
    group: list[str] = []
    group_characters = 0
    for text in texts:
        if group and group_characters + len(text) > CHARACTERS_PER_PASS:
            found += _find_in_group(group, ngram)
            group, group_characters = [], 0
        group.append(text)
        group_characters += len(text) + 1
    return found + (_find_in_group(group, ngram) if group else [])


def _find_in_group(texts: list[str], ngram: int | None) -> list[str | None]:
    joined = "\n".join(texts)
    spans = token_spans(joined)
    text_starts = np.cumsum([0] + [len(text) + 1 for text in texts[:-1]])
    first_word, end_word = _word_ranges(spans, text_starts)
    if ngram is not None:
        ngram_per_text = np.full(len(texts), ngram)
    elif spans.is_cjk.any():  # the script mix counts every word, punctuation included
        cjk_before = np.concatenate(([0], np.cumsum(spans.is_cjk)))
        cjk_per_text = cjk_before[end_word] - cjk_before[first_word]
        ngram_per_text = np.where(2 * cjk_per_text > end_word - first_word, CJK_NGRAM, DEFAULT_NGRAM)
    else:
        ngram_per_text = np.full(len(texts), DEFAULT_NGRAM)
    content = content_mask(spans)
    if not content.all():  # n-grams are formed from content words only
        spans = spans._replace(
            starts=spans.starts[content], ends=spans.ends[content], is_cjk=spans.is_cjk[content]
        )
        first_word, end_word = _word_ranges(spans, text_starts)
    text_of_word = np.repeat(np.arange(len(texts), dtype=np.uint32), end_word - first_word)
    word_hashes = _word_hashes(spans)
    found: list[str | None] = [None] * len(texts)
    for size in np.unique(ngram_per_text).tolist():
        if len(word_hashes) <= size:
            continue
        windows = len(word_hashes) - size + 1
        valid = np.ones(windows, dtype=bool)
        for text, (first, end) in enumerate(zip(first_word.tolist(), end_word.tolist(), strict=True)):
            # Windows that start in this text but end past it, or texts checked with another size.
            valid[first if ngram_per_text[text] != size else max(first, end - size + 1) : end] = False
        # Keep the high 32 bits (sorting is twice as fast; a rare false match is ruled out by
        # _confirm) and salt them with the text, so equal n-grams of two texts differ.
        keys = (_ngram_hashes(word_hashes, size) >> _HIGH_HALF).astype(np.uint32)
        owner = text_of_word[:windows]
        if len(texts) > 1:
            keys += owner * _TEXT_SALT
        keys = keys[valid]
        ordered = np.sort(keys)
        same = ordered[1:] == ordered[:-1]
        if same.any():
            candidates = np.flatnonzero(valid)[np.isin(keys, ordered[1:][same])]
            _confirm(joined, spans, candidates.tolist(), owner[candidates].tolist(), size, found)
    return found


def _word_ranges(spans: TokenSpans, text_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first word of each text and the word after its last one."""
    first_word = np.searchsorted(spans.starts, text_starts)
    return first_word, np.append(first_word[1:], len(spans.starts))


def _confirm(
    joined: str,
    spans: TokenSpans,
    candidates: list[int],
    owners: list[int],
    size: int,
    found: list[str | None],
) -> None:
    """Compare candidate n-grams word by word (in reading order) and record each text's first
    true repeat in `found`."""
    starts, ends = spans.starts, spans.ends
    seen: set[tuple[int, tuple[str, ...]]] = set()
    for first, owner in zip(candidates, owners, strict=True):
        if found[owner] is not None:
            continue
        key = (owner, tuple(joined[starts[k] : ends[k]] for k in range(first, first + size)))
        if key in seen:
            found[owner] = joined[starts[first] : ends[first + size - 1]]
        seen.add(key)


def find_repeated_ngram(text: str, ngram: int | None = None) -> str | None:
    """The first n-gram of `text` that occurs twice (see `find_repeated_ngrams`), or `None`."""
    return find_repeated_ngrams([text], ngram)[0]


class RepetitionFilter(TextFilter):
    """Drops a text in which some run of `ngram` consecutive words occurs more than once
    (reason `repeated_ngram`; the first repeat in reading order is in the document's metadata under
    `filter_detail`).

    Words are those of `selflengthen.text.content_tokens`: each CJK character, each run of other
    non-whitespace characters, so English is checked word by word (the reference implementation
    merged whole ASCII runs into one token and barely checked English); words of punctuation or
    symbols alone (`|`, `---`, `.`, `。`, `＝＝＝`) are skipped, so Markdown tables, dot leaders
    and separator lines do not count as repetition.

    N-grams are hashed with NumPy, a batch of documents at a time, and sorted; equal hashes are
    then confirmed by comparing the words themselves, so a decision never rests on a hash.

    Args:
        ngram: the run length. `None` (default) picks 13 when most words of the text (all of
            them, punctuation included) are CJK characters and 10 otherwise, the paper's
            settings for Chinese and English.
        text_key: `None` for `doc.text`, else the metadata field holding the text.
        batch_size: documents checked together by `filter_batch` (datatrove batches for us).
    """

    name = "🔁 Repetition"

    def __init__(
        self,
        ngram: int | None = None,
        text_key: str | None = None,
        exclusion_writer: DiskWriter | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if ngram is not None and (isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1):
            raise ValueError(f"ngram must be a positive integer or None, got {ngram!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(text_key=text_key, exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.ngram = ngram

    def prefix_watch(self) -> PrefixWatch:
        """`RepeatWatch`: this filter's rejection found while the text is still being written."""
        from selflengthen.filters.prefix import RepeatWatch  # that module imports this one

        return RepeatWatch.for_filter(self)

    def filter_text(self, text: str, doc: Document) -> bool | tuple[bool, str]:
        return self._verdict(doc, find_repeated_ngram(text, self.ngram))

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        texts = [self.text_of(doc) for doc in batch]
        present = [text for text in texts if text is not None]
        repeats = iter(find_repeated_ngrams(present, self.ngram))
        return [
            (False, MISSING_TEXT) if text is None else self._verdict(doc, next(repeats))
            for doc, text in zip(batch, texts, strict=True)
        ]

    @staticmethod
    def _verdict(doc: Document, repeat: str | None) -> bool | tuple[bool, str]:
        if repeat is None:
            return True
        preview = " ".join(repeat.split())
        if len(preview) > _REASON_PREVIEW_CHARS:
            preview = preview[: _REASON_PREVIEW_CHARS - 1] + "…"
        return drop(doc, "repeated_ngram", preview)
