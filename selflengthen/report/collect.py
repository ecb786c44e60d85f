"""Everything `selflengthen report` shows, read from a run folder into plain data (`collect_run`).

Only what the run wrote is read: each step's `stats.json` (the funnel, the drop reasons), its
rows (words per answer, growth, the sample browser), the roles' `train_result.json` (loss curves),
`eval/` (results and plots) and the run's config and recipe. A step that has not finished is
reported as not yet run; nothing here fails on a partly finished run.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from datatrove.data import Document

from selflengthen.builders.folder import StepFolder, step_folder
from selflengthen.builders.inference import read_rollouts
from selflengthen.builders.tally import RESULTS_KEY
from selflengthen.report.highlight import extension_segments
from selflengthen.steps import EXTENDED, INITIAL, INSTRUCTIONS
from selflengthen.train.roles import ROLES, trained_role

#: The funnel of one iteration: (label, step folder, stats key), in the order rows flow.
FUNNEL = (
    ("instructions", INSTRUCTIONS, "rows_out"),
    ("answers requested", INITIAL, "samples_requested"),
    ("answers accepted by the filters", INITIAL, "samples_accepted"),
    ("answers kept by the sampler", INITIAL, "rows_out"),
    ("rows that grew enough", EXTENDED, "rows_grown"),
    ("extended rows kept", EXTENDED, "rows_out"),
)
#: The drop counts of each generation step's stats.json shown as reasons.
REASON_KEYS = ("failed_samples", "failed_rows", "rejected_attempts")
#: Sample rows per iteration and kind (kept, not grown, rejected attempts) when not told otherwise.
DEFAULT_SAMPLES = 200
_ITERATION_FOLDER = re.compile(r"iter_(\d+)")


def _iterations(run_dir: Path) -> list[int]:
    found = [int(m[1]) for path in run_dir.iterdir() if (m := _ITERATION_FOLDER.fullmatch(path.name))]
    return sorted(found)


def _planned_iterations(run_dir: Path) -> int | None:
    try:
        return int(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["iterations"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def funnel(stats: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The funnel's stages with their counts (None: the step has not finished or does not say)."""
    return [
        {"stage": label, "step": folder, "count": (stats.get(folder) or {}).get(key)}
        for label, folder, key in FUNNEL
    ]


def drop_reasons(stats: dict[str, Any] | None) -> dict[str, Any]:
    """A finished step's reasons: rows or samples that failed, rejected attempts, the sampler's
    drops, and requests stopped early with the tokens they had generated."""
    if stats is None:
        return {}
    reasons: dict[str, Any] = {key: stats[key] for key in REASON_KEYS if stats.get(key)}
    if stats.get("dropped_by_sampler"):
        reasons["dropped_by_sampler"] = stats["dropped_by_sampler"]
    if stats.get("stopped_early"):
        reasons["stopped_early"] = stats["stopped_early"]
    return reasons


def _losses(run_dir: Path, iteration: int) -> dict[str, list[float]]:
    roles = {role: trained_role(run_dir, iteration, role) for role in ROLES}
    return {role: trained.result().get("losses", []) for role, trained in roles.items() if trained.finished()}


def _rollouts(folder: StepFolder) -> Iterator[tuple[Document, dict[str, Any]]]:
    """(document, rollout result) of each rollout the step wrote."""
    for document in read_rollouts(folder.work / "rollouts"):
        for result in document.metadata.get(RESULTS_KEY) or []:
            if isinstance(result, dict):
                yield document, result


def _rejected(document: Document, result: dict[str, Any], step: str) -> list[dict[str, Any]]:
    """The rejected attempts a rollout kept (their reason, what the filter found, their text)."""
    tallies = [result.get("tally")] + [sample.get("tally") for sample in result.get("samples") or []]
    rows = []
    for tally in filter(None, tallies):
        for example in tally.get("rejected_examples") or []:
            rows.append(
                {
                    "id": document.id,
                    "step": step,
                    # generate's documents are the instructions; extend's carry theirs in metadata
                    "instruction": document.metadata.get("instruction") or document.text,
                    "status": f"rejected: {example['reason']}",
                    "initial": document.text if step == "extend" else None,
                    "text": example["text"],
                    "detail": example.get("detail"),
                }
            )
    return rows


