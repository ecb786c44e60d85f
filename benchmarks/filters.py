"""Throughput of RepetitionFilter against a straightforward pure-Python version of the same rule.

Documents pass (no repeated n-gram), so both sides scan every n-gram. The baseline is what one
would write first: segment with `selflengthen.text.content_tokens` and keep a set of n-gram tuples.
The filter runs as datatrove runs it: `filter_batch` on batches of its `batch_size`.
Both are timed in this run (best of several interleaved rounds), and the ratio is printed.

    python benchmarks/filters.py [--docs 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from datatrove.data import Document

from selflengthen.filters import RepetitionFilter
from selflengthen.text import content_tokens, count_words

TARGET = 10.0


def baseline_keeps(text: str, ngram: int) -> bool:
    words = content_tokens(text)
    seen: set[tuple[str, ...]] = set()
    for first in range(len(words) - ngram + 1):
        gram = tuple(words[first : first + ngram])
        if gram in seen:
            return False
        seen.add(gram)
    return True


def english_documents(count: int, typographic: bool, rng: random.Random) -> list[str]:
    """2,000-word documents from a Zipf-distributed vocabulary, in sentences and paragraphs."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(8000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    ends = [".", ",", ";", "—", "’s", "…"] if typographic else [".", ",", ";", ":", "'s", "!"]
    documents = []
    for _ in range(count):
        words = rng.choices(vocabulary, weights, k=2000)
        for position in range(12, len(words), 13):
            words[position] += rng.choice(ends)
        for position in range(150, len(words), 151):
            words[position] += "\n\n"
        documents.append(" ".join(words))
    return documents


def chinese_documents(count: int, rng: random.Random) -> list[str]:
    """3,000-character documents of common ideographs with Chinese punctuation."""
    characters = [chr(code) for code in range(0x4E00, 0x4E00 + 3500)]
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(characters))]
    documents = []
    for _ in range(count):
        body = rng.choices(characters, weights, k=3000)
        for position in range(17, len(body), 18):
            body[position] = rng.choice("，。；！？")
        documents.append("".join(body))
    return documents


def best_time(run: Callable[[], list[bool]], rounds: int) -> tuple[float, list[bool]]:
    best, decisions = float("inf"), []
    for _ in range(rounds):
        start = time.perf_counter()
        decisions = run()
        best = min(best, time.perf_counter() - start)
    return best, decisions


def measure(label: str, texts: list[str], ngram: int, rounds: int) -> float:
    documents = [Document(text=text, id=str(i)) for i, text in enumerate(texts)]
    repetition = RepetitionFilter()
    size = repetition.batch_size

    def ours() -> list[bool]:
        results = []
        for begin in range(0, len(documents), size):
            results += [result is True for result in repetition.filter_batch(documents[begin : begin + size])]
        return results

    def baseline() -> list[bool]:
        return [baseline_keeps(text, ngram) for text in texts]

    baseline_time, baseline_decisions = best_time(baseline, rounds)
    our_time, our_decisions = best_time(ours, rounds)
    assert our_decisions == baseline_decisions, "decisions differ from the baseline"
    assert all(our_decisions), "benchmark documents must pass, so that every n-gram is scanned"
    ratio = baseline_time / our_time
    words = sum(count_words(text) for text in texts) / len(texts)
    print(
        f"{label:<34} {words:>6.0f} {len(texts) / baseline_time:>12.0f} {len(texts) / our_time:>12.0f} "
        f"{ratio:>7.1f}x  {'met' if ratio >= TARGET else 'MISSED'}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400, help="documents per corpus")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (best is kept)")
    args = parser.parse_args()
    rng = random.Random(20241031)
    print(f"RepetitionFilter vs pure-Python n-gram set; target >= {TARGET:.0f}x documents/s")
    print(f"{'corpus':<34} {'words':>6} {'baseline/s':>12} {'filter/s':>12} {'ratio':>8}")
    measure("English, 2,000 words (ASCII)", english_documents(args.docs, False, rng), 10, args.rounds)
    measure("English, 2,000 words (typographic)", english_documents(args.docs, True, rng), 10, args.rounds)
    measure("Chinese, 3,000 characters", chinese_documents(args.docs, rng), 13, args.rounds)


if __name__ == "__main__":
    main()
