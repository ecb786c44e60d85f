"""What every generation step shares: its folder, the inference run, requests, stats, progress."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from datatrove.pipeline.writers import JsonlWriter
from tqdm.auto import tqdm

from selflengthen.builders.request_cache import cache_error, set_aside_damaged
from selflengthen.builders.speculation import RequestMeter, mean_in_flight
from selflengthen.engine.launch import served_precision
from selflengthen.engine.models import ResolvedModel, prepare_embedded_model
from selflengthen.engine.options import EngineOptions, RayOptions, SamplingOptions, SlurmOptions
from selflengthen.engine.server import ENDPOINT_READY_SECONDS, SelflengthenInferenceRunner, inference_config
from selflengthen.engine.streaming import EARLY_STOP, LIVE_USAGE, REQUEST_WATCH, LiveUsage
from selflengthen.errors import SelflengthenError, ServerFailed
from selflengthen.filters import CharacterLoopFilter, EndingFilter, MetaCommentFilter, RepetitionFilter
from selflengthen.filters.prefix import HeadMetaWatch, LoopWatch, PrefixWatch, RepeatWatch
from selflengthen.tables import file_sha256, first_line, temporary_beside, write_table

RESULTS_KEY = "rollout_results"
_RECORDS_PER_CHUNK = 25


@dataclass(frozen=True)
class StepFolder:
    """`runs/<name>/iter_<k>/<step>/`: `data/` (parquet), `stats.json` (written last, so its
    presence means the step finished) and `_work/` (checkpoints, request cache, logs)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def work(self) -> Path:
        return self.root / "_work"

    def finished(self) -> bool:
        return self.stats.is_file()

    def recorded_stats(self) -> dict[str, Any] | None:
        """The stats of the finished step, or None if it has not finished."""
        return json.loads(self.stats.read_text(encoding="utf-8")) if self.finished() else None

    def require_finished(self, hint: str) -> StepFolder:
        """This folder, or a one-line error saying that the step has not finished and `hint`."""
        if not self.finished():
            raise SelflengthenError(f"{self.root}: step not finished ({hint})")
        return self

    def shards(self) -> list[Path]:
        """The step's parquet shards, each checked against the size and SHA-256 recorded in
        `stats.json` when the step finished (a one-line error names a missing, damaged or
        unrecorded shard). Steps finished before shards were recorded are read unchecked."""
        present = sorted(self.data.glob("*.parquet"))
        try:
            recorded = json.loads(self.stats.read_text(encoding="utf-8")).get("shards")
        except (OSError, ValueError, AttributeError) as error:
            raise SelflengthenError(f"{self.stats}: unreadable ({error}); rerun the step") from None
        if recorded is None:
            return present
        redo = f"remove {self.root} and rerun the step"
        for path in present:
            if path.name not in recorded:
                raise SelflengthenError(f"{path}: not written by the step (not in {self.stats}); remove it")
        for name, record in sorted(recorded.items()):
            path = self.data / name
            if not path.is_file():
                raise SelflengthenError(f"{path}: missing (recorded in {self.stats}); {redo}")
            size = path.stat().st_size
            if size != record["bytes"] or file_sha256(path) != record["sha256"]:
                raise SelflengthenError(
                    f"{path}: damaged ({size} bytes, {record['bytes']} recorded with a different checksum in "
                    f"{self.stats}); {redo}"
                )
        return [self.data / name for name in sorted(recorded)]

    def read(self) -> pl.DataFrame:
        shards = self.shards()
        try:
            return pl.concat([pl.read_parquet(path) for path in shards], how="vertical")
        except (pl.exceptions.PolarsError, OSError) as error:
            raise SelflengthenError(
                f"{self.data}: unreadable parquet ({first_line(error)}); rerun the step"
            ) from None


def step_folder(run_dir: Path, iteration: int, step: str) -> StepFolder:
    return StepFolder(run_dir / f"iter_{iteration}" / step)


