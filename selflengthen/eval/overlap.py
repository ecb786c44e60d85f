"""Is an evaluation prompt one the loop has seen? Exact and near-duplicate matches.

Two texts are near-duplicates when most of the shorter one's word trigrams (lower-cased words,
punctuation stripped; the whole word sequence for texts under three words) also occur in the
other: the share is |A ∩ B| / min(|A|, |B|), so a prompt copied into a longer instruction, or
reworded in a few places, is caught, while two prompts on the same topic in other words are not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from selflengthen.text import tokens

#: The share of shared trigrams from which two texts count as the same prompt.
NEAR_DUPLICATE = 0.5
_SHINGLE = 3


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    """The text's word trigrams (its whole word sequence when it has fewer than three words)."""
    cleaned = ("".join(char for char in token if char.isalnum()) for token in tokens(text.lower()))
    words = [word for word in cleaned if word]
    if len(words) < _SHINGLE:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1))


def similarity(left: str, right: str) -> float:
    """The share of the smaller trigram set found in the other (0 for an empty text)."""
    a, b = shingles(left), shingles(right)
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


@dataclass(frozen=True)
class Overlap:
    prompt_id: str
    prompt: str
    seen: str
    similarity: float


def find_overlaps(
    prompts: Iterable[tuple[str, str]], seen: Iterable[str], threshold: float = NEAR_DUPLICATE
) -> list[Overlap]:
    """Each (id, prompt) whose text is an exact or near duplicate of a `seen` text, with the
    closest such text. Candidates are found through the shared trigrams (an inverted index), so
    thousands of seen instructions cost one pass."""
    seen_texts = list(dict.fromkeys(seen))
    seen_shingles = [shingles(text) for text in seen_texts]
    index: dict[tuple[str, ...], list[int]] = {}
    for position, grams in enumerate(seen_shingles):
        for gram in grams:
            index.setdefault(gram, []).append(position)
    overlaps = []
    for prompt_id, prompt in prompts:
        grams = shingles(prompt)
        shared = Counter(position for gram in grams for position in index.get(gram, ()))
        best: tuple[float, int] | None = None
        for position, count in shared.items():
            score = count / min(len(grams), len(seen_shingles[position]))
            if score >= threshold and (best is None or score > best[0]):
                best = (score, position)
        if best is not None:
            overlaps.append(Overlap(prompt_id, prompt, seen_texts[best[1]], round(best[0], 3)))
    return overlaps
