"""`selflengthen eval`: answer the prompts with each model (or read existing responses), score
length following, optionally have a judge rate quality, and write the report.

The output folder holds one step folder per model under `responses/<label>/` (and
`judge/<label>/`), written like the builders' steps: a rerun reuses finished ones and resumes
an interrupted one from its checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document

from selflengthen.atomic import write_text_atomic
from selflengthen.builders.folder import StepFolder, finish_step
from selflengthen.builders.inference import run_inference
from selflengthen.builders.tally import RESULTS_KEY, sum_tallies
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.engine.shared_server import SharedServer
from selflengthen.errors import SelflengthenError
from selflengthen.eval.growth import GROWTH_ROWS, GrowthSetup, heldout_answers, summarise, with_relevance
from selflengthen.eval.prompts import normalise
from selflengthen.eval.report import write_report
from selflengthen.eval.rollouts import CRITERIA, answer_rollout, judge_rollout
from selflengthen.length_scores import length_following_score, longbench_length_score
from selflengthen.relevance import score_pairs
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


def _with_relevance(
    answers: dict[str, pl.DataFrame],
    growth: GrowthSetup,
    folder: Path,
    server: SharedServer,
    scorer: ResolvedModel,
) -> dict[str, pl.DataFrame]:
    """Each model's growth answers with their segments' relevance to the prompt, all scored by
    `scorer` (the base model: one yardstick for every iteration). Scores are kept in
    `folder/<label>.json`; a rerun on the same answers reuses them."""
    queries = dict(zip(growth.requests["prompt_id"], growth.requests["query"], strict=True))
    pairs: dict[str, list[tuple[str, str]]] = {}
    kept: dict[str, list[list[float]]] = {}
    for label, frame in answers.items():
        pairs[label] = [
            (queries[row["prompt_id"]], row["text"])
            for row in frame.iter_rows(named=True)
            if row["text"] is not None
        ]
        saved = folder / f"{label}.json"
        if saved.exists():
            stored = json.loads(saved.read_text())
            if stored["pairs"] == [list(pair) for pair in pairs[label]]:
                kept[label] = stored["relevance"]
    missing = [label for label in pairs if label not in kept]

    def score_missing(engine: EngineOptions) -> dict[str, list[list[float]]]:
        assert engine.endpoint is not None
        base_url = engine.endpoint.rstrip("/").removesuffix("/v1")
        flat = [pair for label in missing for pair in pairs[label]]
        scored = score_pairs(base_url, engine.model, flat, engine.api_key(), engine.concurrency, "relevance")
        ratios = iter(scored)
        return {label: [next(ratios) for _ in pairs[label]] for label in missing}

    if missing:
        kept |= server.serve(scorer, score_missing)
        folder.mkdir(parents=True, exist_ok=True)
        for label in missing:
            record = {"scorer": scorer.spec, "pairs": pairs[label], "relevance": kept[label]}
            write_text_atomic(json.dumps(record), folder / f"{label}.json")
    return {label: with_relevance(frame, kept[label]) for label, frame in answers.items()}


def evaluate(
    prompts: pl.DataFrame,
    contenders: list[Contender],
    responses: list[Path],
    out: Path,
    engine: EngineOptions,
    sampling: SamplingOptions,
    judge: Judge | None = None,
    growth: GrowthSetup | None = None,
    relevance: bool = False,
) -> dict[str, Any]:
    """Everything `selflengthen eval` does; returns the results written to `out/results.json`.

    With `growth`, each contender also answers the growth prompts, in the same step as the
    scored prompts (one batch keeps the server busy to the end); with `relevance` too, every
    growth answer is then scored for relevance to its prompt on the base model's server."""
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
    scorer_label = growth.base_label if growth is not None and relevance else None
    # The base model scores relevance: answered last, its server is still up for the scoring.
    order = sorted(contenders, key=lambda contender: contender.label == scorer_label)
    answered_by: dict[str, pl.DataFrame] = {}
    growth_answers: dict[str, pl.DataFrame] = {}
    try:
        for contender in order:
            answered = _answers(contender, asked, out, server, sampling)
            if growth is not None:
                growth_answers[contender.label] = heldout_answers(answered.filter(GROWTH_ROWS), growth.checks)
                answered = answered.filter(~GROWTH_ROWS).drop("prompt_id", "sample")
            answered_by[contender.label] = answered
        frames = [answered_by[contender.label] for contender in contenders]
        growth_answers = {c.label: growth_answers[c.label] for c in contenders if c.label in growth_answers}
        if growth is not None and scorer_label is not None:
            base = next(contender.model for contender in contenders if contender.label == scorer_label)
            growth_answers = _with_relevance(growth_answers, growth, out / "relevance", server, base)
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
