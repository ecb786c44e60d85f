"""Bootstrap intervals for answer lengths, resampling prompts.

The answers to one prompt are not independent (two samples of the same prompt resemble each
other more than two prompts do), so every interval here resamples *prompts*, each with all of its
answers (a cluster bootstrap), and a comparison of two models resamples the same prompts for
both (paired): what varies between resamples is which prompts were asked, never which model
answered them. Intervals are percentile intervals of `resamples` seeded resamples.

Answers are held as a matrix with one row per prompt and one column per sample; NaN marks a
missing answer (a failed request), which then counts for nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic and its bootstrap interval."""

    value: float
    low: float
    high: float

    def rounded(self, digits: int) -> dict[str, float]:
        return {name: round(getattr(self, name), digits) for name in ("value", "low", "high")}


def _resampled_prompts(prompts: int, resamples: int, seed: int) -> np.ndarray:
    """A (resamples x prompts) matrix of prompt indices drawn with replacement."""
    if prompts == 0:
        raise ValueError("no prompts to resample")
    return np.random.default_rng(seed).integers(0, prompts, size=(resamples, prompts))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _pooled_mean(words: np.ndarray) -> np.ndarray:
    """The mean over every present answer, along the last two axes."""
    present = ~np.isnan(words)
    return np.where(present, words, 0).sum(axis=(-2, -1)) / present.sum(axis=(-2, -1))


def mean_and_median(
    words: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[Estimate, Estimate]:
    """Mean and median words over all answers, each with its interval (prompts resampled)."""
    picks = _resampled_prompts(words.shape[0], resamples, seed)
    drawn = words[picks]  # resamples x prompts x samples
    means = _pooled_mean(drawn)
    medians = np.nanmedian(drawn.reshape(resamples, -1), axis=1)
    mean = Estimate(float(np.nanmean(words)), *_interval(means, level))
    median = Estimate(float(np.nanmedian(words)), *_interval(medians, level))
    return mean, median


def paired_ratio(
    words: np.ndarray, base: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """Mean words of `words` over mean words of `base`, on the same prompts (row i of both is
    the same prompt), with the interval from resampling prompts for both at once."""
    if words.shape[0] != base.shape[0]:
        raise ValueError(f"paired matrices need the same prompts ({words.shape[0]} vs {base.shape[0]})")
    picks = _resampled_prompts(words.shape[0], resamples, seed)
    ratios = _pooled_mean(words[picks]) / _pooled_mean(base[picks])
    value = float(np.nanmean(words) / np.nanmean(base))
    return Estimate(value, *_interval(ratios, level))


def per_prompt_ratios(words: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Each prompt's mean words over the base's mean words on it (NaN where either has none)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": NaN is the answer
        return np.nanmean(words, axis=1) / np.nanmean(base, axis=1)
