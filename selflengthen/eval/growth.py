"""Length growth on held-out prompts: does each iteration's Generator write longer than the base?

`selflengthen eval --compare RUN_DIR` answers a set of open-ended English writing prompts with
no length constraint (ours: `eval/data/heldout_en.jsonl`, or `--growth-prompts FILE`) several
times each (`--growth-samples`, each sample its own seed), with the run's base model and the
Generator of every iteration. Prompts that the loop has seen (a seed or an instruction of any
iteration, exactly or nearly: `overlap.py`) are left out and listed, so that every figure is
measured on text the loop never saw.

Per model: mean and median words with 95% intervals (prompts resampled), the ratio of its mean
words to the base's on the same prompts (paired), the share of answers cut at `max_tokens` and
the share passing the repetition and ending filters, and the share the run's own checks (its
`filters:` and the finish reason) would accept; with relevance scoring
(`selflengthen.relevance`, on the base model), the mean relevance ratio of the answers' first and
last segments and the share whose last segment is off the prompt, also per answer length (the
base's answer-length terciles), because a longer answer's last third is farther from its prompt
and drifts more in any model. From the run itself: the Extender's growth ratio (extended /
initial words) of the rows each iteration kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from datatrove.data import Document
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.checks import DEFAULT_CHECKS, ResponseChecks
from selflengthen.builders.self_instruct import seed_instructions
from selflengthen.errors import SelflengthenError
from selflengthen.eval import bootstrap
from selflengthen.eval.overlap import Overlap, find_overlaps
from selflengthen.eval.prompts import packaged_prompts
from selflengthen.filters import EndingFilter, RepetitionFilter
from selflengthen.relevance import OFF_TOPIC_RATIO
from selflengthen.run_folder import RunFolder
from selflengthen.steps import EXTENDED, INSTRUCTIONS
from selflengthen.tables import read_table, require_columns
from selflengthen.text import count_words

HELDOUT = "heldout"
#: Growth requests carry ids of this form (`growth:<prompt id>:<sample>`).
_ID_PREFIX = "growth:"
_FILTERS = {"repetition": RepetitionFilter(batch_size=1), "ending": EndingFilter()}


def load_growth_prompts(source: str) -> pl.DataFrame:
    """`id, query` of the growth prompts: ours ("heldout") or a JSONL/CSV/parquet file with a
    `query` or `prompt` column (and optionally `id`)."""
    frame = packaged_prompts("heldout_en.jsonl") if source == HELDOUT else read_table(Path(source))
    column = "query" if "query" in frame.columns else "prompt"
    require_columns(frame, Path(source), column)
    ids = (
        frame["id"].cast(pl.String)
        if "id" in frame.columns
        else pl.Series([str(i) for i in range(frame.height)])
    )
    prompts = pl.DataFrame({"id": ids, "query": frame[column].cast(pl.String)})
    empty = prompts.filter(pl.col("query").is_null() | (pl.col("query").str.strip_chars() == ""))
    if empty.height:
        raise SelflengthenError(f"--growth-prompts {source}: prompt {empty['id'][0]!r} is empty")
    duplicated = prompts.filter(pl.col("id").is_duplicated())["id"]
    if len(duplicated):
        raise SelflengthenError(f"--growth-prompts {source}: id {duplicated[0]!r} appears more than once")
    return prompts


def seen_by_run(run: RunFolder) -> list[str]:
    """Every instruction the run's loop has seen: its seeds and each iteration's instructions."""
    section = run.config.self_instruct
    seen = seed_instructions(section.seeds, section.seed_language, "self_instruct.seed_language")
    texts = seen["instruction"].to_list()
    for iteration in range(1, run.config.iterations + 2):  # + the extra instructions of `collect`
        folder = run.folder(INSTRUCTIONS, iteration)
        if folder.finished():
            texts += folder.read()["instruction"].to_list()
    return texts


@dataclass(frozen=True)
class GrowthSetup:
    """What the growth evaluation asks (one row per answer: `id, prompt_id, sample, query`),
    which prompts it left out, and the run's Extender growth ratios per iteration."""

    requests: pl.DataFrame
    base_label: str
    excluded: list[Overlap] = field(default_factory=list)
    extender: dict[str, Any] = field(default_factory=dict)
    #: The run's checks (its `filters:` and the finish reason): would the loop accept an answer?
    checks: ResponseChecks = DEFAULT_CHECKS

    @property
    def prompts(self) -> int:
        return self.requests["prompt_id"].n_unique()


