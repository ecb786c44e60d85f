"""What every generation step shares: its folder, the inference run, requests, stats, progress."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from datatrove.pipeline.writers import JsonlWriter
from tqdm.auto import tqdm

from selflengthen.engine.models import ResolvedModel, prepare_embedded_model
from selflengthen.engine.options import EngineOptions, SamplingOptions, SlurmOptions
from selflengthen.engine.server import ENDPOINT_READY_SECONDS, SelflengthenInferenceRunner, inference_config
from selflengthen.errors import SelflengthenError, ServerFailed
from selflengthen.filters import EndingFilter, MetaCommentFilter, RepetitionFilter, reason_kind
from selflengthen.tables import write_table

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

    def read(self) -> pl.DataFrame:
        return pl.read_parquet(self.data / "*.parquet")


def step_folder(run_dir: Path, iteration: int, step: str) -> StepFolder:
    return StepFolder(run_dir / f"iter_{iteration}" / step)


@dataclass
class Tally:
    """Requests, tokens and rejection reasons counted inside one rollout."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)  # when the rollout began

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "rejections": dict(self.rejections),
        }


async def chat(
    generate: Callable[[dict], Any],
    messages: list[dict[str, str]],
    sampling: SamplingOptions,
    seed_parts: tuple[object, ...],
    tally: Tally,
    continue_final: bool = False,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
) -> InferenceResult | None:
    """One chat request through the model's own chat template. With `continue_final`, the last
    (assistant) message is continued rather than answered; `stop` ends the generation at any
    of those strings. Returns `None` (and counts why) when the server rejects the request, e.g.
    a prompt longer than the context."""
    payload: dict[str, Any] = {"messages": messages, **sampling.payload(*seed_parts, max_tokens=max_tokens)}
    if stop:
        payload["stop"] = stop
    if continue_final:
        payload |= {"add_generation_prompt": False, "continue_final_message": True}
    tally.requests += 1
    try:
        result: InferenceResult = await generate(payload)
    except InferenceError as error:
        tally.rejections["request_error: " + str(error.error)[:80]] += 1
        return None
    tally.prompt_tokens += int(result.usage.get("prompt_tokens", 0))
    tally.completion_tokens += int(result.usage.get("completion_tokens", 0))
    return result


_RESPONSE_FILTERS = (EndingFilter(), RepetitionFilter(batch_size=1), MetaCommentFilter())


def response_problem(result: InferenceResult) -> str | None:
    """Why a response is not a finished, clean response (None if it is): cut off by max_tokens,
    or rejected by the ending, repetition or meta-comment filter."""
    if result.finish_reason != "stop":
        return f"finish_reason: {result.finish_reason}"
    document = Document(text=result.text, id="")
    for check in _RESPONSE_FILTERS:
        verdict = check.filter(document)
        if verdict is not True:
            return f"{check.name}: {reason_kind(verdict[1])}"
    return None


class StepProgress:
    """A progress bar over documents (with ETA) and output tokens per second, measured from the
    start of the first rollout (so that a server's start-up does not count)."""

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description = total, description
        self.bar: tqdm | None = None  # shown from the first finished document on
        self.first_started = float("inf")
        self.tokens = 0

    def document_done(self, tally: Tally) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.description, unit="doc", dynamic_ncols=True)
        self.first_started = min(self.first_started, tally.started)
        self.tokens += tally.completion_tokens
        elapsed = max(time.monotonic() - self.first_started, 1e-6)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:.0f} tok/s", refresh=False)
        self.bar.update(1)
        if self.bar.n == 1:
            self.bar.refresh()  # tqdm skips an update this soon after the bar appeared


@contextmanager
def progress_context(total: int, description: str) -> Iterator[dict[str, StepProgress]]:
    progress = StepProgress(total, description)
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
) -> list[Document]:
    """Run `rollout` over `documents` with datatrove's InferenceRunner (async requests,
    checkpoints, request cache) and return the documents with their rollout results.

    `context` is a progress-bar description, or a factory of datatrove's shared context (a
    context manager yielding the keyword arguments the rollout receives, `progress` included).
    A rerun after a crash or kill resumes: finished documents are not generated again.
    """
    if isinstance(context, str):
        context = partial(progress_context, len(documents), context)
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
    )
    pipeline = [partial(shard_documents, documents), runner]
    try:
        if engine.slurm is None:
            LocalPipelineExecutor(pipeline=pipeline, tasks=1, logging_dir=str(work / "logs")).run()
        else:
            run_on_slurm(slurm_executor(pipeline, engine.slurm, work, folder.root.name), engine.slurm)
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
    return list({document.id: document for document in read_rollouts(work / "rollouts")}.values())


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


def _job_queued(job_id: str | int | None) -> bool:
    if job_id in (None, -1, "-1"):
        return False
    listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True, text=True)
    return bool(listed.stdout.strip())


def read_rollouts(folder: Path) -> Iterator[Document]:
    """The documents the runner wrote, in file order."""
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                yield Document(
                    text=record.get("text", ""), id=record["id"], metadata=record.get("metadata", {})
                )


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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    write_text_atomic(json.dumps(payload, ensure_ascii=False, indent=2), path)


def copy_file_atomic(source: Path, path: Path) -> None:
    """Copy `source` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    shutil.copyfile(source, temporary)
    os.replace(temporary, path)


def finish_step(folder: StepFolder, frame: pl.DataFrame, stats: dict[str, Any]) -> dict[str, Any]:
    """Write the step's data, then its stats (last: their presence marks the step finished)."""
    write_table(frame, folder.data / "part-00000.parquet", overwrite=True)
    write_json_atomic(stats, folder.stats)
    return stats


def sum_tallies(documents: list[Document]) -> tuple[dict[str, int], Counter[str]]:
    """Requests and tokens summed over every rollout, and the rejection reasons counted."""
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    reasons: Counter[str] = Counter()
    for document in documents:
        for result in document.metadata.get(RESULTS_KEY, []):
            tally = result.get("tally", {})
            for key in totals:
                totals[key] += int(tally.get(key, 0))
            reasons.update(tally.get("rejections", {}))
    return totals, reasons


def step_stats(
    step: str,
    iteration: int,
    rows_in: int,
    output: pl.DataFrame,
    words_column: str,
    done: list[Document],
    model: ResolvedModel,
    sampling: SamplingOptions,
    started: float,
    **specific: Any,
) -> dict[str, Any]:
    """The stats every step writes: counts, requests and tokens, rejection reasons (per filter or
    check), the word-length summary of its output, lineage and wall time; plus `specific`."""
    totals, rejections = sum_tallies(done)
    return {
        "step": step,
        "iteration": iteration,
        "rows_in": rows_in,
        **specific,
        "rows_out": output.height,
        **totals,
        "rejected_attempts": dict(rejections.most_common()),
        "words": word_summary(output[words_column].to_list()),
        "model": model.spec,
        "sampling": sampling.lineage(),
        "seconds": round(time.monotonic() - started, 1),
    }