REQUEST_ERROR = "request_error"


def request_error_kind(message: str) -> str:
    """A short, stable key for a failed request: `context_length` (prompt + max_tokens beyond
    the model's context), `bad_request` (another 400), `http_<status>`, `malformed_stream` (an
    answer that is not a stream of chat chunks), `stalled_stream`, or `other`."""
    lowered = message.lower()
    if "server-sent events" in lowered:
        return "malformed_stream"
    if "stalled stream" in lowered:
        return "stalled_stream"
    if "context length" in lowered or "maximum context" in lowered or "max_model_len" in lowered:
        return "context_length"
    if "badrequest" in lowered or "status 400" in lowered:
        return "bad_request"
    if (found := re.search(r"http status (\d{3})", lowered)) is not None:
        return f"http_{found.group(1)}"
    return "other"


@dataclass
class Tally:
    """Requests, tokens and rejection reasons counted inside one rollout."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    #: Requests cancelled (or never sent) because their rejection was certain, per reason, and
    #: the completion tokens they had generated by then.
    stopped_early: Counter[str] = field(default_factory=Counter)
    stopped_early_tokens: Counter[str] = field(default_factory=Counter)
    #: One full server message per kind of refused request (`request_error_kind`).
    request_errors: dict[str, str] = field(default_factory=dict)
    #: The seconds its requests were open, summed (for the step's mean requests in flight).
    request_seconds: float = 0.0
    #: Requests of speculative attempts that were not needed, and their completion tokens
    #: (counted apart from the rest: see `selflengthen.builders.speculation`).
    speculative_requests: int = 0
    speculative_tokens: int = 0
    #: Attempts started before the rule asked for their result (needed or not).
    speculated_attempts: int = 0
    started: float = field(default_factory=time.monotonic)  # when the rollout began
    began_at: float = field(default_factory=time.time)  # the same, as a time of day (for spans)
    #: The step's requests in flight, which this tally's requests count into (None: not counted).
    meter: RequestMeter | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "rejections": dict(self.rejections),
            "stopped_early": {
                reason: {"requests": count, "completion_tokens": self.stopped_early_tokens[reason]}
                for reason, count in self.stopped_early.items()
            },
            "request_errors": self.request_errors,
            "request_seconds": round(self.request_seconds, 3),
            "span": [round(self.began_at, 3), round(time.time(), 3)],  # the rollout, start to end
            "speculative": {
                "attempts_started": self.speculated_attempts,
                "requests": self.speculative_requests,
                "completion_tokens": self.speculative_tokens,
            },
        }

    def child(self) -> Tally:
        """A fresh tally for one attempt, counting into the same meter."""
        return Tally(meter=self.meter)

    def merge(self, other: Tally) -> None:
        """Add the counts of an attempt whose result was used."""
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.rejections.update(other.rejections)
        self.stopped_early.update(other.stopped_early)
        self.stopped_early_tokens.update(other.stopped_early_tokens)
        for kind, message in other.request_errors.items():
            self.request_errors.setdefault(kind, message)
        self.request_seconds += other.request_seconds
        self.speculated_attempts += other.speculated_attempts
        self.speculative_requests += other.speculative_requests
        self.speculative_tokens += other.speculative_tokens

    def add_unneeded(self, other: Tally) -> None:
        """Count an attempt that was started ahead of need and not needed: its requests and
        completion tokens as speculative ones (the seconds it held the server count too)."""
        self.request_seconds += other.request_seconds
        self.speculated_attempts += other.speculated_attempts
        self.speculative_requests += other.speculative_requests + other.requests
        self.speculative_tokens += other.speculative_tokens + other.completion_tokens

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Around one request: counted in the step's meter, its seconds added up."""
        started = time.monotonic()
        try:
            with self.meter.request() if self.meter is not None else nullcontext():
                yield
        finally:
            self.request_seconds += time.monotonic() - started

    def refused(self, message: str) -> None:
        """Count a request the server refused, by kind, keeping the first full message of each."""
        kind = request_error_kind(message)
        self.rejections[f"{REQUEST_ERROR}: {kind}"] += 1
        self.request_errors.setdefault(kind, message)

    def stop_early(self, reason: str, completion_tokens: int) -> None:
        self.stopped_early[reason] += 1
        self.stopped_early_tokens[reason] += completion_tokens


