"""A step's folder: where it writes, whether it finished, its data and stats (checked by
checksum), and the refusal to report a finished step as made with other settings."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from selflengthen.atomic import write_json_atomic
from selflengthen.engine.options import SamplingOptions
from selflengthen.errors import SelflengthenError
from selflengthen.tables import file_sha256, first_line, write_table


@dataclass(frozen=True)
class StepFolder:
    """`runs/<name>/iter_<k>/<step>/`: `data/` (parquet), `stats.json` (written last, so its
    presence means the step finished) and `_work/` (checkpoints, request cache, logs)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def work(self) -> Path:
        return self.root / "_work"

    def finished(self) -> bool:
        return self.stats.is_file()

    def recorded_stats(self) -> dict[str, Any] | None:
        """The stats of the finished step, or None if it has not finished."""
        return json.loads(self.stats.read_text(encoding="utf-8")) if self.finished() else None

    def require_finished(self, hint: str) -> StepFolder:
        """This folder, or a one-line error saying that the step has not finished and `hint`."""
        if not self.finished():
            raise SelflengthenError(f"{self.root}: step not finished ({hint})")
        return self

    def shards(self) -> list[Path]:
        """The step's parquet shards, each checked against the size and SHA-256 recorded in
        `stats.json` when the step finished (a one-line error names a missing, damaged or
        unrecorded shard). Steps finished before shards were recorded are read unchecked."""
        present = sorted(self.data.glob("*.parquet"))
        try:
            recorded = json.loads(self.stats.read_text(encoding="utf-8")).get("shards")
        except (OSError, ValueError, AttributeError) as error:
            raise SelflengthenError(f"{self.stats}: unreadable ({error}); rerun the step") from None
        if recorded is None:
            return present
        redo = f"remove {self.root} and rerun the step"
        for path in present:
            if path.name not in recorded:
                raise SelflengthenError(f"{path}: not written by the step (not in {self.stats}); remove it")
        for name, record in sorted(recorded.items()):
            path = self.data / name
            if not path.is_file():
                raise SelflengthenError(f"{path}: missing (recorded in {self.stats}); {redo}")
            size = path.stat().st_size
            if size != record["bytes"] or file_sha256(path) != record["sha256"]:
                raise SelflengthenError(
                    f"{path}: damaged ({size} bytes, {record['bytes']} recorded with a different checksum in "
                    f"{self.stats}); {redo}"
                )
        return [self.data / name for name in sorted(recorded)]

    def read(self) -> pl.DataFrame:
        shards = self.shards()
        try:
            return pl.concat([pl.read_parquet(path) for path in shards], how="vertical")
        except (pl.exceptions.PolarsError, OSError) as error:
            raise SelflengthenError(
                f"{self.data}: unreadable parquet ({first_line(error)}); rerun the step"
            ) from None


def step_folder(run_dir: Path, iteration: int, step: str) -> StepFolder:
    return StepFolder(run_dir / f"iter_{iteration}" / step)


def word_summary(words: list[int]) -> dict[str, float | int | None]:
    if not words:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {
        "min": min(words),
        "median": statistics.median(words),
        "mean": round(statistics.fmean(words), 1),
        "max": max(words),
    }


def finish_step(folder: StepFolder, frame: pl.DataFrame, stats: dict[str, Any]) -> dict[str, Any]:
    """Write the step's data, then its stats (last: their presence marks the step finished)."""
    shard = folder.data / "part-00000.parquet"
    write_table(frame, shard, overwrite=True)
    stats = {**stats, "shards": {shard.name: {"bytes": shard.stat().st_size, "sha256": file_sha256(shard)}}}
    write_json_atomic(stats, folder.stats)
    return stats


def finished_stats(folder: StepFolder, sampling: SamplingOptions) -> dict[str, Any] | None:
    """The stats of the step if it finished, else None; a step finished with other sampling
    settings is refused rather than reported as if the new ones had made it."""
    if (stats := folder.recorded_stats()) is None:
        return None
    refuse_other_settings(folder.root, stats.get("sampling") or {}, sampling.lineage())
    return stats


def refuse_other_settings(folder: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to report the finished step in `folder`, made with the settings `before`, as if
    the settings `now` had made it (a one-line error naming what changed)."""
    changed = [f"{key} {before.get(key)} -> {now[key]}" for key in now if before.get(key) != now[key]]
    if changed:
        raise SelflengthenError(
            f"{folder}: finished earlier with other settings ({', '.join(changed)}); "
            "remove that folder to make the step again with the new ones"
        )
