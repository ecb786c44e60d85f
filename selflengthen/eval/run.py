"""`selflengthen eval`: answer the prompts with each model (or read existing responses), score
length following, optionally have a judge rate quality, and write the report.

The output folder holds one step folder per model under `responses/<label>/` (and
`judge/<label>/`), written like the builders' steps: a rerun reuses finished ones and resumes
an interrupted one from its checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document

from selflengthen.builders.step import RESULTS_KEY, StepFolder, finish_step, run_inference, sum_tallies
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.engine.shared_server import SharedServer
from selflengthen.errors import SelflengthenError
from selflengthen.eval.growth import GROWTH_ROWS, GrowthSetup, heldout_answers, summarise
from selflengthen.eval.prompts import normalise
from selflengthen.eval.report import write_report
from selflengthen.eval.rollouts import CRITERIA, answer_rollout, judge_rollout
from selflengthen.eval.scores import length_following_score, longbench_length_score
from selflengthen.tables import read_table, require_columns, write_table
from selflengthen.text import count_words

_LABEL = r"^[\w.+-]+$"


@dataclass(frozen=True)
class Contender:
    """A model under evaluation, by the label its results carry."""

    label: str
    model: ResolvedModel


@dataclass(frozen=True)
class Judge:
    model: ResolvedModel
    engine: EngineOptions
    sampling: SamplingOptions
    max_retries: int = 3


def check_label(label: str) -> str:
    if not pl.Series([label]).str.contains(_LABEL).all():
        raise SelflengthenError(f"model label {label!r}: use letters, digits, '.', '_', '+' or '-'")
    return label


def _infer(
    server: SharedServer,
    model: ResolvedModel,
    folder: StepFolder,
    documents: list[Document],
    rollout: Callable[..., Any],
    sampling: SamplingOptions,
    description: str,
) -> list[Document]:
    """`run_inference` on the shared server for `model` (started now, only when needed; restarted
    if it dies), or on its endpoint."""

    def infer(engine: EngineOptions) -> list[Document]:
        return run_inference(folder, documents, rollout, engine, model, sampling, description)

    return server.serve(model, infer)


def _answers(
    contender: Contender,
    prompts: pl.DataFrame,
    out: Path,
    server: SharedServer,
    sampling: SamplingOptions,
) -> pl.DataFrame:
    """The model's answer to each row of `prompts` (by `id`), one request each."""
    folder = StepFolder(out / "responses" / contender.label)
    if folder.finished():
        answered = folder.read()
        if sorted(answered["id"]) != sorted(prompts["id"]):
            raise SelflengthenError(
                f"{folder.root}: answers to other prompts (another --prompts, --limit or growth setting); "
                "use another --out"
            )
        return answered
    started = time.monotonic()
    documents = [Document(text=row["query"], id=row["id"]) for row in prompts.iter_rows(named=True)]
    rollout = partial(answer_rollout, sampling=sampling)
    done = _infer(server, contender.model, folder, documents, rollout, sampling, f"eval {contender.label}")
    answers = {document.id: document.metadata[RESULTS_KEY][0] for document in done}
    frame = prompts.with_columns(
        pl.lit(contender.label).alias("model"),
        pl.Series("response", [answers[row_id]["response"] for row_id in prompts["id"]], dtype=pl.String),
        pl.Series(
            "finish_reason", [answers[row_id]["finish_reason"] for row_id in prompts["id"]], dtype=pl.String
        ),
    )
    counts, _, _ = sum_tallies(done)
    stats = {
        "step": "eval-answers",
        "model": contender.model.spec,
        "label": contender.label,
        "rows_out": frame.height,
        "request_errors": frame["response"].null_count(),
        "sampling": sampling.lineage(),
        **counts,
        "seconds": round(time.monotonic() - started, 1),
    }
    finish_step(folder, frame, stats)
    return frame


def read_responses(path: Path) -> list[pl.DataFrame]:
    """Existing responses, one frame per model: the prompt columns plus `response` (and
    optionally `model`, the label, else the file's name; and `finish_reason`)."""
    frame = read_table(path)
    require_columns(frame, path, "response")
    missing = frame.with_row_index("row").filter(pl.col("response").is_null())["row"]
    if missing.len():
        raise SelflengthenError(
            f"{path}: `response` is missing or null in {missing.len()} row(s) (first: row {missing[0] + 1}); "
            'a missing answer is not a 0-word answer: drop those rows, or write "" for an empty answer'
        )
    if "model" not in frame.columns:
        frame = frame.with_columns(pl.lit(path.stem).alias("model"))
    frames = []
    for part in frame.with_columns(pl.col("model").cast(pl.String)).partition_by(
        "model", maintain_order=True
    ):
        finish = part["finish_reason"] if "finish_reason" in part.columns else pl.Series([None] * part.height)
        frames.append(
            normalise(part, str(path)).with_columns(
                pl.lit(check_label(part["model"][0])).alias("model"),
                part["response"].cast(pl.String).alias("response"),
                finish.cast(pl.String).alias("finish_reason"),
            )
        )
    return frames


