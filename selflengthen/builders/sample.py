"""Length-weighted sampling: keep longer responses more often than shorter ones."""

from __future__ import annotations

import numpy as np
import polars as pl

from selflengthen.text import count_words

_NUMBER = r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$"


def row_lengths(frame: pl.DataFrame, length_column: str) -> pl.Series:
    """Each row's length: the numeric column as it is, or the words of a text column."""
    if length_column not in frame.columns:
        raise ValueError(f"length_column {length_column!r} is not a column (columns: {frame.columns})")
    column = frame.get_column(length_column)
    if column.dtype == pl.String:
        present = column.drop_nulls()
        if present.len() and present.str.contains(_NUMBER).all():
            raise ValueError(
                f"length_column {length_column!r} holds numbers written as text (e.g. {present[0]!r}), "
                "which would count as 1-word texts; cast the column to integers"
            )
        column = column.map_elements(count_words, return_dtype=pl.Int64, skip_nulls=True)
    elif not column.dtype.is_numeric():
        raise ValueError(
            f"length_column {length_column!r} must hold word counts or texts, not {column.dtype}"
        )
    if column.null_count() or (column.dtype.is_float() and column.is_nan().any()):
        raise ValueError(f"length_column {length_column!r} has missing lengths")
    invalid = (column < 0) | column.is_infinite() if column.dtype.is_float() else column < 0
    if invalid.any():
        bad = column.filter(invalid)[0]
        raise ValueError(f"length_column {length_column!r} has a length that is not a word count ({bad})")
    return column


def length_weighted_sample(frame: pl.DataFrame, length_column: str, seed: int) -> pl.DataFrame:
    """The rows of `frame` kept by Self-Lengthen's length-weighted sampling, in their order.

    With n rows, each row gets r = 1 − rank/n, where rank is the number of rows whose length is
    at most its own (its 1-based position in ascending order, the last position among equal
    lengths, so rows of equal length share one keep rule). A row is kept when a seeded uniform
    draw u in (0, 1] exceeds 2·r³: the longest rows (r = 0) are always kept, all of them when
    several share the longest length, about the shortest 21% (2·r³ ≥ 1) never are, and about
    59.5% of rows survive when lengths differ.

    Args:
        frame: the rows to sample.
        length_column: a numeric column of word counts (≥ 0), or a text column whose words are
            counted with `selflengthen.text.count_words` (never characters). A text column of
            numbers ("300") is refused: it would count as 1-word texts.
        seed: the seed of the draws; the same seed and frame give the same rows.

    Vectorised: O(n + range) for integer word counts (counting), O(n log n) otherwise (a sort).
    """
    if frame.height == 0:
        return frame
    return frame.filter(pl.Series(kept_by_length(row_lengths(frame, length_column), seed)))


def kept_by_length(lengths: pl.Series, seed: int) -> np.ndarray:
    """Which rows `length_weighted_sample` keeps, from their lengths alone (a boolean per row):
    a table too large for memory is sampled from its lengths, then read again for the rows."""
    n = len(lengths)
    r = 1.0 - _max_ranks(lengths) / n
    draws = 1.0 - np.random.default_rng(seed).random(n)
    return draws > 2.0 * r * r * r


def _max_ranks(lengths: pl.Series) -> np.ndarray:
    """1-based ranks in ascending order, equal values sharing the last position.

    Word counts are integers over a modest range, so counting (a histogram and its running sum)
    ranks them in O(n + range), several times faster than sorting; other columns are ranked by
    polars (a sort, O(n log n)).
    """
    if lengths.dtype.is_integer():
        values = lengths.to_numpy()
        low, high = int(values.min()), int(values.max())
        if high - low <= 4 * len(values) + 1024:
            offsets = (values - low).astype(np.intp)
            counts = np.bincount(offsets)
            at_most = np.cumsum(counts)  # how many values are at most each value
            return at_most[offsets].astype(np.float64)
    return lengths.rank(method="max").to_numpy().astype(np.float64)
