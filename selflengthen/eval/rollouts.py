"""The two datatrove rollouts of an evaluation: answer a prompt once (a cut-off answer is kept
and scored by its length, with its `finish_reason`), and have a judge rate an answer."""

from __future__ import annotations

import json
import re
from typing import Any

from datatrove.data import Document

from selflengthen.builders.progress import StepProgress, rollout_tally
from selflengthen.builders.requests import chat
from selflengthen.engine.options import SamplingOptions
from selflengthen.prompts import template

CRITERIA = ("relevance", "coherence", "accuracy", "consistency", "clarity", "creativity", "engagement")
_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_judgement(reply: str) -> dict[str, int] | None:
    """The seven 1-10 scores from a judge's reply (the first JSON object holding all of them),
    or None when the reply has no such object: never a guess."""
    for match in _OBJECT.finditer(reply):
        try:
            scores = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        if not isinstance(scores, dict):
            continue
        values = {criterion: scores.get(criterion) for criterion in CRITERIA}
        if all(
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10
            for value in values.values()
        ):
            return values  # type: ignore[return-value]
    return None


async def answer_rollout(
    document: Document, generate: Any, *, sampling: SamplingOptions, progress: StepProgress | None = None
) -> dict[str, Any]:
    tally = rollout_tally(progress)
    messages = [{"role": "user", "content": document.text}]
    result = await chat(generate, messages, sampling, ("eval", document.id), tally)
    if progress is not None:
        progress.document_done(tally)
    if result is None:
        return {"response": None, "finish_reason": None, "tally": tally.as_dict()}
    return {"response": result.text, "finish_reason": result.finish_reason, "tally": tally.as_dict()}


async def judge_rollout(
    document: Document,
    generate: Any,
    *,
    sampling: SamplingOptions,
    max_retries: int,
    progress: StepProgress | None = None,
) -> dict[str, Any]:
    """Ask for the scores until a reply parses (each retry with its own seed); after
    `max_retries` unparsable replies the item is a judge failure."""
    tally = rollout_tally(progress)
    language = document.metadata["language"] if document.metadata["language"] == "zh" else "en"
    prompt = template(language, "quality_judge").substitute(
        instruction=document.metadata["query"], response=document.text
    )
    scores, attempts = None, 0
    for attempts in range(1, max_retries + 1):
        result = await chat(
            generate, [{"role": "user", "content": prompt}], sampling, ("judge", document.id, attempts), tally
        )
        if result is not None and (scores := parse_judgement(result.text)) is not None:
            break
        tally.rejections["unparsable" if result is not None else "request_error"] += 1
    if progress is not None:
        progress.document_done(tally)
    return {"scores": scores, "attempts": attempts, "tally": tally.as_dict()}
