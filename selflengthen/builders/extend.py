"""Step 3 of a macro-iteration: the Extender lengthens each initial response.

Each round is a two-stage extension of the best text so far. The text is split into paragraphs
at blank lines (into lines when that gives two parts or fewer). Stage 1 sends the extend prompt
with the first half and keeps the first two-thirds of the paragraphs it writes; stage 2 sends the
extend prompt with the whole current text and the stage-1 text as a trailing assistant message
that the model continues (`continue_final_message`); with `force_growth`, stage 2 may not end
before it could reach `min_ratio` × the text (`stage_two_min_tokens`). An attempt counts when
its result finishes, passes the filters and is longer than the best so far; a round makes up
to `max_retries` attempts and goes on retrying after a longer result while the row is not yet
keepable (`grow`). The best text is kept only if it passes `GrowthFilter` (more than `min_ratio`
× the initial words) and, with `on_topic`, `OnTopicFilter` (each segment after the first stays on
the instruction, scored on the step's server: `selflengthen.relevance`); the kept rows then go
through the length-weighted sampler. Output: `iter_<k>/extended/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document

from selflengthen.builders.checks import DEFAULT_CHECKS, STOPPED_EARLY_DETAIL, ResponseChecks
from selflengthen.builders.extend_watch import CombinedWatch, StageOneWatch, split_parts, stage_two_start
from selflengthen.builders.folder import step_folder, word_summary
from selflengthen.builders.progress import StepProgress, rollout_tally
from selflengthen.builders.requests import chat, stopped_early
from selflengthen.builders.sample import length_weighted_sample
from selflengthen.builders.speculation import attempts_in_order
from selflengthen.builders.step import GenerationStep, run_step
from selflengthen.builders.tally import RESULTS_KEY, Tally
from selflengthen.config import ExtendSection
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.filters import GrowthFilter
from selflengthen.filters.base import DROP_DETAIL
from selflengthen.filters.on_topic import RELEVANCE_KEY, OnTopicFilter
from selflengthen.prompts import template
from selflengthen.relevance import RelevanceScorer
from selflengthen.steps import EXTENDED
from selflengthen.text import count_words

#: Why a row has no extension (stats.json's `failed_rows`); the last only with `on_topic`.
FAILURES = ("no_round_succeeded", "too_little_growth", "off_topic")

EXTENDED_SCHEMA = {
    "id": pl.String,
    "iteration": pl.Int64,
    "instruction_id": pl.String,
    "instruction": pl.String,
    "language": pl.String,
    "initial_response": pl.String,
    "initial_words": pl.Int64,
    "extended_response": pl.String,
    "extended_words": pl.Int64,
    "rounds": pl.Int64,
    "attempts": pl.Int64,
    "finish_reason": pl.String,
    "model": pl.String,
    "sampling": pl.String,
}


@dataclass(frozen=True)
class ExtendSettings:
    """The extend step's settings: its config section (`extend:`; `on_topic` is
    `OnTopicFilter`'s `max_ratio`, None: not applied), the sampling of its requests, and the
    checks every stage-2 text must pass."""

    section: ExtendSection = field(default_factory=ExtendSection)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    checks: ResponseChecks = DEFAULT_CHECKS


def combine(start: str, separator: str, continuation: str) -> str:
    """Stage 2's result: the start it continued and the continuation, joined by `separator`
    unless the continuation begins with whitespace of its own."""
    joiner = "" if continuation[:1].isspace() else separator
    return f"{start}{joiner}{continuation}".strip()


def stage_two_min_tokens(text: str, start: str, settings: ExtendSettings) -> int:
    """With `force_growth`, the tokens stage 2 must write before it may end: one per word that
    the result still lacks to be `min_ratio` × `text` after `start` (a word is at least one
    token, so the model is held to most of the way and finishes the rest itself), at most the
    request's `max_tokens`. 0 without `force_growth`."""
    if not settings.section.force_growth:
        return 0
    missing = math.ceil(settings.section.min_ratio * count_words(text)) - count_words(start)
    return min(max(missing, 0), settings.sampling.max_tokens)


class Extension(str):
    """An extended text that knows where stage 2's continuation starts in it (`continued_at`,
    in characters), for `selflengthen report`'s highlight; otherwise the text itself."""

    continued_at: int

    def __new__(cls, text: str, continued_at: int) -> Extension:
        extension = super().__new__(cls, text)
        extension.continued_at = continued_at
        return extension

    def __getnewargs__(self) -> tuple[str, int]:  # type: ignore[override]
        """Copies and pickles keep `continued_at` (datatrove deep-copies results it saves)."""
        return str(self), self.continued_at


