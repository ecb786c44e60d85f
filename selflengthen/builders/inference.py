"""A step's inference run: datatrove's InferenceRunner over the step's documents, locally or
on Slurm or Ray, resumable from its checkpoints; the rollouts it wrote, read back."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.inference.types import ServerError
from datatrove.pipeline.writers import JsonlWriter
from tqdm.auto import tqdm

from selflengthen.atomic import write_json_atomic
from selflengthen.builders.folder import (
    StepFolder,
)
from selflengthen.builders.progress import progress_context
from selflengthen.builders.request_cache import cache_error, set_aside_damaged
from selflengthen.builders.tally import (
    REQUEST_ERROR,
    RESULTS_KEY,
    request_error_examples,
    sum_tallies,
)
from selflengthen.engine.models import ResolvedModel, prepare_embedded_model
from selflengthen.engine.options import EngineOptions, RayOptions, SamplingOptions, SlurmOptions
from selflengthen.engine.server import ENDPOINT_READY_SECONDS, SelflengthenInferenceRunner, inference_config
from selflengthen.errors import SelflengthenError, ServerFailed
from selflengthen.tables import first_line

_RECORDS_PER_CHUNK = 25


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
    refuse_missing_documents(folder, documents, done)
    refuse_when_every_request_failed(folder, done)
    return done


def refuse_missing_documents(folder: StepFolder, documents: list[Document], done: list[Document]) -> None:
    """Every document of the step must have its rollout record: datatrove's runner drops a
    document whose rollout raised or whose record it could not write (it only counts it in its
    stats), and marks it done, so the step must not finish without it."""
    recorded = {document.id for document in done}
    missing = [document.id for document in documents if document.id not in recorded]
    if missing:
        raise SelflengthenError(
            f"{folder.root}: {len(missing)} of {len(documents)} documents have no rollout record (first: "
            f"{missing[0]}; the runner could not finish or save them: see {folder.work / 'logs'}); "
            f"remove {folder.root} and rerun the step"
        )


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
