"""Apply datatrove filters to an in-memory table without writing a datatrove pipeline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import polars as pl
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from tqdm.auto import tqdm

from selflengthen.filters.base import DROP_DETAIL

if TYPE_CHECKING:
    import datasets

#: `datasets` is imported only when a Dataset is given (it takes half a second to import, and
#: every `selflengthen` command imports this module).
Table = TypeVar("Table", pl.DataFrame, "datasets.Dataset")

_BATCH_ROWS = 1024


@dataclass(frozen=True)
class FilterReport(Generic[Table]):
    """What `apply_filters` returns.

    Attributes:
        kept: the rows every filter kept, same type, columns and order as the input.
        drop_reasons: one row per (filter, reason) with its `count`, most frequent first.
        dropped_reasons: for each input row, `None` if kept, else `"<filter>: <reason>"`, followed
            by `": <detail>"` when the filter recorded what it found (`DROP_DETAIL`), e.g.
            `"🔁 Repetition: repeated_ngram: <the n-gram>"`.
    """

    kept: Table
    drop_reasons: pl.DataFrame
    dropped_reasons: list[str | None]


def _is_dataset(data: object) -> bool:
    import datasets

    return isinstance(data, datasets.Dataset)


def _rows(data: pl.DataFrame | datasets.Dataset) -> Iterator[dict[str, Any]]:
    if isinstance(data, pl.DataFrame):
        yield from data.iter_rows(named=True)
    else:
        for batch in data.iter(batch_size=_BATCH_ROWS):
            columns = list(batch)
            yield from (
                dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)
            )


def apply_filters(
    data: Table,
    filters: Sequence[BaseFilter],
    text_column: str = "text",
    progress: bool = False,
) -> FilterReport[Table]:
    """Run `filters` in order over the rows of `data`, as a datatrove pipeline would: a row
    dropped by one filter is not seen by the next.

    Each row becomes a datatrove `Document` with `text=row[text_column]` and every column in
    `metadata`, so filters with a `text_key` (or `GrowthFilter`'s source fields) read the other
    columns. Batched filters get batches of their own `batch_size`.

    Args:
        data: a polars `DataFrame` or a `datasets.Dataset`.
        filters: datatrove filters (selflengthen's or any other `BaseFilter`).
        text_column: the column with each row's main text.
        progress: show a progress bar over the rows.

    Raises:
        ValueError: `text_column` is not a column of `data`.
        TypeError: `data` is neither a polars DataFrame nor a datasets Dataset.
    """
    if not isinstance(data, pl.DataFrame) and not _is_dataset(data):
        raise TypeError(f"data must be a polars DataFrame or a datasets.Dataset, got {type(data).__name__}")
    columns = data.columns if isinstance(data, pl.DataFrame) else data.column_names
    if text_column not in columns:
        raise ValueError(f"text_column {text_column!r} is not a column of the data (columns: {columns})")
    total = len(data)
    reasons: list[str | None] = [None] * total
    counts: Counter[tuple[str, str]] = Counter()
    alive = list(range(total))
    documents = [
        Document(text=row[text_column], id=str(index), metadata=row) for index, row in enumerate(_rows(data))
    ]
    for step in filters:
        name = getattr(step, "name", type(step).__name__)
        batch_size = max(1, step.batch_size)
        survivors = []
        with tqdm(total=len(alive), desc=name, unit="row", disable=not progress, leave=False) as bar:
            for begin in range(0, len(alive), batch_size):
                batch = alive[begin : begin + batch_size]
                for index, result in zip(
                    batch, step.filter_batch([documents[i] for i in batch]), strict=True
                ):
                    keep, reason = get_filter_result(result)
                    if keep:
                        survivors.append(index)
                    else:
                        reason = reason or "dropped"
                        detail = documents[index].metadata.get(DROP_DETAIL)
                        reasons[index] = f"{name}: {reason}" + (f": {detail}" if detail else "")
                        counts[(name, reason)] += 1
                bar.update(len(batch))
        alive = survivors
    table = pl.DataFrame(
        [{"filter": name, "reason": kind, "count": n} for (name, kind), n in counts.most_common()],
        schema={"filter": pl.String, "reason": pl.String, "count": pl.Int64},
    )
    kept = data[alive] if isinstance(data, pl.DataFrame) else data.select(alive)
    return FilterReport(kept=kept, drop_reasons=table, dropped_reasons=reasons)
