"""Word-length histograms for cards: one figure per dataset config, one series per iteration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def length_histogram(
    words_by_label: dict[str, list[int]], title: str, path: Path, unit: str = "answer"
) -> None:
    """Save a PNG with one step-outline histogram per label (e.g. "iteration 1"), on shared bins;
    `unit` names what a row's words belong to (the x axis: "words per <unit>")."""
    values = [value for words in words_by_label.values() for value in words]
    low, high = (min(values), max(values)) if values else (0, 1)
    bins = np.linspace(low, max(high, low + 1), 21)
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, words in words_by_label.items():
        axes.hist(words, bins=bins, histtype="step", linewidth=1.6, label=f"{label} (n={len(words)})")
    axes.set_title(title)
    axes.set_xlabel(f"words per {unit}")
    axes.set_ylabel("rows")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if words_by_label:
        axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
