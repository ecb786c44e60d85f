"""A generation step as every one runs: its inference run, its rows, the stats every step
writes, then data and stats (see `GenerationStep` and `run_step`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
from datatrove.data import Document

from selflengthen.builders.folder import (
    StepFolder,
    finish_step,
    finished_stats,
    word_summary,
)
from selflengthen.builders.inference import (
    run_inference,
)
from selflengthen.builders.tally import (
    REQUEST_ERROR,
    request_error_examples,
    server_use,
    sum_tallies,
)
from selflengthen.engine.launch import served_precision
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions


@dataclass(frozen=True)
class GenerationStep:
    """A generation step as `run_step` runs it.

    Attributes:
        name: the step's name in stats.json and on its progress bar ("generate").
        folder: where it writes.
        documents: one datatrove document per unit of work (an instruction slot, an instruction,
            an answer to extend).
        rollout: the datatrove rollout function that works on one document (settings bound).
        rows: the step's table from the finished documents (its schema, sorted; sampled where
            the step samples) and the stats only this step has.
        rows_in: the input rows stats.json reports.
        words_column: the column whose word counts stats.json summarises.
        context: a factory of datatrove's shared context for the rollouts (see `run_inference`);
            `None`: a progress bar.
        relevance: the rollouts score relevance on the step's server (`run_inference`).
        filters: the filters the step applied to every answer, with their arguments, for
            stats.json (`ResponseChecks.describe`); None for a step without them.
    """

    name: str
    folder: StepFolder
    documents: list[Document]
    rollout: Callable[..., Any]
    rows: Callable[[list[Document]], tuple[pl.DataFrame, dict[str, Any]]]
    rows_in: int
    words_column: str = "words"
    context: Callable[[], Any] | None = None
    relevance: bool = False
    filters: list[dict[str, Any]] | None = None


def run_step(
    step: GenerationStep,
    iteration: int,
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
) -> dict[str, Any]:
    """Run a generation step, or return the stats of the finished one: inference (resuming from
    its checkpoints), the step's rows, the stats every step writes, then data and stats."""
    if (stats := finished_stats(step.folder, sampling)) is not None:
        return stats
    started = time.monotonic()
    context = step.context or f"{step.name} (iter {iteration})"
    done = run_inference(
        step.folder, step.documents, step.rollout, engine, model, sampling, context, step.relevance
    )
    frame, specific = step.rows(done)
    stats = step_stats(step, iteration, frame, done, engine, model, sampling, started, **specific)
    return finish_step(step.folder, frame, stats)


def step_stats(
    step: GenerationStep,
    iteration: int,
    output: pl.DataFrame,
    done: list[Document],
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
    started: float,
    **specific: Any,
) -> dict[str, Any]:
    """The stats every step writes: counts, requests and tokens, rejection reasons (per filter or
    check; `stopped_early` says how many of them were cancelled midway, with their tokens), the
    word-length summary of its output, lineage, the serving precision, how full the server was
    kept (and what speculation cost) and wall time; plus `specific`."""
    totals, rejections, stopped_early = sum_tallies(done)
    examples = request_error_examples(done)
    return {
        "step": step.name,
        "iteration": iteration,
        "rows_in": step.rows_in,
        **specific,
        "rows_out": output.height,
        **totals,
        **({"filters": step.filters} if step.filters is not None else {}),
        "rejected_attempts": dict(rejections.most_common()),
        "stopped_early": stopped_early,
        "request_errors": {
            kind: {"count": rejections[f"{REQUEST_ERROR}: {kind}"], "example": example}
            for kind, example in examples.items()
        },
        "words": word_summary(output[step.words_column].to_list()),
        "model": model.spec,
        "sampling": sampling.lineage(),
        "precision": served_precision(engine).as_dict(),
        "speculate": sampling.speculate,
        **server_use(done),
        "seconds": round(time.monotonic() - started, 1),
    }
