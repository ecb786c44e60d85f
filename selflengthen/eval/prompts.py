"""Evaluation prompts: our own small set (English and Chinese, all four constraint types), a
local JSONL/CSV/parquet file, or a Hub dataset (only when one is named).

Two shapes are understood, and normalised to one frame (`id, query, type, language, range,
low, high, required`):
- LonGen-style: `query`, `type` (about/range/above/below), `constraint` (a number, or two for
  a range), `language`, optionally `range` (a length-range label) and `id`;
- LongBench-Write-style: `prompt` (or `query`) and `length`, the required number of words
  (optionally `type`, `language` or `lang`, `id`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl

from selflengthen.engine.models import HUB_ID
from selflengthen.errors import SelflengthenError
from selflengthen.length_scores import length_bucket, target_interval
from selflengthen.prompts import detect_language
from selflengthen.tables import read_table

BUILTIN = "builtin"
PROMPT_SCHEMA = {
    "id": pl.String,
    "query": pl.String,
    "type": pl.String,
    "language": pl.String,
    "range": pl.String,
    "low": pl.Float64,
    "high": pl.Float64,
    "required": pl.Int64,
}


def packaged_prompts(name: str) -> pl.DataFrame:
    """A prompt file shipped with the package (`selflengthen/eval/data/<name>`)."""
    path = resources.files("selflengthen.eval").joinpath("data").joinpath(name)
    return pl.read_ndjson(path.read_bytes(), infer_schema_length=None)


def _from_hub(source: str) -> pl.DataFrame:
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, split="train")
    except Exception as error:  # offline, unknown repo, no train split: all the same to the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SelflengthenError(f"--prompts {source}: cannot load it from the Hub ({first_line})") from None
    return pl.from_arrow(dataset.data.table)  # type: ignore[return-value]


def read_source(source: str) -> pl.DataFrame:
    """The raw rows of `source`: "builtin", a file, or a Hub dataset id."""
    if source == BUILTIN:
        return packaged_prompts("prompts.jsonl")
    path = Path(source)
    if path.exists() or path.suffix:
        return read_table(path)
    if HUB_ID.match(source):
        return _from_hub(source)
    raise SelflengthenError(f"--prompts {source}: not 'builtin', an existing file, or a Hub dataset id")


def normalise(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """The prompts in the common shape; one-line errors name the source, row and column."""
    columns = set(frame.columns)
    text_column = "query" if "query" in columns else "prompt" if "prompt" in columns else None
    if text_column is None:
        raise SelflengthenError(
            f"{source}: no column 'query' or 'prompt' (columns: {', '.join(frame.columns)})"
        )
    constrained = "constraint" in columns
    if not constrained and "length" not in columns:
        raise SelflengthenError(
            f"{source}: no column 'constraint' (LonGen-style) or 'length' (LongBench-Write-style)"
        )
    rows = []
    for index, row in enumerate(frame.iter_rows(named=True)):
        query = row[text_column]
        if not isinstance(query, str) or not query.strip():
            raise SelflengthenError(f"{source}: row {index + 1}: empty {text_column!r}")
        language = row.get("language") or row.get("lang") or detect_language(query)
        common = {"id": str(row.get("id") if row.get("id") is not None else index), "query": query}
        common["language"] = str(language)
        if constrained:
            kind = str(row.get("type"))
            try:
                low, high = target_interval(kind, row["constraint"])
            except ValueError as error:
                raise SelflengthenError(f"{source}: row {index + 1}: type/constraint: {error}") from None
            target = {"about": (low + high) / 2, "above": low}.get(kind, high)  # T, or hi of a range
            label = row.get("range") or length_bucket(target)
            rows.append(
                common | {"type": kind, "range": str(label), "low": low, "high": high, "required": None}
            )
        else:
            try:
                required = int(row["length"])
            except (TypeError, ValueError):
                required = 0
            if required <= 0:
                raise SelflengthenError(
                    f"{source}: row {index + 1}: length must be a positive number of words"
                )
            kind = str(row.get("type") or "required")
            label = str(row.get("range") or length_bucket(required))
            rows.append(
                common | {"type": kind, "range": label, "low": None, "high": None, "required": required}
            )
    prompts = pl.DataFrame(rows, schema=PROMPT_SCHEMA)
    duplicated = prompts.filter(pl.col("id").is_duplicated())["id"]
    if len(duplicated):
        raise SelflengthenError(f"{source}: id {duplicated[0]!r} appears more than once")
    return prompts


def load_prompts(source: str, limit: int | None = None) -> pl.DataFrame:
    prompts = normalise(read_source(source), source)
    return prompts.head(limit) if limit else prompts
