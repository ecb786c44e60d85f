"""The commands that work on a user's corpus, not on a run folder: `filter` and `sample`.

Both stream their input in batches (`tables.iter_table_batches`: JSONL and parquet; a CSV file
is read whole) and write their output batch by batch (`tables.TableWriter`), so that a corpus
larger than memory can be filtered or sampled: memory holds one batch, plus, for `sample`, one
length per row (the sampler ranks every row's length against all the others).
"""

from __future__ import annotations

import itertools
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from datatrove.pipeline.filters.base_filter import BaseFilter
from tqdm.auto import tqdm

from selflengthen.builders.sample import kept_by_length, row_lengths
from selflengthen.errors import SelflengthenError
from selflengthen.filters import (
    CharacterLoopFilter,
    EndingFilter,
    GrowthFilter,
    LengthFilter,
    MetaCommentFilter,
    RepetitionFilter,
    apply_filters,
)
from selflengthen.filters.registry import DEFAULT_FILTERS as DEFAULT_RESPONSE_FILTERS
from selflengthen.filters.registry import FILTERS
from selflengthen.tables import TableWriter, check_output, iter_table_batches, require_columns

FILTER_NAMES = (*FILTERS, "growth")
DEFAULT_FILTERS = ",".join(DEFAULT_RESPONSE_FILTERS)

InputFile = Annotated[Path, typer.Argument(help="A .jsonl, .csv or .parquet file.", show_default=False)]
OutputFile = Annotated[
    Path, typer.Argument(help="Where to write the kept rows (.jsonl, .csv or .parquet).", show_default=False)
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")]


def _build_filters(
    names: str,
    min_words: int | None,
    max_words: int | None,
    ngram: int | None,
    source_column: str | None,
    min_ratio: float,
) -> list[BaseFilter]:
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FILTER_NAMES]
    if unknown or not chosen:
        raise SelflengthenError(
            f"--filters: unknown filter {unknown or names!r} (choose from {', '.join(FILTER_NAMES)})"
        )
    if "length" in chosen and min_words is None and max_words is None:
        raise SelflengthenError("--filters length needs --min-words and/or --max-words")
    if "growth" in chosen and source_column is None:
        raise SelflengthenError(
            "--filters growth needs --source-column (the column with the text that was extended)"
        )
    try:
        makers = {
            "ending": lambda: EndingFilter(),
            "repetition": lambda: RepetitionFilter(ngram=ngram),
            "character-loop": lambda: CharacterLoopFilter(),
            "meta-comment": lambda: MetaCommentFilter(),
            "length": lambda: LengthFilter(min_words=min_words, max_words=max_words),
            "growth": lambda: GrowthFilter(
                min_ratio=min_ratio, source_key=source_column, source_words_key=None
            ),
        }
        return [makers[name]() for name in chosen]
    except ValueError as error:
        raise SelflengthenError(f"invalid filter option: {error}") from None


def _rows_bar(description: str) -> tqdm:
    return tqdm(desc=description, unit="row", dynamic_ncols=True, leave=False)


def filter_command(
    input_path: InputFile,
    output_path: OutputFile,
    text_column: Annotated[str, typer.Option(help="Column with the text to check.")] = "text",
    filters: Annotated[
        str, typer.Option(help=f"Comma-separated filters to apply, in order: {', '.join(FILTER_NAMES)}.")
    ] = DEFAULT_FILTERS,
    min_words: Annotated[int | None, typer.Option(help="length: fewest words kept.")] = None,
    max_words: Annotated[int | None, typer.Option(help="length: most words kept.")] = None,
    ngram: Annotated[
        int | None, typer.Option(help="repetition: n-gram size (default: 13 for Chinese text, 10 otherwise).")
    ] = None,
    source_column: Annotated[
        str | None, typer.Option(help="growth: column with the text that was extended.")
    ] = None,
    min_ratio: Annotated[
        float, typer.Option(help="growth: keep rows longer than this × the source's words.")
    ] = 1.2,
    dropped: Annotated[
        Path | None, typer.Option(help="Also write the dropped rows, with a `drop_reason` column, here.")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Apply the quality filters to a corpus and report why rows were dropped.

    JSONL and parquet are read and written in batches of rows, so a corpus larger than memory
    can be filtered."""
    chain = _build_filters(filters, min_words, max_words, ngram, source_column, min_ratio)
    for path in (output_path, *([dropped] if dropped else [])):
        check_output(path, overwrite)
    growth_sources = [source_column] if any(isinstance(step, GrowthFilter) for step in chain) else []
    counts: Counter[tuple[str, str]] = Counter()
    total = 0
    batches = iter_table_batches(input_path)
    first = next(batches)  # a bad input fails before anything is written or shown
    require_columns(first, input_path, text_column, *growth_sources)
    with (
        TableWriter(output_path, overwrite) as kept,
        TableWriter(dropped, overwrite) if dropped else nullcontext() as rejected,
        _rows_bar("filter") as bar,
    ):
        for batch in itertools.chain([first], batches):
            require_columns(batch, input_path, text_column, *growth_sources)
            report = apply_filters(batch, chain, text_column=text_column)
            kept.write(report.kept)
            if rejected is not None:
                reasons = pl.Series("drop_reason", report.dropped_reasons, dtype=pl.String)
                rejected.write(batch.with_columns(reasons).filter(reasons.is_not_null()))
            for name, reason, count in report.drop_reasons.iter_rows():
                counts[(name, reason)] += count
            total += batch.height
            bar.update(batch.height)
    typer.echo(f"kept {kept.rows} of {total} rows -> {output_path}")
    if counts:
        table = pl.DataFrame(
            [{"filter": name, "reason": reason, "count": n} for (name, reason), n in counts.most_common()]
        )
        with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, fmt_str_lengths=60):
            typer.echo(table)


def sample_command(
    input_path: InputFile,
    output_path: OutputFile,
    length_column: Annotated[
        str, typer.Option(help="Column of word counts, or of texts whose words are counted.")
    ] = "text",
    seed: Annotated[int, typer.Option(help="Seed of the random draws (same seed, same rows).")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Length-weighted sampling: keep longer rows more often (the longest always).

    Reads JSONL and parquet twice in batches (the lengths first, then the rows), so a corpus
    larger than memory can be sampled."""
    check_output(output_path, overwrite)
    lengths = []
    try:
        for batch in iter_table_batches(input_path):
            require_columns(batch, input_path, length_column)
            lengths.append(row_lengths(batch, length_column))
    except ValueError as error:
        raise SelflengthenError(f"{input_path}: {error}") from None
    try:
        keep = kept_by_length(pl.concat(lengths), seed)
    except pl.exceptions.SchemaError as error:
        raise SelflengthenError(f"{input_path}: {length_column}: lengths of mixed types ({error})") from None
    start = 0
    with TableWriter(output_path, overwrite) as kept:
        for batch in iter_table_batches(input_path):
            kept.write(batch.filter(pl.Series(keep[start : start + batch.height])))
            start += batch.height
    share = 100.0 * kept.rows / len(keep)
    typer.echo(f"kept {kept.rows} of {len(keep)} rows ({share:.1f}%) -> {output_path}")