def score(frame: pl.DataFrame) -> pl.DataFrame:
    """Each row's word count and length score (0-100): length following for a constraint,
    LongBench-Write's S_l for a required length. A failed request scores 0."""
    words, scores = [], []
    for row in frame.iter_rows(named=True):
        produced = count_words(row["response"] or "")
        words.append(produced)
        if row["required"] is not None:
            scores.append(longbench_length_score(row["required"], produced))
        else:
            scores.append(length_following_score(produced, row["low"], row["high"]))
    return frame.with_columns(pl.Series("words", words), pl.Series("score", scores).round(2))


def _judgements(
    frame: pl.DataFrame, label: str, judge: Judge, out: Path, server: SharedServer
) -> pl.DataFrame:
    folder = StepFolder(out / "judge" / label)
    if not folder.finished():
        started = time.monotonic()
        rows = frame.filter(pl.col("response").is_not_null())
        documents = [
            Document(
                text=row["response"],
                id=row["id"],
                metadata={"query": row["query"], "language": row["language"]},
            )
            for row in rows.iter_rows(named=True)
        ]
        rollout = partial(judge_rollout, sampling=judge.sampling, max_retries=judge.max_retries)
        done = _infer(server, judge.model, folder, documents, rollout, judge.sampling, f"judge {label}")
        results = {document.id: document.metadata[RESULTS_KEY][0] for document in done}
        table = pl.DataFrame(
            [
                {
                    "id": row_id,
                    **{criterion: (result["scores"] or {}).get(criterion) for criterion in CRITERIA},
                    "judge_attempts": result["attempts"],
                    "judge_failed": result["scores"] is None,
                }
                for row_id, result in results.items()
            ],
            schema={
                "id": pl.String,
                **dict.fromkeys(CRITERIA, pl.Int64),
                "judge_attempts": pl.Int64,
                "judge_failed": pl.Boolean,
            },
        )
        counts, rejections, _ = sum_tallies(done)
        stats = {
            "step": "eval-judge",
            "judge": judge.model.spec,
            "label": label,
            "rows_out": table.height,
            "judge_failures": int(table["judge_failed"].sum()),
            "rejected_replies": dict(rejections),
            **counts,
            "seconds": round(time.monotonic() - started, 1),
        }
        finish_step(folder, table, stats)
    return frame.join(folder.read(), on="id", how="left")


def evaluate(
    prompts: pl.DataFrame,
    contenders: list[Contender],
    responses: list[Path],
    out: Path,
    engine: EngineOptions,
    sampling: SamplingOptions,
    judge: Judge | None = None,
    growth: GrowthSetup | None = None,
) -> dict[str, Any]:
    """Everything `selflengthen eval` does; returns the results written to `out/results.json`.

    With `growth`, each contender also answers the growth prompts, in the same step as the
    scored prompts (one batch keeps the server busy to the end)."""
    existing = [  # bad files fail before any work
        frame for path in responses for frame in read_responses(path)
    ]
    labels = [contender.label for contender in contenders] + [frame["model"][0] for frame in existing]
    if len(set(labels)) != len(labels):
        raise SelflengthenError(f"model labels must differ (got {', '.join(labels)}); name them LABEL=MODEL")
    server = SharedServer(engine, out / "server_logs", sampling.seed)
    judge_server = server  # when both are launched here: the same model is not started twice
    if judge is not None and (engine.endpoint or judge.engine.endpoint):
        judge_server = SharedServer(judge.engine, out / "server_logs", sampling.seed)
    asked = prompts
    if growth is not None:
        if clash := set(prompts["id"]) & set(growth.requests["id"]):
            raise SelflengthenError(
                f"prompt id {sorted(clash)[0]!r} is also a growth request's id; rename it"
            )
        asked = pl.concat([prompts, growth.requests], how="diagonal_relaxed")
    frames, growth_answers = [], {}
    try:
        for contender in contenders:
            answered = _answers(contender, asked, out, server, sampling)
            if growth is not None:
                growth_answers[contender.label] = heldout_answers(answered.filter(GROWTH_ROWS))
                answered = answered.filter(~GROWTH_ROWS).drop("prompt_id", "sample")
            frames.append(answered)
        frames += existing
        scored = [score(frame) for frame in frames]
        if judge is not None:
            scored = [
                _judgements(frame, frame["model"][0], judge, out, judge_server)
                for frame in scored
                if frame.height
            ]
    finally:
        server.stop()
        judge_server.stop()
    growth_summary = None
    if growth is not None:
        growth_summary = summarise(growth_answers, growth, sampling.seed)
        for label, frame in growth_answers.items():
            (out / "heldout_answers").mkdir(exist_ok=True)
            write_table(frame, out / "heldout_answers" / f"{label}.jsonl", overwrite=True)
    return write_report(pl.concat(scored, how="diagonal_relaxed"), out, judge is not None, growth_summary)
