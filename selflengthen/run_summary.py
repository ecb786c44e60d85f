"""What a run made, per iteration: rows and word lengths of each step and each role's training
loss (from the stats the steps wrote), and the table `selflengthen run` prints of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.builders.collect import long_folder
from selflengthen.builders.folder import step_folder
from selflengthen.builders.length_control import final_folder
from selflengthen.steps import EXTENDED, FINAL, INITIAL, INSTRUCTIONS, LONG
from selflengthen.train.roles import ROLES, trained_role


def run_summary(run_dir: Path, iterations: int) -> dict[str, Any]:
    """Per iteration: rows and word lengths of each step, and each role's training loss (from
    the stats the steps wrote)."""
    rows = []
    for iteration in range(1, iterations + 1):
        row: dict[str, Any] = {"iteration": iteration}
        for step in (INSTRUCTIONS, INITIAL, EXTENDED):
            stats = step_folder(run_dir, iteration, step).recorded_stats()
            row[step] = stats["rows_out"] if stats else None
            if step != INSTRUCTIONS:
                row[f"{step}_words"] = stats["words"] if stats else None
        for role in ROLES:
            trained = trained_role(run_dir, iteration, role)
            row[f"{role}_loss"] = round(trained.result()["training_loss"], 4) if trained.finished() else None
        rows.append(row)
    final = {
        name: folder.recorded_stats()
        for name, folder in ((LONG, long_folder(run_dir)), (FINAL, final_folder(run_dir)))
    }
    return {
        "iterations": rows,
        **{f"{name}_rows": stats["rows_out"] if stats else None for name, stats in final.items()},
    }


def summary_table(summary: dict[str, Any]) -> pl.DataFrame:
    """The per-iteration summary as a table for the terminal."""

    def words(shape: dict[str, Any] | None) -> str:
        return f"{shape['mean']} / {shape['median']} / {shape['max']}" if shape and shape["mean"] else "-"

    return pl.DataFrame(
        [
            {
                "iter": row["iteration"],
                "instructions": row["instructions"],
                "initial": row["initial"],
                "initial words mean/median/max": words(row["initial_words"]),
                "extended": row["extended"],
                "extended words mean/median/max": words(row["extended_words"]),
                "generator loss": row["generator_loss"],
                "extender loss": row["extender_loss"],
            }
            for row in summary["iterations"]
        ]
    )
