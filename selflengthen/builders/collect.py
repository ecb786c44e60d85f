"""After the last iteration: gather every iteration's answers into one `long` dataset.

Each iteration contributes its initial rows (the Generator's answers) and its extended rows
(the Extender's), as (instruction, response) pairs with `iteration` and `origin` columns.
Exact duplicates (same instruction and response) are kept once, the earliest. When the run
config asks for extra instructions, the final Generator's answers to them (iteration N + 1's
`initial`, origin `final_generator`) are included too. Output: `runs/<name>/long/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.builders.folder import StepFolder, finish_step, step_folder, word_summary
from selflengthen.steps import COLLECT, EXTENDED, INITIAL, LONG

LONG_SCHEMA = {
    "id": pl.String,
    "iteration": pl.Int64,
    "origin": pl.String,
    "instruction_id": pl.String,
    "instruction": pl.String,
    "language": pl.String,
    "response": pl.String,
    "words": pl.Int64,
}
ORIGINS = (INITIAL, EXTENDED, "final_generator")


def long_folder(run_dir: Path) -> StepFolder:
    return StepFolder(run_dir / LONG)


def _rows(frame: pl.DataFrame, origin: str, response: str, words: str) -> pl.DataFrame:
    return frame.select(
        pl.format("{}-{}", pl.col("id"), pl.lit(origin)).alias("id"),
        pl.col("iteration"),
        pl.lit(origin).alias("origin"),
        pl.col("instruction_id"),
        pl.col("instruction"),
        pl.col("language"),
        pl.col(response).alias("response"),
        pl.col(words).alias("words"),
    ).cast(LONG_SCHEMA)  # type: ignore[arg-type]


def collect_frame(run_dir: Path, iterations: int, extra: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    """The deduplicated `long` rows and the row count each source gave before deduplication."""
    parts, sources = [], {}
    for iteration in range(1, iterations + 1):
        initial = step_folder(run_dir, iteration, INITIAL).read()
        extended = step_folder(run_dir, iteration, EXTENDED).read()
        parts += [
            _rows(initial, INITIAL, "response", "words"),
            _rows(extended, EXTENDED, "extended_response", "extended_words"),
        ]
        sources |= {
            f"iter_{iteration}/initial": initial.height,
            f"iter_{iteration}/extended": extended.height,
        }
    if extra:
        final = step_folder(run_dir, iterations + 1, INITIAL).read()
        parts.append(_rows(final, "final_generator", "response", "words"))
        sources[f"iter_{iterations + 1}/initial"] = final.height
    everything = pl.concat(parts, how="vertical")
    origin_rank = pl.col("origin").replace_strict(ORIGINS, range(len(ORIGINS)), return_dtype=pl.Int64)
    unique = (
        everything.sort(["iteration", origin_rank, "id"])
        .unique(subset=["instruction", "response"], keep="first", maintain_order=True)
        .sort("id")
    )
    return unique, sources


def run_collect(run_dir: Path, iterations: int, extra: bool) -> dict[str, Any]:
    """Write `long/` (or return the stats of the finished step)."""
    folder = long_folder(run_dir)
    if folder.finished():
        return json.loads(folder.stats.read_text())
    started = time.monotonic()
    frame, sources = collect_frame(run_dir, iterations, extra)
    stats = {
        "step": COLLECT.name,
        "iterations": iterations,
        "rows_in": sum(sources.values()),
        "sources": sources,
        "duplicates_dropped": sum(sources.values()) - frame.height,
        "rows_out": frame.height,
        "rows_by_origin": dict(frame.group_by("origin").len().sort("origin").iter_rows()),
        "words": word_summary(frame["words"].to_list()),
        "seconds": round(time.monotonic() - started, 1),
    }
    return finish_step(folder, frame, stats)