async def extend_once(
    generate: Any,
    instruction: str,
    text: str,
    language: str,
    settings: ExtendSettings,
    seed_parts: tuple[object, ...],
    tally: Tally,
) -> str | None:
    """One two-stage extension of `text`; `None` if a request failed or the result is unusable."""
    prompt = template(language, "extend")
    parts, separator = split_parts(text)
    first_half = separator.join(parts[: max(1, len(parts) // 2)])
    stage_one = await chat(
        generate,
        [{"role": "user", "content": prompt.substitute(instruction=instruction, text=first_half)}],
        settings.sampling,
        (*seed_parts, 1),
        tally,
        watch=partial(StageOneWatch, settings.checks),
    )
    if stage_one is None:
        return None
    if (reason := stopped_early(stage_one)) is not None:
        tally.reject(reason, stage_one.text, STOPPED_EARLY_DETAIL)
        return None
    written, written_separator = split_parts(stage_one.text)
    if not written:
        tally.rejections["stage_1_empty"] += 1
        return None
    start = stage_two_start(written, written_separator)
    watch = partial(CombinedWatch, settings.checks, start, written_separator)
    if settings.sampling.early_stop and (reason := watch().reason_before) is not None:
        # The start alone already fails (e.g. stage 1 looped): stage 2 cannot pass.
        tally.stop_early(reason, 0)
        tally.rejections[reason] += 1
        return None
    stage_two = await chat(
        generate,
        [
            {"role": "user", "content": prompt.substitute(instruction=instruction, text=text)},
            {"role": "assistant", "content": start},
        ],
        settings.sampling,
        (*seed_parts, 2),
        tally,
        continue_final=True,
        watch=watch,
        min_tokens=stage_two_min_tokens(text, start, settings),
    )
    if stage_two is None:
        return None
    combined = dataclasses.replace(stage_two, text=combine(start, written_separator, stage_two.text))
    verdict = settings.checks.verdict(combined)
    if verdict is not None:
        tally.reject(verdict[0], combined.text, verdict[1])
        return None
    return Extension(combined.text, continued_at=len(combined.text) - len(stage_two.text.rstrip()))


@dataclass
class Growth:
    """Where a row's extension rounds got to: the best text, its words, the rounds that made it
    longer, the attempts spent, and whether the row is kept (a round grew it, and by more than
    the growth filter's `min_ratio` × the initial words)."""

    text: str
    words: int
    rounds: int = 0
    attempts: int = 0
    kept: bool = False


async def grow(
    text: str,
    settings: ExtendSettings,
    extend: Callable[[str, int, int, Tally], Awaitable[str | None]],
    tally: Tally,
) -> Growth:
    """Up to `settings.section.rounds` rounds of `extend(text, round_index, attempt, attempt_tally)` on
    the best text.

    A round makes up to `max_retries` attempts on the same text and keeps the longest result
    that is longer than it. It stops at the first longer result once the row is keepable (more
    than `min_ratio` × the initial words): retrying a round whose gain would leave the row below
    the growth filter is where a row that would be dropped becomes one that is kept, while a row
    already keepable spends no further attempt. The rounds end at the first that grew nothing.
    The attempts of a round do not depend on each other, so with `sampling.speculate` later ones
    may start while the server is idle (`attempts_in_order`); the rule reads their results in
    attempt order all the same.
    """
    initial_words = count_words(text)
    growth = Growth(text, initial_words)
    keepable = GrowthFilter(min_ratio=settings.section.min_ratio).grew_enough
    for round_index in range(settings.section.rounds):
        start, start_words = growth.text, growth.words
        attempts = attempts_in_order(
            partial(extend, start, round_index),
            settings.section.max_retries,
            tally,
            settings.sampling.speculate,
        )
        async with aclosing(attempts):
            async for _, candidate in attempts:
                growth.attempts += 1
                if candidate is None:
                    continue
                words = count_words(candidate)
                if words <= growth.words:
                    tally.rejections["not_longer"] += 1
                    continue
                growth.text, growth.words = candidate, words
                if keepable(words, initial_words):
                    break
        if growth.words == start_words:
            break
        growth.rounds += 1
    growth.kept = growth.rounds > 0 and keepable(growth.words, initial_words)
    return growth


async def off_topic(
    scorer: RelevanceScorer, instruction: str, text: str, max_ratio: float
) -> tuple[list[float], str | None]:
    """`text`'s segments' relevance ratios to `instruction`, and `OnTopicFilter`'s reason to
    drop it (`off_topic: <segment and ratio>`), or None when it stays on topic."""
    ratios = await scorer.score(instruction, text)
    document = Document(text=text, id="", metadata={RELEVANCE_KEY: ratios})
    verdict = OnTopicFilter(max_ratio).filter(document)
    if verdict is True:
        return ratios, None
    return ratios, ": ".join(part for part in (verdict[1], document.metadata.get(DROP_DETAIL)) if part)


async def extend_rollout(
    document: Document,
    generate: Any,
    *,
    settings: ExtendSettings,
    progress: StepProgress | None = None,
    relevance: Callable[[], RelevanceScorer] | None = None,
) -> dict[str, Any]:
    """Extend one initial response over up to `rounds` rounds (a datatrove rollout function);
    with `settings.section.on_topic`, a kept text is then scored with a scorer from `relevance`."""
    tally = rollout_tally(progress)
    instruction, language = document.metadata["instruction"], document.metadata["language"]

    async def extend(text: str, round_index: int, attempt: int, attempt_tally: Tally) -> str | None:
        seed_parts = ("extend", document.id, round_index, attempt)
        return await extend_once(generate, instruction, text, language, settings, seed_parts, attempt_tally)

    growth = await grow(document.text, settings, extend, tally)
    failure = None if growth.kept else ("no_round_succeeded" if growth.rounds == 0 else "too_little_growth")
    scored: dict[str, Any] = {}
    if growth.kept and settings.section.on_topic is not None:
        assert relevance is not None, "on_topic needs the step's relevance scorers"
        async with relevance() as scorer:
            ratios, reason = await off_topic(scorer, instruction, growth.text, settings.section.on_topic)
        scored = {"relevance": ratios, "off_topic": reason}
        failure = "off_topic" if reason is not None else None
    if progress is not None:
        progress.document_done(tally)
    return {
        "extended_response": str(growth.text) if growth.kept else None,  # kept for a look when off topic
        "continued_at": getattr(growth.text, "continued_at", None),  # where the last stage 2 began
        "rounds": growth.rounds,
        "attempts": growth.attempts,
        "failure": failure,
        **scored,
        "tally": tally.as_dict(),
    }


def on_topic_summary(max_ratio: float, last_ratios: list[float], failures: dict[str, int]) -> dict[str, Any]:
    """stats.json's `on_topic`: the bound, the rows scored (every row that grew enough), those
    dropped as off topic, and the median and largest ratio of their last segments."""
    return {
        "max_ratio": max_ratio,
        "scored": len(last_ratios),
        "off_topic": failures["off_topic"],
        "last_segment_ratio": {
            "median": round(statistics.median(last_ratios), 4) if last_ratios else None,
            "max": round(max(last_ratios), 4) if last_ratios else None,
        },
    }


def run_extend(
    run_dir: Path,
    iteration: int,
    initial: pl.DataFrame,
    engine: EngineOptions,
    model: ResolvedModel,
    settings: ExtendSettings,
) -> dict[str, Any]:
    """Run the step (or return the stats of the finished one) and write `extended/`."""
    by_id = {row["id"]: row for row in initial.iter_rows(named=True)}
    documents = [
        Document(
            text=row["response"],
            id=row["id"],
            metadata={"instruction": row["instruction"], "language": row["language"]},
        )
        for row in by_id.values()
    ]
    lineage = json.dumps(settings.sampling.lineage())

    def rows(done: list[Document]) -> tuple[pl.DataFrame, dict[str, Any]]:
        reasons = FAILURES if settings.section.on_topic is not None else FAILURES[:-1]
        extended, failures = [], dict.fromkeys(reasons, 0)
        last_ratios: list[float] = []
        for document in done:
            for result in document.metadata.get(RESULTS_KEY, []):
                if result.get("relevance"):
                    last_ratios.append(result["relevance"][-1])
                if result["failure"] is not None:
                    failures[result["failure"]] += 1
                    continue
                source = by_id[document.id]
                extended.append(
                    {
                        "id": document.id,
                        "iteration": iteration,
                        "instruction_id": source["instruction_id"],
                        "instruction": source["instruction"],
                        "language": source["language"],
                        "initial_response": source["response"],
                        "initial_words": source["words"],
                        "extended_response": result["extended_response"],
                        "extended_words": count_words(result["extended_response"]),
                        "rounds": result["rounds"],
                        "attempts": result["attempts"],
                        "finish_reason": "stop",
                        "model": model.spec,
                        "sampling": lineage,
                    }
                )
        grown = pl.DataFrame(extended, schema=EXTENDED_SCHEMA).sort("id")
        kept = length_weighted_sample(grown, "extended_words", settings.sampling.seed)
        max_ratio = settings.section.on_topic
        return kept, {
            "rows_grown": grown.height,
            "dropped_by_sampler": grown.height - kept.height,
            "failed_rows": failures,
            **(
                {"on_topic": on_topic_summary(max_ratio, last_ratios, failures)}
                if max_ratio is not None
                else {}
            ),
            "initial_words": word_summary(kept["initial_words"].to_list()),
        }

    step = GenerationStep(
        "extend",
        step_folder(run_dir, iteration, EXTENDED),
        documents,
        partial(extend_rollout, settings=settings),
        rows,
        rows_in=len(documents),
        words_column="extended_words",
        relevance=settings.section.on_topic is not None,
        filters=settings.checks.describe(),
    )
    return run_step(step, iteration, engine, model, settings.sampling)
