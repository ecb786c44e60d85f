"""Step 1 of a macro-iteration: grow new instructions from seed instructions.

Each request shows two instructions from the pool (the seeds plus those accepted so far, in the
slot's language) as a numbered list inside a trailing assistant message, and the model writes
the next item (`continue_final_message`). The same model judges each candidate, decoding
greedily (a verdict, not a sample): does it ask for a long text (more than 2,000 words)?
Candidates with 4–499 words that pass the judge and are not duplicates (case and whitespace
normalised) are kept; each slot is retried up to `max_retries` times. Output: `iter_<k>/instructions/`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document

from selflengthen.builders.folder import step_folder
from selflengthen.builders.progress import StepProgress, progress_context, rollout_tally
from selflengthen.builders.requests import chat
from selflengthen.builders.step import GenerationStep, run_step
from selflengthen.builders.tally import RESULTS_KEY
from selflengthen.config import SelfInstructSection
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions, request_seed
from selflengthen.errors import SelflengthenError
from selflengthen.prompts import detect_language, judge_yes_words, shipped_seeds, template
from selflengthen.steps import INSTRUCTIONS
from selflengthen.tables import read_instructions
from selflengthen.text import count_words

MIN_WORDS, MAX_WORDS = 4, 499
_CANDIDATE_MAX_TOKENS = 200
_JUDGE_MAX_TOKENS = 8
_LEADING_NUMBER = re.compile(r"^\s*(?:\d+\s*[.)、．]\s*)?")

INSTRUCTION_SCHEMA = {
    "id": pl.String,
    "iteration": pl.Int64,
    "instruction": pl.String,
    "language": pl.String,
    "words": pl.Int64,
    "attempts": pl.Int64,
    "model": pl.String,
}


@dataclass(frozen=True)
class SelfInstructSettings:
    """The self-instruct step's settings: its config section (`self_instruct:`; the loop's
    extra instructions replace its `count`) and the sampling of its requests."""

    section: SelfInstructSection = field(default_factory=SelfInstructSection)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)


def seed_instructions(path: Path | None, language: str, flag: str) -> pl.DataFrame:
    """Seeds from a user's file (or ours), keeping only `language` unless it is "all"; `flag`
    names the setting in errors."""
    frame = read_instructions(path, "seed") if path else pl.DataFrame(shipped_seeds())
    if language != "all":
        frame = frame.filter(
            pl.col("instruction").map_elements(detect_language, return_dtype=pl.String) == language
        )
        if frame.height < 2:
            raise SelflengthenError(f"{flag} {language}: fewer than 2 seeds in that language")
    return frame


def normalise(instruction: str) -> str:
    return " ".join(instruction.lower().split())


class InstructionPool:
    """Seed and accepted instructions by language, with duplicate detection."""

    def __init__(self, seeds: list[str]) -> None:
        self.by_language: dict[str, list[str]] = {}
        self.seen: set[str] = set()
        for seed in seeds:
            self.add(seed)

    def add(self, instruction: str) -> bool:
        """Add `instruction` unless it duplicates one already in the pool."""
        key = normalise(instruction)
        if key in self.seen:
            return False
        self.seen.add(key)
        self.by_language.setdefault(detect_language(instruction), []).append(instruction)
        return True

    def examples(self, language: str, rng: random.Random) -> list[str]:
        candidates = self.by_language.get(language) or [
            i for group in self.by_language.values() for i in group
        ]
        return rng.sample(candidates, 2) if len(candidates) >= 2 else candidates * 2


def candidate_from(continuation: str) -> str:
    """The new list item: the first non-empty line of the continuation, without a number."""
    for line in continuation.splitlines():
        if line.strip():
            return _LEADING_NUMBER.sub("", line).strip()
    return ""


async def self_instruct_rollout(
    document: Document,
    generate: Any,
    *,
    settings: SelfInstructSettings,
    pool: InstructionPool,
    progress: StepProgress | None = None,
) -> dict[str, Any]:
    """Fill one instruction slot (a datatrove rollout function)."""
    tally = rollout_tally(progress)
    language = document.metadata["language"]
    rng = random.Random(request_seed(settings.sampling.seed, "self-instruct", document.id))
    judge_sampling = dataclasses.replace(settings.sampling, temperature=0.0)  # a verdict, not a sample
    accepted: str | None = None
    attempt = 0
    for attempt in range(1, settings.section.max_retries + 1):
        first, second = pool.examples(language, rng)
        listing = [
            {"role": "user", "content": template(language, "self_instruct").substitute()},
            {"role": "assistant", "content": f"1. {first}\n2. {second}\n3."},
        ]
        seed_parts = ("self-instruct", document.id, attempt)
        # Only the third item is used: stop where the model starts a fourth.
        result = await chat(
            generate,
            listing,
            settings.sampling,
            seed_parts,
            tally,
            True,
            max_tokens=_CANDIDATE_MAX_TOKENS,
            stop=["\n4"],
        )
        if result is None:
            break
        candidate = candidate_from(result.text)
        if not MIN_WORDS <= count_words(candidate) <= MAX_WORDS:
            tally.rejections["length"] += 1
            continue
        if normalise(candidate) in pool.seen:
            tally.rejections["duplicate"] += 1
            continue
        question = [
            {"role": "user", "content": template(language, "judge").substitute(instruction=candidate)}
        ]
        verdict = await chat(
            generate, question, judge_sampling, (*seed_parts, "judge"), tally, max_tokens=_JUDGE_MAX_TOKENS
        )
        if verdict is None:
            break
        if not verdict.text.strip().lower().startswith(judge_yes_words(language)):
            tally.rejections["judge_no"] += 1
            continue
        if pool.add(candidate):
            accepted = candidate
            break
        tally.rejections["duplicate"] += 1
    if progress is not None:
        progress.document_done(tally)
    return {"instruction": accepted, "language": language, "attempts": attempt, "tally": tally.as_dict()}


@contextmanager
def _pool_context(total: int, description: str, concurrency: int, seeds: list[str]) -> Any:
    with progress_context(total, description, concurrency) as context:
        yield {**context, "pool": InstructionPool(seeds)}


def run_self_instruct(
    run_dir: Path,
    iteration: int,
    seeds: pl.DataFrame,
    engine: EngineOptions,
    model: ResolvedModel,
    settings: SelfInstructSettings,
) -> dict[str, Any]:
    """Run the step (or return the stats of the finished one) and write `instructions/`."""
    seed_texts = [str(text) for text in seeds["instruction"].to_list()]
    languages = [detect_language(text) for text in seed_texts]
    choose = random.Random(request_seed(settings.sampling.seed, "self-instruct-languages"))
    documents = [
        Document(text="", id=f"i{iteration}-{slot:05d}", metadata={"language": choose.choice(languages)})
        for slot in range(settings.section.count)
    ]

    def rows(done: list[Document]) -> tuple[pl.DataFrame, dict[str, Any]]:
        instructions, seen = [], {normalise(text) for text in seed_texts}
        duplicates_after_resume = unfilled = 0
        for document in done:
            for result in document.metadata.get(RESULTS_KEY, []):
                instruction = result["instruction"]
                if instruction is None:
                    unfilled += 1
                elif normalise(instruction) in seen:  # possible only across a resumed run
                    duplicates_after_resume += 1
                else:
                    seen.add(normalise(instruction))
                    instructions.append(
                        {
                            "id": document.id,
                            "iteration": iteration,
                            "instruction": instruction,
                            "language": result["language"],
                            "words": count_words(instruction),
                            "attempts": result["attempts"],
                            "model": model.spec,
                        }
                    )
        return pl.DataFrame(instructions, schema=INSTRUCTION_SCHEMA).sort("id"), {
            "requested": settings.section.count,
            "unfilled_slots": unfilled,
            "duplicates_after_resume": duplicates_after_resume,
        }

    step = GenerationStep(
        "self-instruct",
        step_folder(run_dir, iteration, INSTRUCTIONS),
        documents,
        partial(self_instruct_rollout, settings=settings),
        rows,
        rows_in=len(seed_texts),
        context=partial(
            _pool_context, len(documents), f"self-instruct (iter {iteration})", engine.concurrency, seed_texts
        ),
    )
    return run_step(step, iteration, engine, model, settings.sampling)