async def chat(
    generate: Callable[[dict], Any],
    messages: list[dict[str, str]],
    sampling: SamplingOptions,
    seed_parts: tuple[object, ...],
    tally: Tally,
    continue_final: bool = False,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    watch: Callable[[], PrefixWatch] | None = None,
    min_tokens: int = 0,
) -> InferenceResult | None:
    """One chat request through the model's own chat template. With `continue_final`, the last
    (assistant) message is continued rather than answered; `stop` ends the generation at any
    of those strings; `min_tokens` keeps the model from ending before that many tokens (vLLM's
    `min_tokens`). Returns `None` (and counts why) when the server rejects the request, e.g.
    a prompt longer than the context.

    With `sampling.early_stop`, the answer streams through a fresh `watch()`; a request it
    cancels comes back with the finish reason `early_stop: <reason>`, the reason the finished
    text would have been rejected for (see `response_problem`). A cancelled answer taken from
    datatrove's request cache (a resumed step) is given its reason again by a fresh watch.
    """
    payload: dict[str, Any] = {"messages": messages, **sampling.payload(*seed_parts, max_tokens=max_tokens)}
    if stop:
        payload["stop"] = stop
    if min_tokens:
        payload["min_tokens"] = min_tokens
    if continue_final:
        payload |= {"add_generation_prompt": False, "continue_final_message": True}
    tally.requests += 1
    context = REQUEST_WATCH.set(watch if sampling.early_stop else None)
    live = LiveUsage()
    usage_context = LIVE_USAGE.set(live)
    try:
        with tally.in_flight():
            result: InferenceResult = await generate(payload)
    except InferenceError as error:
        tally.refused(str(error.error))
        return None
    except asyncio.CancelledError:  # a speculative attempt no longer needed: count what it wrote
        tally.completion_tokens += live.completion_tokens
        raise
    finally:
        REQUEST_WATCH.reset(context)
        LIVE_USAGE.reset(usage_context)
    tally.prompt_tokens += int(result.usage.get("prompt_tokens", 0))
    completion_tokens = int(result.usage.get("completion_tokens", 0))
    tally.completion_tokens += completion_tokens
    if result.finish_reason == EARLY_STOP:
        reason = watch().feed(result.text) if watch is not None else None
        if reason is None:
            raise SelflengthenError(
                f"a request was stopped early, but its text passes its checks: {result.text!r}"
            )
        tally.stop_early(reason, completion_tokens)
        return dataclasses.replace(result, finish_reason=f"{EARLY_STOP}: {reason}")
    return result


#: The filters every answer must pass (`response_problem`), with their settings.
ENDING, REPETITION, META_COMMENT = EndingFilter(), RepetitionFilter(batch_size=1), MetaCommentFilter()
CHARACTER_LOOP = CharacterLoopFilter()
_RESPONSE_FILTERS = (ENDING, REPETITION, CHARACTER_LOOP, META_COMMENT)


def rejection(check: BaseFilter, kind: str) -> str:
    """How `response_problem` words a rejection by `check` (e.g. `🔁 Repetition: repeated_ngram`)."""
    return f"{check.name}: {kind}"


