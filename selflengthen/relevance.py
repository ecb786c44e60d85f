"""Whether an answer stays on its instruction, measured with the served model's own log-probabilities.

An answer is cut into `SEGMENTS` segments of equal word count (`segments`). Each segment s is
scored alone, as the beginning of the assistant's turn, twice: after a user turn holding the
instruction I, and after an empty user turn (the same chat template, so that only I differs).
Its **relevance ratio** is

    r(s) = PPL(s | I) / PPL(s | ∅) = exp( mean_t log p(t | ∅, s<t) − mean_t log p(t | I, s<t) )

over the segment's tokens t: the "instruction-following difficulty" of Li et al. (2023, "From
Quantity to Quality", the Cherry LLM data selection) computed per segment instead of per answer.
r < 1 where knowing the instruction makes the segment easier to predict, the segment is about
what was asked; r ≈ 1 (or above) where the instruction does not help, the segment is about
something else. A segment is scored without the answer before it: with that context the
instruction would add little to any later segment, on topic or not.

Each score is two prefill requests to a vLLM server (`/v1/chat/completions` with
`prompt_logprobs`, `continue_final_message`, and `max_tokens=1`, the least vLLM accepts), plus
one `/tokenize` request that finds the segment's tokens at the end of the prompt. Scores need a
server that returns prompt log-probabilities: ours, or an `--endpoint` running vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from selflengthen.errors import SelflengthenError
from selflengthen.text import token_spans

#: Segments per answer (fewer for a short answer: each holds at least `MIN_SEGMENT_WORDS`).
SEGMENTS = 3
MIN_SEGMENT_WORDS = 20
#: A longer segment is scored on its first this many words (the prompt must fit the context).
MAX_SEGMENT_WORDS = 600
#: A segment whose ratio is above this is off its instruction (`OnTopicFilter`'s default, the
#: share `eval --relevance` reports): on the embedded model, the threshold on a last third's ratio
#: that best separates texts as written from texts whose second half was replaced (Youden's J,
#: 0.963; 83% of replaced halves and 14% of texts as written above it: `benchmarks/relevance.py`).
OFF_TOPIC_RATIO = 0.96
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def segments(text: str, count: int = SEGMENTS) -> list[str]:
    """`text` cut into `count` consecutive pieces of (nearly) equal word count, each a verbatim
    slice from its first word to its last; fewer pieces when the text has fewer than
    `MIN_SEGMENT_WORDS` words per piece, none for a text without words. A piece longer than
    `MAX_SEGMENT_WORDS` keeps its first that many words."""
    spans = token_spans(text)
    words = len(spans.starts)
    parts = min(count, words // MIN_SEGMENT_WORDS) or (1 if words else 0)
    cuts = [round(index * words / parts) for index in range(parts + 1)] if parts else []
    pieces = []
    for first, end in itertools.pairwise(cuts):
        last = min(end, first + MAX_SEGMENT_WORDS) - 1
        pieces.append(text[int(spans.starts[first]) : int(spans.ends[last])])
    return pieces


def relevance_ratio(with_instruction: Sequence[float], without: Sequence[float]) -> float:
    """PPL(s | I) / PPL(s | ∅) from the log-probabilities of the same tokens of s in both
    prompts (see the module docstring)."""
    if not with_instruction or len(with_instruction) != len(without):
        raise ValueError("relevance_ratio needs the same, non-zero number of tokens in both prompts")
    mean_with = math.fsum(with_instruction) / len(with_instruction)
    mean_without = math.fsum(without) / len(without)
    return math.exp(mean_without - mean_with)


def segment_logprobs(prompt_logprobs: list[dict[str, Any] | None], segment_ids: list[int]) -> list[float]:
    """The log-probabilities of the segment's tokens at the end of a prompt (vLLM's
    `prompt_logprobs`, one entry per prompt token, keyed by token id), in order. Matched from the
    end: where the template or the tokenizer joined the segment's first token to what precedes
    it, the tokens from the first that differ are left out."""
    found: list[float] = []
    for token, entry in zip(reversed(segment_ids), reversed(prompt_logprobs), strict=False):
        if entry is None or (logprob := entry.get(str(token))) is None:
            break
        found.append(float(logprob["logprob"]))
    return found[::-1]


@dataclass
class RelevanceScorer:
    """Scores (instruction, answer) pairs on a vLLM server (`base_url`, without `/v1`), at most
    `concurrency` requests at once. The scores without an instruction are the same for every
    instruction and are kept per segment."""

    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 16
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _limit: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _unconditioned: dict[str, asyncio.Task[list[float]]] = field(default_factory=dict, init=False, repr=False)

    async def __aenter__(self) -> RelevanceScorer:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=_TIMEOUT)
        self._limit = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._unconditioned.values():
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    async def score(self, instruction: str, text: str) -> list[float]:
        """The relevance ratio of each of `text`'s segments to `instruction`."""
        pieces = segments(text)
        return list(await asyncio.gather(*(self._segment_ratio(instruction, piece) for piece in pieces)))

    async def _segment_ratio(self, instruction: str, piece: str) -> float:
        if piece not in self._unconditioned:
            self._unconditioned[piece] = asyncio.ensure_future(self._logprobs("", piece))
        with_instruction, without = await asyncio.gather(
            self._logprobs(instruction, piece), asyncio.shield(self._unconditioned[piece])
        )
        common = min(len(with_instruction), len(without))
        return relevance_ratio(with_instruction[-common:], without[-common:])

    async def _logprobs(self, instruction: str, piece: str) -> list[float]:
        tokenized = await self._post(
            "/tokenize", {"model": self.model, "prompt": piece, "add_special_tokens": False}
        )
        if not isinstance(tokenized.get("tokens"), list):
            raise SelflengthenError(
                f"{self.base_url}/tokenize: the server answered without `tokens`; "
                "relevance needs a vLLM server"
            )
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": piece}]
        answer = await self._post(
            "/v1/chat/completions",
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
                "add_generation_prompt": False,
                "continue_final_message": True,
            },
        )
        if not isinstance(answer.get("prompt_logprobs"), list):
            raise SelflengthenError(
                f"{self.base_url}: the server returned no prompt log-probabilities (`prompt_logprobs`); "
                "relevance needs a vLLM server"
            )
        found = segment_logprobs(answer["prompt_logprobs"], list(tokenized["tokens"]))
        if not found:
            raise SelflengthenError(f"{self.base_url}: the prompt does not end with the segment's tokens")
        return found

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._client is not None and self._limit is not None, "use `async with RelevanceScorer(...)`"
        async with self._limit:
            try:
                response = await self._client.post(path, json=payload)
            except httpx.HTTPError as error:
                raise SelflengthenError(f"{self.base_url}{path}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            raise SelflengthenError(
                f"{self.base_url}{path}: HTTP {response.status_code}: {' '.join(response.text[:300].split())}"
            )
        return response.json()


def score_pairs(
    base_url: str,
    model: str,
    pairs: Sequence[tuple[str, str]],
    api_key: str | None = None,
    concurrency: int = 16,
    description: str | None = None,
) -> list[list[float]]:
    """The relevance ratios of each (instruction, answer) pair's segments, scored on the server
    (a progress bar with `description`)."""

    async def run() -> list[list[float]]:
        with tqdm(total=len(pairs), desc=description, unit="answer", disable=description is None) as bar:
            async with RelevanceScorer(base_url, model, api_key, concurrency) as scorer:

                async def one(instruction: str, text: str) -> list[float]:
                    ratios = await scorer.score(instruction, text)
                    bar.update()
                    return ratios

                return list(await asyncio.gather(*(one(instruction, text) for instruction, text in pairs)))

    return asyncio.run(run())