@dataclass
class _StepRollouts:
    """What the sample browser takes from a step's rollouts."""

    continued_at: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def _read_rollouts(folder: StepFolder, step: str, limit: int) -> _StepRollouts:
    """Where each kept extension's stage 2 began; up to `limit` rows the Extender did not grow
    enough (or whose extension left the topic: then with that extension) and rejected attempts."""
    found = _StepRollouts()
    for document, result in _rollouts(folder):
        if result.get("continued_at") is not None:
            found.continued_at[document.id] = result["continued_at"]
        if result.get("failure") and step == "extend" and len(found.failed) < limit:
            initial, dropped = document.text, result.get("extended_response")
            found.failed.append(
                {
                    "id": document.id,
                    "step": step,
                    "instruction": document.metadata.get("instruction", ""),
                    "status": result["failure"],
                    "initial": initial,
                    "rejections": (result.get("tally") or {}).get("rejections", {}),
                    "segments": extension_segments(initial, dropped) if dropped else None,
                }
            )
        if len(found.rejected) < limit:
            found.rejected.extend(_rejected(document, result, step)[: limit - len(found.rejected)])
    return found


def _kept_rows(frame: pl.DataFrame, continued_at: dict[str, int], limit: int) -> list[dict[str, Any]]:
    rows = []
    for row in frame.sort("id").head(limit).iter_rows(named=True):
        initial, extended = row["initial_response"], row["extended_response"]
        rows.append(
            {
                "id": row["id"],
                "step": "extend",
                "instruction": row["instruction"],
                "status": "kept",
                "initial": initial,
                "segments": extension_segments(initial, extended, continued_at.get(row["id"])),
                "words": [row["initial_words"], row["extended_words"]],
            }
        )
    return rows


def _iteration(run_dir: Path, iteration: int, samples: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    folders = {name: step_folder(run_dir, iteration, name) for name in (INSTRUCTIONS, INITIAL, EXTENDED)}
    stats = {name: folder.recorded_stats() for name, folder in folders.items()}
    words: dict[str, list[int]] = {}
    growth: list[float] = []
    browsed: list[dict[str, Any]] = []
    if stats[EXTENDED] is not None:  # kept rows first: the page opens the first row
        extended = folders[EXTENDED].read()
        words["extended"] = extended.get_column("extended_words").to_list()
        growth = (extended["extended_words"] / extended["initial_words"]).round(3).to_list()
        rollouts = _read_rollouts(folders[EXTENDED], "extend", samples)
        browsed += _kept_rows(extended, rollouts.continued_at, samples) + rollouts.failed + rollouts.rejected
    if stats[INITIAL] is not None:
        words["initial"] = folders[INITIAL].read().get_column("words").to_list()
        browsed += _read_rollouts(folders[INITIAL], "generate", samples).rejected
    summary = {
        "iteration": iteration,
        "finished": {name: value is not None for name, value in stats.items()},
        "funnel": funnel(stats),
        "reasons": {"generate": drop_reasons(stats[INITIAL]), "extend": drop_reasons(stats[EXTENDED])},
        "words": words,
        "growth": growth,
        "losses": _losses(run_dir, iteration),
    }
    return summary, [row | {"iteration": iteration} for row in browsed]


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _evaluation(run_dir: Path) -> dict[str, Any] | None:
    results = run_dir / "eval" / "results.md"
    if not results.is_file():
        return None
    plots = {
        path.stem: base64.b64encode(path.read_bytes()).decode("ascii")
        for path in sorted((run_dir / "eval" / "plots").glob("*.png"))
    }
    return {"results_md": results.read_text(encoding="utf-8"), "plots": plots}


def collect_run(run_dir: Path, samples: int = DEFAULT_SAMPLES) -> dict[str, Any]:
    """The report's data: the run's iterations (done and planned), their funnels, drop reasons,
    words, growth and losses, up to `samples` browsable rows per iteration and kind, the eval
    results and the config and recipe texts."""
    iterations, browsed = [], []
    for iteration in _iterations(run_dir):
        summary, rows = _iteration(run_dir, iteration, samples)
        iterations.append(summary)
        browsed.extend(rows)
    return {
        "name": run_dir.name,
        "planned_iterations": _planned_iterations(run_dir),
        "iterations": iterations,
        "samples": browsed,
        "evaluation": _evaluation(run_dir),
        "config": _read_text(run_dir / "config.yaml"),
        "recipe": _read_text(run_dir / "train_recipe.yaml"),
    }