class ResponseWatch:
    """The prefix checks of `response_problem`'s filters (a `PrefixWatch`): a repeated n-gram,
    a character loop and a meta-comment in the first lines; reasons as `response_problem` words
    them. The ending filter and the finish reason can only be judged at the end."""

    def __init__(self) -> None:
        self._watches = (
            (REPETITION, RepeatWatch.for_filter(REPETITION)),
            (CHARACTER_LOOP, LoopWatch.for_filter(CHARACTER_LOOP)),
            (META_COMMENT, HeadMetaWatch.for_filter(META_COMMENT)),
        )

    def feed(self, chunk: str) -> str | None:
        for check, watch in self._watches:
            if (kind := watch.feed(chunk)) is not None:
                return rejection(check, kind)
        return None


def stopped_early(result: InferenceResult) -> str | None:
    """The reason `chat` cancelled this request for, or None if it was not cancelled."""
    prefix = f"{EARLY_STOP}: "
    return result.finish_reason.removeprefix(prefix) if result.finish_reason.startswith(prefix) else None


def response_problem(result: InferenceResult) -> str | None:
    """Why a response is not a finished, clean response (None if it is): stopped early because
    a filter's rejection was certain, cut off by max_tokens, or rejected by the ending,
    repetition, character-loop or meta-comment filter."""
    if (reason := stopped_early(result)) is not None:
        return reason
    if result.finish_reason != "stop":
        return f"finish_reason: {result.finish_reason}"
    document = Document(text=result.text, id="")
    for check in _RESPONSE_FILTERS:
        verdict = check.filter(document)
        if verdict is not True:
            return rejection(check, verdict[1])
    return None


class StepProgress:
    """A progress bar over documents (with ETA), output tokens per second, measured from the
    start of the first rollout (so that a server's start-up does not count), and the requests
    in flight (`meter`, which the rollouts' tallies count into: `tally()`)."""

    def __init__(self, total: int, description: str, concurrency: int) -> None:
        self.total, self.description = total, description
        self.meter = RequestMeter(concurrency)
        self.bar: tqdm | None = None  # shown from the first finished document on
        self.first_started = float("inf")
        self.tokens = 0
        self.stopped_early = 0

    def tally(self) -> Tally:
        """A rollout's tally, its requests counted in flight."""
        return Tally(meter=self.meter)

    def document_done(self, tally: Tally) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.description, unit="doc", dynamic_ncols=True)
        self.first_started = min(self.first_started, tally.started)
        self.tokens += tally.completion_tokens
        self.stopped_early += tally.stopped_early.total()
        elapsed = max(time.monotonic() - self.first_started, 1e-6)
        postfix = f"{self.tokens / elapsed:.0f} tok/s, {self.meter.in_flight} in flight"
        if self.stopped_early:
            postfix += f", {self.stopped_early} stopped early"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(1)
        if self.bar.n == 1:
            self.bar.refresh()  # tqdm skips an update this soon after the bar appeared


def rollout_tally(progress: StepProgress | None) -> Tally:
    """A rollout's tally: counted in the step's requests in flight when it has a progress."""
    return progress.tally() if progress is not None else Tally()


@contextmanager
def progress_context(total: int, description: str, concurrency: int) -> Iterator[dict[str, StepProgress]]:
    progress = StepProgress(total, description, concurrency)
    try:
        yield {"progress": progress}
    finally:
        if progress.bar is not None:
            progress.bar.close()


