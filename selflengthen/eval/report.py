"""The evaluation report: `results.json` (every item with its score, and the aggregates),
`results.md` (one column per model), `plots/scatter.png` (required vs produced words, log-log,
one colour per model) and `plots/by_type.png` (mean score per constraint type and model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from selflengthen.builders.step import write_json_atomic, write_text_atomic
from selflengthen.eval.rollouts import CRITERIA

_GROUPS = (("type", "type"), ("range", "length range"), ("language", "language"))


def _mean(series: pl.Series) -> float | None:
    value = series.drop_nulls().mean()
    return None if value is None else round(float(value), 2)  # type: ignore[arg-type]


def aggregates(items: pl.DataFrame, judged: bool) -> dict[str, Any]:
    """Per model: the overall score, the score per type, length range and language (each with
    its item count), and with a judge the mean of each criterion and the judge failures."""
    result: dict[str, Any] = {}
    for (label,), frame in items.group_by("model", maintain_order=True):
        entry: dict[str, Any] = {"items": frame.height, "overall": _mean(frame["score"])}
        for column, _ in _GROUPS:
            entry[f"by_{column}"] = {
                str(key): {"score": _mean(group["score"]), "items": group.height}
                for (key,), group in frame.sort(column).group_by(column, maintain_order=True)
            }
        entry["mean_words"] = _mean(frame["words"])
        if judged:
            entry["quality"] = {criterion: _mean(frame[criterion]) for criterion in CRITERIA}
            entry["judge_failures"] = int(frame["judge_failed"].fill_null(True).sum())
        result[str(label)] = entry
    return result


def markdown_table(summary: dict[str, Any]) -> str:
    labels = list(summary)
    lines = ["| | " + " | ".join(f"`{label}`" for label in labels) + " |", "|---" * (len(labels) + 1) + "|"]

    def row(name: str, values: list[Any]) -> None:
        lines.append(
            f"| {name} | " + " | ".join("–" if value is None else str(value) for value in values) + " |"
        )

    row("**length score (overall)**", [summary[label]["overall"] for label in labels])
    for column, title in _GROUPS:
        keys = sorted({key for label in labels for key in summary[label][f"by_{column}"]})
        for key in keys:
            cells = [summary[label][f"by_{column}"].get(key) for label in labels]
            row(
                f"{title}: {key}",
                [f"{cell['score']} (n={cell['items']})" if cell else None for cell in cells],
            )
    row("mean words", [summary[label]["mean_words"] for label in labels])
    if all("quality" in summary[label] for label in labels):
        for criterion in CRITERIA:
            row(f"quality: {criterion} (1-10)", [summary[label]["quality"][criterion] for label in labels])
        row("judge failures", [summary[label]["judge_failures"] for label in labels])
    return "\n".join(lines) + "\n"


def _save(figure: Any, path: Path) -> None:
    """Save a figure beside `path`, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", metadata={"Software": None})
    temporary.replace(path)
    plt.close(figure)


def _plots(items: pl.DataFrame, summary: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for (label,), frame in items.group_by("model", maintain_order=True):
        required = frame.select(pl.coalesce("required", (pl.col("low") + pl.col("high")) / 2)).to_series()
        axes.scatter(required, frame["words"].clip(1), label=str(label), alpha=0.75)
    limits = [1, max(float(items["words"].max() or 1), float(items["high"].max() or 1), 10) * 1.5]
    axes.plot(limits, limits, color="grey", linewidth=0.8, linestyle="--", label="produced = required")
    axes.set(xscale="log", yscale="log", xlabel="required words", ylabel="produced words")
    axes.set_title("Length following")
    axes.legend(fontsize="small")
    figure.tight_layout()
    _save(figure, folder / "scatter.png")

    types = sorted({key for entry in summary.values() for key in entry["by_type"]})
    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    width = 0.8 / max(len(summary), 1)
    for index, (label, entry) in enumerate(summary.items()):
        values = [(entry["by_type"].get(kind) or {}).get("score") or 0 for kind in types]
        axes.bar(np.arange(len(types)) + index * width, values, width, label=label)
    axes.set_xticks(np.arange(len(types)) + width * (len(summary) - 1) / 2, types)
    axes.set(ylim=(0, 100), ylabel="length score", title="Length score by constraint type")
    axes.legend(fontsize="small")
    figure.tight_layout()
    _save(figure, folder / "by_type.png")


def write_report(items: pl.DataFrame, out: Path, judged: bool) -> dict[str, Any]:
    summary = aggregates(items, judged)
    results = {"aggregates": summary, "items": items.to_dicts()}
    write_json_atomic(results, out / "results.json")
    write_text_atomic(markdown_table(summary), out / "results.md")
    _plots(items, summary, out / "plots")
    return results
