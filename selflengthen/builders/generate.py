"""Step 2 of a macro-iteration: the Generator answers each instruction.

Each instruction is answered `samples_per_instruction` times; each sample is retried (up to
`max_retries` times, each with its own seed) until it finishes with `finish_reason == "stop"` and
passes the ending, repetition, character-loop and meta-comment filters; while the server has
idle slots, later retries start ahead of need (`selflengthen.builders.speculation`), and the
first passing attempt in order is kept all the same. The answers then go through the
length-weighted sampler. Output: `iter_<k>/initial/`.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document
from datatrove.pipeline.inference.types import InferenceResult

from selflengthen.builders.checks import DEFAULT_CHECKS, ResponseChecks
from selflengthen.builders.folder import step_folder
from selflengthen.builders.progress import StepProgress, rollout_tally
from selflengthen.builders.requests import chat
from selflengthen.builders.sample import length_weighted_sample
from selflengthen.builders.speculation import attempts_in_order
from selflengthen.builders.step import GenerationStep, run_step
from selflengthen.builders.tally import RESULTS_KEY, Tally
from selflengthen.config import GenerateSection
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.prompts import detect_language
from selflengthen.steps import INITIAL
from selflengthen.text import count_words

INITIAL_SCHEMA = {
    "id": pl.String,
    "iteration": pl.Int64,
    "instruction_id": pl.String,
    "instruction": pl.String,
    "language": pl.String,
    "response": pl.String,
    "words": pl.Int64,
    "finish_reason": pl.String,
    "attempts": pl.Int64,
    "model": pl.String,
    "sampling": pl.String,
}


@dataclass(frozen=True)
class GenerateSettings:
    """The generate step's settings: its config section (`generate:`), the sampling of its
    requests, and the checks every answer must pass."""

    section: GenerateSection = field(default_factory=GenerateSection)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    checks: ResponseChecks = DEFAULT_CHECKS


async def generate_rollout(
    document: Document, generate: Any, *, settings: GenerateSettings, progress: StepProgress | None = None
) -> dict[str, Any]:
    """Answer one instruction `samples_per_instruction` times (a datatrove rollout function)."""
    tally = rollout_tally(progress)
    messages = [{"role": "user", "content": document.text}]

    async def one_sample(sample: int) -> dict[str, Any]:
        async def attempt_answer(attempt: int, attempt_tally: Tally) -> InferenceResult | None:
            seed_parts = ("generate", document.id, sample, attempt)
            return await chat(
                generate, messages, settings.sampling, seed_parts, attempt_tally, watch=settings.checks.watch
            )

        attempts = attempts_in_order(
            attempt_answer, settings.section.max_retries, tally, settings.sampling.speculate
        )
        async with aclosing(attempts):
            async for attempt, result in attempts:
                if result is None:
                    return {
                        "sample": sample,
                        "response": None,
                        "attempts": attempt,
                        "failure": "request_error",
                    }
                verdict = settings.checks.verdict(result)
                if verdict is None:
                    return {
                        "sample": sample,
                        "response": result.text,
                        "finish_reason": "stop",
                        "attempts": attempt,
                    }
                tally.reject(verdict[0], result.text, verdict[1])
        return {
            "sample": sample,
            "response": None,
            "attempts": settings.section.max_retries,
            "failure": "retries_exhausted",
        }

    samples = await asyncio.gather(
        *(one_sample(index) for index in range(settings.section.samples_per_instruction))
    )
    if progress is not None:
        progress.document_done(tally)
    return {"samples": list(samples), "tally": tally.as_dict()}


def run_generate(
    run_dir: Path,
    iteration: int,
    instructions: pl.DataFrame,
    engine: EngineOptions,
    model: ResolvedModel,
    settings: GenerateSettings,
) -> dict[str, Any]:
    """Run the step (or return the stats of the finished one) and write `initial/`."""
    documents = [
        Document(text=row["instruction"], id=str(row["id"]), metadata={"iteration": iteration})
        for row in instructions.iter_rows(named=True)
    ]
    lineage = json.dumps(settings.sampling.lineage())

    def rows(done: list[Document]) -> tuple[pl.DataFrame, dict[str, Any]]:
        answers, failures = [], {"request_error": 0, "retries_exhausted": 0}
        for document in done:
            language = detect_language(document.text)
            for result in document.metadata.get(RESULTS_KEY, []):
                for sample in result["samples"]:
                    if sample["response"] is None:
                        failures[sample["failure"]] += 1
                        continue
                    answers.append(
                        {
                            "id": f"{document.id}-s{sample['sample']}",
                            "iteration": iteration,
                            "instruction_id": document.id,
                            "instruction": document.text,
                            "language": language,
                            "response": sample["response"],
                            "words": count_words(sample["response"]),
                            "finish_reason": sample["finish_reason"],
                            "attempts": sample["attempts"],
                            "model": model.spec,
                            "sampling": lineage,
                        }
                    )
        accepted = pl.DataFrame(answers, schema=INITIAL_SCHEMA).sort("id")
        kept = length_weighted_sample(accepted, "words", settings.sampling.seed)
        return kept, {
            "samples_requested": len(documents) * settings.section.samples_per_instruction,
            "samples_accepted": accepted.height,
            "dropped_by_sampler": accepted.height - kept.height,
            "failed_samples": failures,
        }

    step = GenerationStep(
        "generate",
        step_folder(run_dir, iteration, INITIAL),
        documents,
        partial(generate_rollout, settings=settings),
        rows,
        rows_in=len(documents),
        filters=settings.checks.describe(),
    )
    return run_step(step, iteration, engine, model, settings.sampling)