def run_inference(
    folder: StepFolder,
    documents: list[Document],
    rollout: Callable[..., Any],
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
    context: str | Callable[[], Any],
    relevance: bool = False,
) -> list[Document]:
    """Run `rollout` over `documents` with datatrove's InferenceRunner (async requests,
    checkpoints, request cache) and return the documents with their rollout results.

    `context` is a progress-bar description, or a factory of datatrove's shared context (a
    context manager yielding the keyword arguments the rollout receives, `progress` included).
    With `relevance`, the rollout also receives a factory of relevance scorers on the step's
    server (`SelflengthenInferenceRunner`).
    A rerun after a crash or kill resumes: finished documents are not generated again.
    """
    if isinstance(context, str):
        context = partial(progress_context, len(documents), context, engine.concurrency)
    work = folder.work
    if model.kind == "embedded":
        prepare_embedded_model(model.spec)  # once; later calls find the converted folder
    runner = SelflengthenInferenceRunner(
        rollout_fn=rollout,
        config=inference_config(engine, model.source, str(work / "server_logs")),
        output_writer=JsonlWriter(
            str(work / "rollouts"), output_filename="${rank}_chunk_${chunk_index}.jsonl.gz"
        ),
        checkpoints_local_dir=str(work / "checkpoints"),
        records_per_chunk=_RECORDS_PER_CHUNK,
        metadata_key=RESULTS_KEY,
        shared_context=context,
        engine=engine,
        seed=sampling.seed,
        relevance=relevance,
    )
    pipeline = [partial(shard_documents, documents), runner]
    set_aside_damaged(work)
    try:
        if engine.slurm is not None:
            run_on_slurm(slurm_executor(pipeline, engine.slurm, work, folder.root.name), engine.slurm)
        elif engine.ray is not None:
            run_on_ray(ray_executor(pipeline, engine.ray, work), engine.ray)
        else:
            LocalPipelineExecutor(pipeline=pipeline, tasks=1, logging_dir=str(work / "logs")).run()
    except sqlite3.Error as error:
        raise cache_error(work, error) from None
    except ServerError as error:
        if engine.server_pid is not None:
            raise ServerFailed(
                f"model {model.spec}: the vLLM server at {engine.endpoint} failed during the step "
                f"({error}); rerun to resume"
            ) from None
        if engine.endpoint:
            raise ServerFailed(
                f"--endpoint {engine.endpoint}: no answer within {ENDPOINT_READY_SECONDS:.0f} s, "
                f"or it failed ({error}); rerun to resume"
            ) from None
        raise ServerFailed(
            f"model {model.spec}: the vLLM server failed or was not ready within "
            f"{engine.startup_timeout:.0f} s (server log in {work / 'server_logs'}); rerun to resume"
        ) from None
    # One record per document even if a resumed run rewrote a chunk (the last record wins).
    done = list({document.id: document for document in read_rollouts(work / "rollouts")}.values())
    refuse_when_every_request_failed(folder, done)
    return done


def shard_documents(documents: list[Document], _: Any, rank: int, world_size: int) -> Iterator[Document]:
    """The documents of one task (every `world_size`-th): the same split in every run, so that
    each task's checkpoints stay valid when a job is resumed."""
    yield from documents[rank::world_size]


def slurm_executor(
    pipeline: list[Any], options: SlurmOptions, work: Path, job_name: str
) -> SlurmPipelineExecutor:
    """datatrove's Slurm executor for a step, running in this Python environment."""
    activate = Path(sys.prefix) / "bin" / "activate"
    return SlurmPipelineExecutor(
        pipeline=pipeline,
        tasks=options.tasks,
        time=options.time,
        partition=options.partition,
        cpus_per_task=options.cpus_per_task,
        mem_per_cpu_gb=options.mem_per_cpu_gb,
        gpus_per_task=options.gpus_per_task,
        qos=options.qos,
        job_name=f"selflengthen-{job_name}",
        venv_path=str(activate) if activate.is_file() else None,
        sbatch_args=dict(options.sbatch_args),
        logging_dir=str(work / "logs"),
        slurm_logs_folder=str(work / "slurm_logs"),
        mail_type="NONE",
    )


