"""The final SFT set teaches length following: each long answer's instruction gets one length
constraint that the answer satisfies.

Answers of `min_words`..`max_words` words are kept. Each row (seeded by its id) draws a rounding
unit (`round_to`, or `coarse_round_to` with probability `coarse_probability`) and a constraint
type by `weights`:

- about L: L is the word count rounded to the nearest unit;
- range a..b, more than a, less than b: a is the largest multiple of the unit below the count,
  b the smallest above it, so the answer always satisfies its constraint.

The constraint is written in the instruction's language with one of several templates
(`prompts/<lang>/length_<type>.txt`), before or after the untouched instruction. Output:
`runs/<name>/final/` with `messages` for TRL and the constraint type and bounds as columns.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.builders.step import StepFolder, finish_step, word_summary
from selflengthen.config import LengthControlSection
from selflengthen.engine.options import request_seed
from selflengthen.prompts import variants

FINAL_SCHEMA = {
    "id": pl.String,
    "iteration": pl.Int64,
    "origin": pl.String,
    "language": pl.String,
    "original_instruction": pl.String,
    "instruction": pl.String,
    "response": pl.String,
    "words": pl.Int64,
    "constraint_type": pl.String,
    "target_words": pl.Int64,
    "low_words": pl.Int64,
    "high_words": pl.Int64,
    "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
}
_SENTENCE_END = {"en": re.compile(r"[.!?:;)\"'”’]$"), "zh": re.compile(r"[。！？：；）”’.!?]$")}
_FULL_STOP = {"en": ".", "zh": "。"}


def final_folder(run_dir: Path) -> StepFolder:
    return StepFolder(run_dir / "final")


def constraint_for(words: int, settings: LengthControlSection, rng: random.Random) -> dict[str, Any]:
    """A constraint that an answer of `words` words satisfies: type, target and bounds."""
    unit = settings.coarse_round_to if rng.random() < settings.coarse_probability else settings.round_to
    kinds, weights = zip(*settings.weights.items(), strict=True)
    kind = rng.choices(kinds, weights=weights)[0]
    below, above = (words - 1) // unit * unit, (words // unit + 1) * unit
    if kind in ("range", "above") and below == 0:  # "more than 0 words" says nothing
        kind = "below"
    if kind == "about":
        target = max(unit, round(words / unit) * unit)
        return {"constraint_type": kind, "target_words": target, "low_words": target, "high_words": target}
    low = below if kind in ("range", "above") else None
    high = above if kind in ("range", "below") else None
    return {"constraint_type": kind, "target_words": None, "low_words": low, "high_words": high}


def constrained_instruction(
    instruction: str, language: str, constraint: dict[str, Any], rng: random.Random
) -> str:
    """`instruction` with the constraint written before or after it, in its language."""
    text = instruction.strip()
    if not _SENTENCE_END[language].search(text):
        text += _FULL_STOP[language]
    chosen = rng.choice(variants(language, f"length_{constraint['constraint_type']}"))
    return chosen.substitute(
        instruction=text,
        words=constraint["target_words"] or "",
        low=constraint["low_words"] or "",
        high=constraint["high_words"] or "",
    )


def final_frame(long: pl.DataFrame, settings: LengthControlSection, seed: int) -> pl.DataFrame:
    rows = []
    kept = long.filter(pl.col("words").is_between(settings.min_words, settings.max_words)).sort("id")
    for row in kept.iter_rows(named=True):
        rng = random.Random(request_seed(seed, "length-control", row["id"]))
        constraint = constraint_for(row["words"], settings, rng)
        instruction = constrained_instruction(row["instruction"], row["language"], constraint, rng)
        rows.append(
            {
                "id": row["id"],
                "iteration": row["iteration"],
                "origin": row["origin"],
                "language": row["language"],
                "original_instruction": row["instruction"],
                "instruction": instruction,
                "response": row["response"],
                "words": row["words"],
                **constraint,
                "messages": [
                    {"role": "user", "content": instruction},
                    {"role": "assistant", "content": row["response"]},
                ],
            }
        )
    return pl.DataFrame(rows, schema=FINAL_SCHEMA)


def run_length_control(
    run_dir: Path, long: pl.DataFrame, settings: LengthControlSection, seed: int
) -> dict[str, Any]:
    """Write `final/` (or return the stats of the finished step)."""
    folder = final_folder(run_dir)
    if folder.finished():
        return json.loads(folder.stats.read_text())
    started = time.monotonic()
    frame = final_frame(long, settings, seed)
    stats = {
        "step": "length-control",
        "rows_in": long.height,
        "outside_length_bounds": long.height - frame.height,
        "rows_out": frame.height,
        "constraint_types": dict(frame.group_by("constraint_type").len().sort("constraint_type").iter_rows()),
        "settings": settings.model_dump(),
        "words": word_summary(frame["words"].to_list()),
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
    }
    return finish_step(folder, frame, stats)
