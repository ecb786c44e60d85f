"""Does the relevance ratio (`selflengthen.relevance`) tell text on its instruction from text
that is not, and what does it cost next to generation?

Texts, each with a fitting instruction written from its title:
- human-written texts of this machine: sections of Python's language reference (`pydoc_data`,
  instruction: the section's title), manual pages of section 1 (the DESCRIPTION section; the
  instruction names the command and its NAME line) and Debian's licence texts (the licence's
  name), each cut to its first `WORDS` words;
- the embedded model's answers to the evaluation's held-out prompts, as the seed-0 experiment
  wrote them (`docs/experiment/seed-0/heldout_answers/base.jsonl`, `--answers`).

The cost: `--cost-answers` of those prompts are answered here (up to `--max-tokens` tokens each),
timed, and scored, timed, on the same server: scoring time as a share of generation time.

Cases, each a ROC AUC (the chance that an off-topic example has the higher ratio) with a 95%
bootstrap interval:
- `mismatched`: a text with its instruction vs. with another text's instruction (from another
  source for the human texts), scored by the geometric mean of its segments' ratios;
- `second half replaced`: a text vs. the same text whose second half is another text's (from
  another source), both with the first text's instruction, scored by the last segment's ratio.

Prints the figures, the threshold on the last segment's ratio that best separates the second
case (Youden's J) with its rates, and the scoring time as a share of the generation time.

    python benchmarks/relevance.py [--texts-per-source 30] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pydoc_data.topics
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_runs import serving

from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions
from selflengthen.eval.prompts import packaged_prompts
from selflengthen.relevance import RelevanceScorer
from selflengthen.text import token_spans

WORDS = 450
SEED_0_ANSWERS = Path(__file__).resolve().parents[1] / "docs/experiment/seed-0/heldout_answers/base.jsonl"
LICENCES = {
    "Apache-2.0": "the Apache License, Version 2.0",
    "Artistic": "the Artistic License",
    "BSD": "the BSD license",
    "CC0-1.0": "the Creative Commons CC0 1.0 Universal public domain dedication",
    "GFDL-1.3": "the GNU Free Documentation License, version 1.3",
    "GPL-2": "the GNU General Public License, version 2",
    "GPL-3": "the GNU General Public License, version 3",
    "LGPL-2.1": "the GNU Lesser General Public License, version 2.1",
    "LGPL-3": "the GNU Lesser General Public License, version 3",
    "MPL-2.0": "the Mozilla Public License, version 2.0",
}
Example = tuple[str, str, str]  # source, instruction, text


def first_words(text: str, count: int) -> str | None:
    spans = token_spans(text)
    return text[: int(spans.ends[count - 1])] if len(spans.starts) >= count else None


def python_reference(limit: int) -> list[Example]:
    found, seen = [], set()
    for _, page in sorted(pydoc_data.topics.topics.items()):
        title, _, body = page.partition("\n")
        body = re.sub(r"^[*=-]+\n", "", body.lstrip("\n"))
        text = first_words(body, WORDS)
        if text and text not in seen:
            seen.add(text)
            found.append(
                (
                    "python reference",
                    f'Write the section "{title.strip()}" of the Python language reference.',
                    text,
                )
            )
    return random.Random(0).sample(found, min(limit, len(found)))


def manual_pages(limit: int) -> list[Example]:
    # Google Cloud's thousands of `gcloud_*` pages would crowd out every other command.
    pages = sorted(page for page in Path("/usr/share/man/man1").glob("*.1.gz") if "_" not in page.name)
    random.Random(0).shuffle(pages)
    found = []
    for page in pages:
        if len(found) == limit:
            break
        rendered = subprocess.run(
            ["man", "-P", "cat", str(page)],
            capture_output=True,
            text=True,
            env={**os.environ, "MANWIDTH": "80"},
        ).stdout
        name = re.search(r"^NAME\n\s+(\S+) \\?[-–—]+ (.+?)\n\n", rendered, re.MULTILINE | re.DOTALL)
        description = re.search(r"^DESCRIPTION\n(.+?)(?=^\S)", rendered, re.MULTILINE | re.DOTALL)
        if not name or not description:
            continue
        text = first_words(re.sub(r"\n\s+", "\n", description.group(1)).strip(), WORDS)
        if text:
            summary = " ".join(name.group(2).split())
            found.append(
                ("manual pages", f"Write the manual page of the `{name.group(1)}` command ({summary}).", text)
            )
    return found


def licences(limit: int) -> list[Example]:
    found = []
    for file, name in LICENCES.items():
        path = Path("/usr/share/common-licenses") / file
        text = first_words(path.read_text(errors="replace"), WORDS) if path.exists() else None
        if text:
            found.append(("licences", f"Write the text of {name}.", text))
    return found[:limit]


def donor_index(examples: list[Example], index: int, rng: random.Random) -> int:
    """Another example, from another source when there is one."""
    others = [j for j, other in enumerate(examples) if other[0] != examples[index][0]] or [
        j for j in range(len(examples)) if j != index
    ]
    return rng.choice(others)


def second_half_replaced(text: str, donor: str) -> str:
    spans, donor_spans = token_spans(text), token_spans(donor)
    half = len(spans.starts) // 2
    donor_from = int(donor_spans.starts[len(donor_spans.starts) // 2])
    return text[: int(spans.ends[half - 1])] + " " + donor[donor_from:]


def auc(on_topic: list[float], off_topic: list[float]) -> float:
    """P(off > on) + P(off == on) / 2: the Mann-Whitney statistic."""
    wins = sum((off > on) + 0.5 * (off == on) for off in off_topic for on in on_topic)
    return wins / (len(on_topic) * len(off_topic))


def auc_interval(on_topic: list[float], off_topic: list[float], rounds: int = 1000) -> tuple[float, float]:
    rng = random.Random(0)
    values = sorted(
        auc(rng.choices(on_topic, k=len(on_topic)), rng.choices(off_topic, k=len(off_topic)))
        for _ in range(rounds)
    )
    return values[int(0.025 * rounds)], values[int(0.975 * rounds) - 1]


def geometric_mean(ratios: list[float]) -> float:
    return math.exp(sum(map(math.log, ratios)) / len(ratios))


async def generate(url: str, model: str, prompts: list[str], max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:

        async def answer(index: int, prompt: str) -> str:
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": 0.7,
                    "top_p": 0.9,
                    "seed": index,
                },
            )
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]

        return list(await asyncio.gather(*(answer(index, prompt) for index, prompt in enumerate(prompts))))


async def score_cases(
    url: str, model: str, examples: list[Example]
) -> dict[str, tuple[list[float], list[float]]]:
    rng = random.Random(1)
    mismatched = [examples[donor_index(examples, index, rng)][1] for index in range(len(examples))]
    replaced = [
        second_half_replaced(text, examples[donor_index(examples, index, rng)][2])
        for index, (_, _, text) in enumerate(examples)
    ]
    async with RelevanceScorer(url, model, concurrency=32) as scorer:
        fitting = await asyncio.gather(
            *(scorer.score(instruction, text) for _, instruction, text in examples)
        )
        wrong = await asyncio.gather(
            *(scorer.score(other, text) for (_, _, text), other in zip(examples, mismatched, strict=True))
        )
        spliced = await asyncio.gather(
            *(
                scorer.score(instruction, text)
                for (_, instruction, _), text in zip(examples, replaced, strict=True)
            )
        )
    return {
        "mismatched": ([geometric_mean(r) for r in fitting], [geometric_mean(r) for r in wrong]),
        "second half replaced": ([r[-1] for r in fitting], [r[-1] for r in spliced]),
    }


def youden(on_topic: list[float], off_topic: list[float]) -> tuple[float, float, float]:
    """The threshold (flag ratio > t) with the largest TPR - FPR; (t, TPR, FPR)."""
    best = (math.inf, 0.0, 0.0)
    for threshold in sorted(set(on_topic + off_topic)):
        tpr = sum(value > threshold for value in off_topic) / len(off_topic)
        fpr = sum(value > threshold for value in on_topic) / len(on_topic)
        if tpr - fpr > best[1] - best[2]:
            best = (threshold, tpr, fpr)
    return best


def report(name: str, cases: dict[str, tuple[list[float], list[float]]]) -> dict[str, object]:
    figures: dict[str, object] = {}
    for case, (on_topic, off_topic) in cases.items():
        value, (low, high) = auc(on_topic, off_topic), auc_interval(on_topic, off_topic)
        median_on, median_off = sorted(on_topic)[len(on_topic) // 2], sorted(off_topic)[len(off_topic) // 2]
        print(
            f"  {name:<18} {case:<22} AUC {value:.3f} [{low:.3f}, {high:.3f}]  "
            f"median ratio on {median_on:.3f} / off {median_off:.3f}  (n = {len(on_topic)})"
        )
        figures[case] = {
            "auc": value,
            "interval": [low, high],
            "median_on": median_on,
            "median_off": median_off,
            "n": len(on_topic),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts-per-source", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--answers", type=Path, default=SEED_0_ANSWERS, help="Held-out answers (JSONL).")
    parser.add_argument("--cost-answers", type=int, default=16, help="Answers generated here for the cost.")
    parser.add_argument("--max-tokens", type=int, default=1000, help="Of each answer generated for the cost.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    human = (
        python_reference(args.texts_per_source)
        + manual_pages(args.texts_per_source)
        + licences(args.texts_per_source)
    )
    queries = dict(
        zip(*packaged_prompts("heldout_en.jsonl").select("id", "query").to_dict().values(), strict=True)
    )
    answered = []
    for line in args.answers.read_text().splitlines():
        row = json.loads(line)
        if row["sample"] == 1 and row["text"] and len(token_spans(row["text"]).starts) >= 60:
            answered.append(("answers", queries[row["prompt_id"]], row["text"]))
    model = resolve_model(args.model)
    with serving(EngineOptions(max_model_len=4096), model.source, 0) as url:
        prompts = [query for _, query, _ in answered[: args.cost_answers]]
        started = time.perf_counter()
        fresh = asyncio.run(generate(url, model.source, prompts, args.max_tokens))
        generation_seconds = time.perf_counter() - started
        started = time.perf_counter()
        asyncio.run(_score_answers_once(url, model.source, list(zip(prompts, fresh, strict=True))))
        scoring_seconds = time.perf_counter() - started
        human_cases = asyncio.run(score_cases(url, model.source, human))
        answer_cases = asyncio.run(score_cases(url, model.source, answered))
    print(
        f"model {args.model}; {len(human)} human-written texts ({WORDS} words each), "
        f"{len(answered)} held-out answers with >= 60 words"
    )
    figures = {
        "human-written": report("human-written", human_cases),
        "model answers": report("model answers", answer_cases),
    }
    pooled_on = human_cases["second half replaced"][0] + answer_cases["second half replaced"][0]
    pooled_off = human_cases["second half replaced"][1] + answer_cases["second half replaced"][1]
    threshold, tpr, fpr = youden(pooled_on, pooled_off)
    print(
        f"threshold on the last segment's ratio (both sets, Youden's J): > {threshold:.3f} flags "
        f"{tpr:.1%} of replaced second halves and {fpr:.1%} of the texts as written"
    )
    share = scoring_seconds / generation_seconds
    words = sum(len(token_spans(text).starts) for text in fresh)
    print(
        f"cost: generating {len(fresh)} answers ({words} words) {generation_seconds:.1f} s; "
        f"scoring them {scoring_seconds:.1f} s = {share:.1%} of it"
    )
    if args.json:
        args.json.write_text(
            json.dumps({**figures, "threshold": [threshold, tpr, fpr], "cost_share": share}, indent=2)
        )


async def _score_answers_once(url: str, model: str, pairs: list[tuple[str, str]]) -> None:
    """What a step pays: each answer scored once against its own instruction."""
    async with RelevanceScorer(url, model, concurrency=32) as scorer:
        await asyncio.gather(*(scorer.score(instruction, text) for instruction, text in pairs))


if __name__ == "__main__":
    main()