def run_on_slurm(executor: SlurmPipelineExecutor, options: SlurmOptions) -> None:
    """Submit the job array (tasks that completed in an earlier run are skipped) and wait for
    every task; a job that leaves the queue with tasks unfinished is an error (rerun to resume)."""
    executor.run()
    with tqdm(total=executor.world_size, desc=f"{executor.job_name} (Slurm tasks)", unit="task") as bar:
        while incomplete := executor.get_incomplete_ranks():
            bar.n = executor.world_size - len(incomplete)
            bar.refresh()
            if not _job_queued(executor.job_id):
                time.sleep(5)  # a task may be writing its completion mark
                if still := executor.get_incomplete_ranks():
                    raise SelflengthenError(
                        f"Slurm job {executor.job_id} ended with {len(still)} of {executor.world_size} "
                        f"tasks unfinished (logs in {executor.slurm_logs_folder}); rerun to resume"
                    )
            time.sleep(options.poll_seconds)
        bar.n = executor.world_size
        bar.refresh()


def ray_executor(pipeline: list[Any], options: RayOptions, work: Path) -> RayPipelineExecutor:
    """datatrove's Ray executor for a step: one Ray task per shard of the documents."""
    return RayPipelineExecutor(
        pipeline=pipeline,
        tasks=options.tasks,
        cpus_per_task=options.cpus_per_task,
        gpus_per_task=options.gpus_per_task,
        mem_per_cpu_gb=options.mem_per_cpu_gb,
        logging_dir=str(work / "logs"),
    )


def run_on_ray(executor: RayPipelineExecutor, options: RayOptions) -> None:
    """Join the Ray cluster (or start a local runtime), run the tasks that are not complete yet
    and wait for them; tasks left unfinished are an error (rerun to resume)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    executor.run()
    if still := executor.get_incomplete_ranks():
        raise SelflengthenError(
            f"Ray: {len(still)} of {executor.world_size} tasks unfinished (logs in "
            f"{executor.logging_dir.path}); rerun to resume"
        )


def _job_queued(job_id: str | int | None) -> bool:
    if job_id in (None, -1, "-1"):
        return False
    listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True)
    return bool(listed.stdout.strip())


def read_rollouts(folder: Path) -> Iterator[Document]:
    """The documents the runner wrote, in file order; a file that cannot be read is named."""
    for path in sorted(folder.glob("*.jsonl.gz")):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                records = [json.loads(line) for line in handle]
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
            raise SelflengthenError(
                f"{path}: the step's rollouts cannot be read ({first_line(error)})"
            ) from None
        for record in records:
            yield Document(text=record.get("text", ""), id=record["id"], metadata=record.get("metadata", {}))


def word_summary(words: list[int]) -> dict[str, float | int | None]:
    if not words:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {
        "min": min(words),
        "median": statistics.median(words),
        "mean": round(statistics.fmean(words), 1),
        "max": max(words),
    }


def write_text_atomic(text: str, path: Path) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    temporary = temporary_beside(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    write_text_atomic(json.dumps(payload, ensure_ascii=False, indent=2), path)


def copy_file_atomic(source: Path, path: Path) -> None:
    """Copy `source` to a temporary file beside `path`, then rename it over `path`."""
    temporary = temporary_beside(path)
    shutil.copyfile(source, temporary)
    os.replace(temporary, path)


def finish_step(folder: StepFolder, frame: pl.DataFrame, stats: dict[str, Any]) -> dict[str, Any]:
    """Write the step's data, then its stats (last: their presence marks the step finished)."""
    shard = folder.data / "part-00000.parquet"
    write_table(frame, shard, overwrite=True)
    stats = {**stats, "shards": {shard.name: {"bytes": shard.stat().st_size, "sha256": file_sha256(shard)}}}
    write_json_atomic(stats, folder.stats)
    return stats


