"""The length scores, as plain functions of word counts (0-100).

- Length following (LonGen-style): the target interval [a, b] of a constraint is
  about T: [0.8T, 1.2T]; range: [lo, hi]; above T: [T, 1.5T]; below T: [0.5T, T]. A response of
  L words scores 1 inside it, 2L/a - 1 below it and 3 - 2L/b above it, floored at 0; ×100.
- LongBench-Write S_l for required length x and output length y:
  100·max(0, 1 - (y/x - 1)/3) when y > x, else 100·max(0, 1 - (x/y - 1)/2).
"""

from __future__ import annotations

import re

CONSTRAINT_TYPES = ("about", "range", "above", "below")
_NUMBER = re.compile(r"\d[\d,]*")


def constraint_numbers(constraint: object) -> list[int]:
    """The integers in a constraint as LonGen-style files give it: 3000, "3000", "3,000 words",
    "2000-3000", [2000, 3000]."""
    if isinstance(constraint, int | float):
        return [int(constraint)]
    if isinstance(constraint, list | tuple):
        return [number for part in constraint for number in constraint_numbers(part)]
    return [int(match.replace(",", "")) for match in _NUMBER.findall(str(constraint))]


def target_interval(kind: str, constraint: object) -> tuple[float, float]:
    """[a, b] for a constraint of type `kind`; ValueError for an unknown type or a constraint
    without the numbers it needs."""
    numbers = constraint_numbers(constraint)
    if kind == "range":
        if len(numbers) != 2 or not 0 < numbers[0] <= numbers[1]:
            raise ValueError(f"a range needs two numbers lo <= hi, got {constraint!r}")
        return float(numbers[0]), float(numbers[1])
    if kind not in CONSTRAINT_TYPES:
        raise ValueError(f"unknown constraint type {kind!r} (expected one of {', '.join(CONSTRAINT_TYPES)})")
    if len(numbers) != 1 or numbers[0] <= 0:
        raise ValueError(f"{kind} needs one positive number, got {constraint!r}")
    target = float(numbers[0])
    return {
        "about": (0.8 * target, 1.2 * target),
        "above": (target, 1.5 * target),
        "below": (0.5 * target, target),
    }[kind]


def length_following_score(words: int, low: float, high: float) -> float:
    """100 inside [low, high], falling linearly to 0 at low/2 below and at 1.5·high above."""
    if words < low:
        return 100 * max(0.0, 2 * words / low - 1)
    if words > high:
        return 100 * max(0.0, 3 - 2 * words / high)
    return 100.0


def longbench_length_score(required: int, produced: int) -> float:
    """LongBench-Write's S_l: 100 at the required length; an empty output scores 0."""
    if produced <= 0:
        return 0.0
    if produced > required:
        return 100 * max(0.0, 1 - (produced / required - 1) / 3)
    return 100 * max(0.0, 1 - (required / produced - 1) / 2)


def length_bucket(target: float) -> str:
    """A length range label for reporting when the prompt file has none."""
    for limit, label in ((500, "<500"), (2000, "500-2000"), (5000, "2000-5000")):
        if target < limit:
            return label
    return ">=5000"