def growth_setup(run_dir: Path, source: str, samples: int, base_label: str = "base") -> GrowthSetup:
    run = RunFolder.open(run_dir)
    prompts = load_growth_prompts(source)
    excluded = find_overlaps(zip(prompts["id"], prompts["query"], strict=True), seen_by_run(run))
    held_out = prompts.filter(~pl.col("id").is_in([overlap.prompt_id for overlap in excluded]))
    if held_out.is_empty():
        raise SelflengthenError(
            f"--growth-prompts {source}: every prompt overlaps an instruction of {run_dir}"
        )
    requests = held_out.rename({"id": "prompt_id"}).join(
        pl.DataFrame({"sample": list(range(1, samples + 1))}), how="cross"
    )
    requests = requests.select(
        (_ID_PREFIX + pl.col("prompt_id") + ":" + pl.col("sample").cast(pl.String)).alias("id"),
        "prompt_id",
        "sample",
        "query",
    )
    checks = ResponseChecks(run.config.filter_entries())
    return GrowthSetup(requests, base_label, excluded, extender_growth(run), checks)


def extender_growth(run: RunFolder) -> dict[str, Any]:
    """Per finished iteration: extended / initial words of each kept row, and the step's yield."""
    result = {}
    for iteration in range(1, run.config.iterations + 1):
        folder = run.folder(EXTENDED, iteration)
        if not folder.finished():
            continue
        rows = folder.read()
        stats = run.stats(EXTENDED, iteration)
        ratios = (rows["extended_words"] / rows["initial_words"]).round(3).to_list()
        result[str(iteration)] = {
            "rows_in": stats["rows_in"],
            "rows_kept": rows.height,
            "ratios": ratios,
            "median_ratio": round(float(np.median(ratios)), 3) if ratios else None,
        }
    return result


#: Selects the growth answers in a model's responses (the rest answer the scored prompts).
GROWTH_ROWS = pl.col("prompt_id").is_not_null()


def _passes(text: str | None) -> dict[str, bool]:
    document = Document(text=text or "", id="")
    return {name: check.filter(document) is True for name, check in _FILTERS.items()}


def _matrix(frame: pl.DataFrame, prompt_ids: list[str], samples: int) -> np.ndarray:
    """Words per (prompt, sample); NaN where the request failed."""
    matrix = np.full((len(prompt_ids), samples), np.nan)
    row_of = {prompt_id: index for index, prompt_id in enumerate(prompt_ids)}
    for row in frame.iter_rows(named=True):
        if row["text"] is not None:
            matrix[row_of[row["prompt_id"]], row["sample"] - 1] = row["words"]
    return matrix


def heldout_answers(frame: pl.DataFrame, run_checks: ResponseChecks = DEFAULT_CHECKS) -> pl.DataFrame:
    """One model's growth answers as evidence (`eval --compare` writes them to
    `heldout_answers/<model>.jsonl`): prompt id, sample, text, words, finish reason, the
    verdict of each filter the figures count, and whether the run's own checks would accept the
    answer (`accepted`: its `filters:` in order and the finish reason); null where the request
    failed."""
    frame = frame.sort("prompt_id", "sample")
    checks = [_passes(text) if text is not None else None for text in frame["response"]]
    accepted = [
        None if text is None else run_checks.problem(InferenceResult(text, reason, {})) is None
        for text, reason in zip(frame["response"], frame["finish_reason"], strict=True)
    ]
    return pl.DataFrame(
        {
            "prompt_id": frame["prompt_id"],
            "sample": frame["sample"],
            "text": frame["response"],
            "words": frame["response"].map_elements(count_words, return_dtype=pl.Int64),
            "finish_reason": frame["finish_reason"],
            **{
                f"pass_{name}": pl.Series([check and check[name] for check in checks], dtype=pl.Boolean)
                for name in _FILTERS
            },
            "accepted": pl.Series(accepted, dtype=pl.Boolean),
        }
    )


def with_relevance(answers: pl.DataFrame, ratios: list[list[float]]) -> pl.DataFrame:
    """`answers` (one model's `heldout_answers`) with each answer's segment relevance ratios
    (`relevance`, first segment first; null where the request failed or the answer has no
    words) and whether its last segment is off its prompt (`off_topic_end`: ratio above
    `OFF_TOPIC_RATIO`). `ratios` holds one list per answered row, in order."""
    scored = iter(ratios)
    column = [next(scored) or None if text is not None else None for text in answers["text"]]
    ends = [None if value is None else value[-1] > OFF_TOPIC_RATIO for value in column]
    return answers.with_columns(
        pl.Series("relevance", column, dtype=pl.List(pl.Float64)),
        pl.Series("off_topic_end", ends, dtype=pl.Boolean),
    )