def sum_tallies(documents: list[Document]) -> tuple[dict[str, int], Counter[str], dict[str, dict[str, int]]]:
    """Requests and tokens summed over every rollout, the rejection reasons counted, and the
    requests stopped early with their completion tokens, per reason (most requests first)."""
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    reasons: Counter[str] = Counter()
    stopped: Counter[str] = Counter()
    stopped_tokens: Counter[str] = Counter()
    for document in documents:
        for result in document.metadata.get(RESULTS_KEY, []):
            tally = result.get("tally", {})
            for key in totals:
                totals[key] += int(tally.get(key, 0))
            reasons.update(tally.get("rejections", {}))
            for reason, counts in tally.get("stopped_early", {}).items():
                stopped[reason] += counts["requests"]
                stopped_tokens[reason] += counts["completion_tokens"]
    stopped_early = {
        reason: {"requests": count, "completion_tokens": stopped_tokens[reason]}
        for reason, count in stopped.most_common()
    }
    return totals, reasons, stopped_early


def server_use(documents: list[Document]) -> dict[str, Any]:
    """How the step used its server: the mean requests in flight while its rollouts ran (also
    over a resumed step's invocations), the attempts started ahead of need, and the requests
    and completion tokens of those that were not needed."""
    request_seconds, spans = 0.0, []
    speculative = {"attempts_started": 0, "requests": 0, "completion_tokens": 0}
    for document in documents:
        for result in document.metadata.get(RESULTS_KEY, []):
            tally = result.get("tally", {})
            request_seconds += float(tally.get("request_seconds", 0.0))
            if "span" in tally:
                spans.append(tuple(tally["span"]))
            for key in speculative:
                speculative[key] += int(tally.get("speculative", {}).get(key, 0))
    return {"requests_in_flight_mean": mean_in_flight(request_seconds, spans), "speculative": speculative}


def request_error_examples(documents: list[Document]) -> dict[str, str]:
    """One full server message per kind of refused request, over every rollout."""
    examples: dict[str, str] = {}
    for document in documents:
        for result in document.metadata.get(RESULTS_KEY, []):
            for kind, message in result.get("tally", {}).get("request_errors", {}).items():
                examples.setdefault(kind, message)
    return examples


def refuse_when_every_request_failed(folder: StepFolder, done: list[Document]) -> None:
    """A step whose every request the server refused has bad settings, not bad samples (e.g.
    `max_tokens` beyond the context): it must not be recorded as finished with 0 rows. Its
    checkpoints, request cache and task completions are removed, so that the rerun sends every
    request again, and
    the full messages are kept in `_work/logs/request_errors.json`."""
    totals, rejections, _ = sum_tallies(done)
    refused = sum(count for reason, count in rejections.items() if reason.startswith(f"{REQUEST_ERROR}: "))
    examples = request_error_examples(done)
    log = folder.work / "logs" / "request_errors.json"
    if examples:  # the step's log keeps one full message per kind, as its stats do
        write_json_atomic(examples, log)
    if totals["requests"] == 0 or refused < totals["requests"]:
        return
    for part in ("checkpoints", "rollouts", "logs/completions"):  # what marks documents and tasks done
        shutil.rmtree(folder.work / part, ignore_errors=True)
    kind, message = next(iter(examples.items()))
    raise SelflengthenError(
        f"{folder.root}: all {refused} requests failed ({kind}: {message[:300]}); the step is "
        f"not recorded as finished: fix the settings and rerun (full messages in {log})"
    )


def finished_stats(folder: StepFolder, sampling: SamplingOptions) -> dict[str, Any] | None:
    """The stats of the step if it finished, else None; a step finished with other sampling
    settings is refused rather than reported as if the new ones had made it."""
    if (stats := folder.recorded_stats()) is None:
        return None
    refuse_other_settings(folder.root, stats.get("sampling") or {}, sampling.lineage())
    return stats


def refuse_other_settings(folder: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to report the finished step in `folder`, made with the settings `before`, as if
    the settings `now` had made it (a one-line error naming what changed)."""
    changed = [f"{key} {before.get(key)} -> {now[key]}" for key in now if before.get(key) != now[key]]
    if changed:
        raise SelflengthenError(
            f"{folder}: finished earlier with other settings ({', '.join(changed)}); "
            "remove that folder to make the step again with the new ones"
        )


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
