"""The evaluation report: `results.json` (every item with its score, and the aggregates),
`results.md` (one column per model), `plots/scatter.png` (required vs produced words, log-log,
one colour per model) and `plots/by_type.png` (mean score per constraint type and model).
With a growth evaluation (`eval --compare`), also its figures in both files (a row per model),
`plots/growth_words.png` (words per answer, a box per model, the base first) and
`plots/extender_growth.png` (the Extender's growth ratio of the kept rows, per iteration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from selflengthen.atomic import write_json_atomic, write_text_atomic
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


def _interval(estimate: dict[str, float] | None) -> str:
    if estimate is None:
        return "–"
    return f"{estimate['value']} [{estimate['low']}, {estimate['high']}]"


def growth_table(growth: dict[str, Any]) -> str:
    """The growth figures, a row per model (the base first)."""
    lines = [
        f"Held-out prompts: {growth['prompts']} × {growth['samples_per_prompt']} samples; "
        f"intervals: {growth['interval']}; {len(growth['excluded_prompts'])} prompt(s) left out "
        "as seen by the loop.",
        "",
        "| model | answers | mean words | median words | mean × base (paired) | prompts longer than base "
        "| cut at max_tokens | pass repetition | pass ending | accepted by the run's checks "
        "| length score (constrained) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    relevance = any("relevance_last" in entry for entry in growth["models"].values())
    if relevance:
        lines[2] += " relevance, first segment | relevance, last segment | last segment off topic |"
        lines[3] += "---|---|---|"
    for label, entry in growth["models"].items():
        longer = entry.get("prompts_longer_than_base_pct")
        cells = [
            f"`{label}`",
            str(entry["answers"]),
            _interval(entry["mean_words"]),
            _interval(entry["median_words"]),
            _interval(entry.get("ratio_to_base")),
            "–" if longer is None else f"{longer}%",
            f"{entry['cut_at_max_tokens_pct']}%",
            f"{entry['pass_repetition_pct']}%",
            f"{entry['pass_ending_pct']}%",
            f"{entry['accepted_pct']}%",
            "–" if entry.get("length_score") is None else str(entry["length_score"]),
        ]
        if relevance:
            off = entry.get("off_topic_end_pct")
            cells += [
                _interval(entry.get("relevance_first")),
                _interval(entry.get("relevance_last")),
                "–" if off is None else f"{off['value']}% [{off['low']}, {off['high']}]",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if by_length := growth.get("relevance_by_length"):
        ranges = [entry["words"] for entry in next(iter(by_length["models"].values()))]
        lines += [
            "",
            "Last segment off topic by answer length (words; ranges: terciles of "
            f"`{by_length['terciles_of']}`):",
            "",
            "| model | " + " | ".join(ranges) + " |",
            "|---|" + "---|" * len(ranges),
        ]
        for label, entries in by_length["models"].items():
            cells = [
                "–"
                if entry["off_topic_end_pct"] is None
                else f"{entry['off_topic_end_pct']}% of {entry['answers']}"
                for entry in entries
            ]
            lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    if growth["extender"]:
        lines += [
            "",
            "| iteration | Extender: initial rows | kept | median extended / initial words |",
            "|---|---|---|---|",
        ]
        for iteration, entry in growth["extender"].items():
            ratio = entry["median_ratio"] or "–"
            lines.append(f"| {iteration} | {entry['rows_in']} | {entry['rows_kept']} | {ratio} |")
    return "\n".join(lines) + "\n"


def _boxes(groups: list[list[float]], names: list[str], height: float) -> tuple[Any, Any]:
    """A figure with one box per group (mean marked), wide enough for its names."""
    figure, axes = plt.subplots(figsize=(max(4.5, 1.3 * len(names) + 2), height), dpi=100)
    axes.boxplot(groups, tick_labels=names, showmeans=True, meanprops={"marker": "D", "markersize": 5})
    return figure, axes


def _growth_plots(growth: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(growth["models"])
    figure, axes = _boxes([growth["models"][label]["words"] or [0] for label in labels], labels, 4.5)
    for position, label in enumerate(labels, start=1):
        axes.annotate(
            f"mean {growth['models'][label]['mean_words']['value']:.0f}",
            (position, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize="small",
        )
    axes.set(
        ylabel="words per answer",
        title=f"Held-out prompts ({growth['prompts']} × {growth['samples_per_prompt']})",
    )
    figure.tight_layout()
    _save(figure, folder / "growth_words.png")
    if not growth["extender"]:
        return
    extender = growth["extender"]
    names = [f"iter {k}\n{entry['rows_kept']}/{entry['rows_in']} kept" for k, entry in extender.items()]
    figure, axes = _boxes([entry["ratios"] or [float("nan")] for entry in extender.values()], names, 4.0)
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set(ylabel="extended / initial words", title="Extender growth of the kept rows")
    figure.tight_layout()
    _save(figure, folder / "extender_growth.png")


def write_report(
    items: pl.DataFrame, out: Path, judged: bool, growth: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the report files; with `growth`, each model's growth entry also gets its overall
    length score on the scored prompts."""
    summary = aggregates(items, judged)
    results: dict[str, Any] = {"aggregates": summary, "items": items.to_dicts()}
    markdown = markdown_table(summary)
    if growth is not None:
        for label, entry in growth["models"].items():
            entry["length_score"] = summary[label]["overall"] if label in summary else None
        results["growth"] = growth
        markdown += "\n## Length growth on held-out prompts\n\n" + growth_table(growth)
    write_json_atomic(results, out / "results.json")
    write_text_atomic(markdown, out / "results.md")
    _plots(items, summary, out / "plots")
    if growth is not None:
        _growth_plots(growth, out / "plots")
    return results