def _relevance_figures(frame: pl.DataFrame, prompt_ids: list[str], samples: int, seed: int) -> dict[str, Any]:
    """Mean relevance ratio of the first and of the last segment, and the share of answers whose
    last segment is off topic, each with its interval (prompts resampled)."""
    scored = frame.filter(pl.col("relevance").is_not_null())
    values = {
        "relevance_first": scored.with_columns(pl.col("relevance").list.first().alias("words")),
        "relevance_last": scored.with_columns(pl.col("relevance").list.last().alias("words")),
        "off_topic_end_pct": scored.with_columns(
            (100 * pl.col("off_topic_end").cast(pl.Float64)).alias("words")
        ),
    }
    figures: dict[str, Any] = {"relevance_scored": scored.height}
    for name, rows in values.items():
        matrix = _matrix(rows, prompt_ids, samples)  # `_matrix` reads the value as `words`
        figures[name] = (
            bootstrap.mean_and_median(matrix, seed=seed)[0].rounded(3 if name != "off_topic_end_pct" else 1)
            if scored.height
            else None
        )
    return figures


def relevance_by_length(answers: dict[str, pl.DataFrame], base_label: str) -> dict[str, Any] | None:
    """Per model, the answers whose last segment is off topic within each of three word ranges,
    the same for every model: the terciles of the base's scored answers (None without a scored
    base). A model that writes longer moves answers into the longer ranges; the share within a
    range compares models at the same length."""
    base = answers.get(base_label)
    if base is None or "relevance" not in base.columns:
        return None
    words = base.filter(pl.col("relevance").is_not_null())["words"]
    if words.is_empty():
        return None
    low, high = (int(words.quantile(q, interpolation="nearest")) for q in (1 / 3, 2 / 3))
    high = max(high, low + 1)  # the middle range is never empty by construction
    ranges = [(f"< {low}", None, low), (f"{low}–{high - 1}", low, high), (f"≥ {high}", high, None)]
    models: dict[str, list[dict[str, Any]]] = {}
    for label, frame in answers.items():
        if "relevance" not in frame.columns:
            continue
        scored = frame.filter(pl.col("relevance").is_not_null())
        models[label] = []
        for name, start, end in ranges:
            in_range = pl.col("words") >= start if start is not None else pl.lit(True)
            if end is not None:
                in_range &= pl.col("words") < end
            inside = scored.filter(in_range)
            off = int(inside["off_topic_end"].sum())
            share = round(100 * off / inside.height, 1) if inside.height else None
            models[label].append({"words": name, "answers": inside.height, "off_topic_end_pct": share})
    return {"terciles_of": base_label, "models": models}


def summarise(answers: dict[str, pl.DataFrame], setup: GrowthSetup, seed: int) -> dict[str, Any]:
    """The growth figures of every model (see the module's docstring); `answers` holds each
    model's `heldout_answers`."""
    prompt_ids = sorted(setup.requests["prompt_id"].unique().to_list())
    samples = int(setup.requests["sample"].max())  # type: ignore[arg-type]
    matrices = {}
    models: dict[str, Any] = {}
    for label, frame in answers.items():
        matrices[label] = _matrix(frame, prompt_ids, samples)
        answered = frame.filter(pl.col("text").is_not_null())
        mean, median = bootstrap.mean_and_median(matrices[label], seed=seed)
        share = 100 / max(answered.height, 1)
        passes = {name: int(answered[f"pass_{name}"].sum()) for name in _FILTERS}
        both = int(answered.select(pl.all_horizontal(f"pass_{name}" for name in _FILTERS)).to_series().sum())
        models[label] = {
            "answers": answered.height,
            "failed_requests": frame.height - answered.height,
            "mean_words": mean.rounded(1),
            "median_words": median.rounded(1),
            "cut_at_max_tokens_pct": round(share * int((answered["finish_reason"] == "length").sum()), 1),
            "pass_repetition_pct": round(share * passes["repetition"], 1),
            "pass_ending_pct": round(share * passes["ending"], 1),
            "pass_both_pct": round(share * both, 1),
            "accepted_pct": round(share * int(answered["accepted"].sum()), 1),
            "words": [int(words) for words in answered["words"]],
        }
        if "relevance" in frame.columns:
            models[label] |= _relevance_figures(frame, prompt_ids, samples, seed)
    base = matrices.get(setup.base_label)
    if base is not None:
        for label, matrix in matrices.items():
            if label == setup.base_label:
                continue
            per_prompt = bootstrap.per_prompt_ratios(matrix, base)
            models[label]["ratio_to_base"] = bootstrap.paired_ratio(matrix, base, seed=seed).rounded(3)
            models[label]["prompts_longer_than_base_pct"] = round(
                100 * float(np.mean(per_prompt[~np.isnan(per_prompt)] > 1)), 1
            )
    return {
        "base": setup.base_label,
        "prompts": setup.prompts,
        "samples_per_prompt": samples,
        "excluded_prompts": [vars(overlap) for overlap in setup.excluded],
        "interval": f"{int(bootstrap.LEVEL * 100)}% bootstrap over prompts ({bootstrap.RESAMPLES} resamples)",
        "models": models,
        "relevance_by_length": relevance_by_length(answers, setup.base_label),
        "extender": setup.extender,
    }
