"""Step 4 of a macro-iteration: the two SFT datasets, in TRL's conversational `messages` format.

- `gen_sft` teaches the Generator to write the long answer directly:
  user = the instruction, assistant = the extended response.
- `ext_sft` teaches the Extender to lengthen a draft: user = the extend prompt filled with the
  instruction and the *initial* response with each (non-blank) line dropped with probability
  `line_drop_probability` (seeded per row; the kept lines are re-joined with the separators that
  followed them), assistant = the extended response. Dropping lines makes the Extender add
  content rather than copy its input.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.builders.folder import finish_step, step_folder, word_summary
from selflengthen.engine.options import request_seed
from selflengthen.prompts import template
from selflengthen.steps import EXT_SFT, GEN_SFT
from selflengthen.text import count_words

_MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
SFT_SCHEMA = {"id": pl.String, "iteration": pl.Int64, "messages": pl.List(_MESSAGE)}


def drop_lines(text: str, probability: float, rng: random.Random) -> str:
    """`text` with each non-blank line dropped with `probability`. Kept lines keep the line
    breaks that followed them; a blank line is kept unless it would double the one before it;
    at least one non-blank line always stays."""
    lines = text.splitlines(keepends=True)
    filled = [index for index, line in enumerate(lines) if line.strip()]
    if not filled:
        return text
    dropped = {index for index in filled if rng.random() < probability}
    if len(dropped) == len(filled):
        dropped.discard(filled[rng.randrange(len(filled))])
    kept: list[str] = []
    for index, line in enumerate(lines):
        blank = not line.strip()
        if index in dropped or (blank and (not kept or not kept[-1].strip())):
            continue
        kept.append(line)
    return "".join(kept).rstrip("\r\n")


def _conversation(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def sft_frames(extended: pl.DataFrame, line_drop_probability: float, seed: int) -> dict[str, pl.DataFrame]:
    """The `gen_sft` and `ext_sft` rows for an `extended` table (one row each per extended row)."""
    generator_rows, extender_rows = [], []
    for row in extended.sort("id").iter_rows(named=True):
        rng = random.Random(request_seed(seed, "ext-sft", row["id"]))
        draft = drop_lines(row["initial_response"], line_drop_probability, rng)
        prompt = template(row["language"], "extend").substitute(instruction=row["instruction"], text=draft)
        common = {"id": row["id"], "iteration": row["iteration"]}
        generator_rows.append(
            common | {"messages": _conversation(row["instruction"], row["extended_response"])}
        )
        extender_rows.append(common | {"messages": _conversation(prompt, row["extended_response"])})
    return {
        GEN_SFT: pl.DataFrame(generator_rows, schema=SFT_SCHEMA),
        EXT_SFT: pl.DataFrame(extender_rows, schema=SFT_SCHEMA),
    }


def run_build_sft(
    run_dir: Path, iteration: int, extended: pl.DataFrame, line_drop_probability: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Write `iter_<k>/gen_sft/` and `iter_<k>/ext_sft/` (each skipped when finished)."""
    started = time.monotonic()
    frames = sft_frames(extended, line_drop_probability, seed)
    results = {}
    for step, frame in frames.items():
        folder = step_folder(run_dir, iteration, step)
        if folder.finished():
            results[step] = json.loads(folder.stats.read_text())
            continue
        prompts = [count_words(messages[0]["content"]) for messages in frame["messages"].to_list()]
        answers = [count_words(messages[1]["content"]) for messages in frame["messages"].to_list()]
        stats = {
            "step": step,
            "iteration": iteration,
            "rows_in": extended.height,
            "rows_out": frame.height,
            "line_drop_probability": line_drop_probability if step == EXT_SFT else None,
            "prompt_words": word_summary(prompts),
            "words": word_summary(answers),
            "seed": seed,
            "seconds": round(time.monotonic() - started, 1),
        }
        results[step] = finish_step(folder, frame, stats)
    return results
