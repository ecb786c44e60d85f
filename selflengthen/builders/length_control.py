"""The final SFT set teaches length following: each long answer's instruction gets one length
constraint that the answer satisfies.

Answers of `min_words`..`max_words` words are kept. Each row (seeded by its id) draws a rounding
unit (`round_to`, or `coarse_round_to` with probability `coarse_probability`) and a constraint
type by `weights`:

- about L: L is the word count rounded to the nearest unit (or the next multiple) such that
  the count lies within ±20% of L;
- range a..b, more than a, less than b: a is the largest multiple of the unit below the count,
  b the smallest above it;

so that the answer follows its constraint fully under `selflengthen eval`'s scoring (about L:
0.8L..1.2L; more than a: a..1.5a; less than b: 0.5b..b; a range: a..b). `low_words` and
`high_words` hold that interval; `target_words` the number written (None for a range). Where the
drawn unit or type cannot be followed (a "more than" by two hundreds for 390 words: 200..300),
the fine unit, then a range, then "less than" is used.

The constraint is written in the instruction's language with one of several templates
(`prompts/<lang>/length_<type>.txt`), before or after the untouched instruction. Output:
`runs/<name>/final/` with `messages` for TRL and the constraint type and bounds as columns.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.builders.folder import StepFolder, finish_step, word_summary
from selflengthen.config import LengthControlSection
from selflengthen.engine.options import request_seed
from selflengthen.length_scores import length_following_score, target_interval
from selflengthen.prompts import prompt_language, variants
from selflengthen.steps import FINAL, LENGTH_CONTROL

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
    return StepFolder(run_dir / FINAL)


def constraint_for(words: int, settings: LengthControlSection, rng: random.Random) -> dict[str, Any]:
    """A constraint that an answer of `words` words follows fully under `eval`'s scoring: type,
    the number written in the instruction (`target_words`; None for a range) and the interval
    `eval` scores as followed (`low_words`..`high_words`, which contains `words`).

    When the drawn unit admits no such constraint of the drawn type (about 302 words by
    hundreds: "around 300"; by two hundreds neither 200 nor 400 has 302 within ±20%), the fine
    unit is tried, then a range, then "less than"."""
    unit = settings.coarse_round_to if rng.random() < settings.coarse_probability else settings.round_to
    kinds, weights = zip(*settings.weights.items(), strict=True)
    kind = rng.choices(kinds, weights=weights)[0]
    fine = settings.round_to
    for attempt_kind, attempt_unit in ((kind, unit), (kind, fine), ("range", fine), ("below", fine)):
        if (constraint := _followed_constraint(attempt_kind, words, attempt_unit)) is not None:
            return constraint
    raise AssertionError(f"no constraint for {words} words")  # "less than" always fits words >= unit


def _followed_constraint(kind: str, words: int, unit: int) -> dict[str, Any] | None:
    """The `kind` constraint on multiples of `unit` nearest to `words` that `words` follows, or
    None. "More than" / "less than" bounds lie strictly below / above `words`."""
    below, above = (words - 1) // unit * unit, (words // unit + 1) * unit
    if kind == "about":
        nearest = round(words / unit) * unit
        written: object = next(
            (t for t in (nearest, nearest - unit, nearest + unit) if t > 0 and _follows(words, kind, t)), None
        )
    elif kind == "range":
        written = [below, above] if below > 0 else None
    else:
        written = below if kind == "above" else above
        if written == 0 or not _follows(words, kind, written):
            written = None
    if written is None:
        return None
    low, high = target_interval(kind, written)
    return {
        "constraint_type": kind,
        "target_words": None if kind == "range" else written,
        "low_words": math.ceil(low),
        "high_words": math.floor(high),
    }


def _follows(words: int, kind: str, written: object) -> bool:
    return length_following_score(words, *target_interval(kind, written)) == 100.0


def constrained_instruction(
    instruction: str, language: str, constraint: dict[str, Any], rng: random.Random
) -> str:
    """`instruction` with the constraint written before or after it, in its language."""
    text = instruction.strip()
    if not _SENTENCE_END[prompt_language(language)].search(text):
        text += _FULL_STOP[prompt_language(language)]
    kind = constraint["constraint_type"]
    chosen = rng.choice(variants(language, f"length_{kind}"))
    written = constraint["target_words"]
    return chosen.substitute(
        instruction=text,
        words=written or "",
        low=written if kind == "above" else constraint["low_words"] or "",
        high=written if kind == "below" else constraint["high_words"] or "",
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
        "step": LENGTH_CONTROL.name,
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
