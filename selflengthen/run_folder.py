"""Reading a finished (or partly finished) run folder: its config, step stats, data and models.

Publishing and cards read runs through this; they never recompute what a step's `stats.json`
already says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from selflengthen.builders.collect import long_folder
from selflengthen.builders.folder import StepFolder, step_folder
from selflengthen.builders.length_control import final_folder
from selflengthen.config import RunConfig, parse_config
from selflengthen.errors import SelflengthenError
from selflengthen.steps import (
    BUILD_SFT,
    EXTENDED,
    FINAL,
    FINAL_FOLDERS,
    INITIAL,
    INSTRUCTIONS,
    ITERATION_FOLDERS,
    LONG,
)
from selflengthen.text import count_words
from selflengthen.train.roles import ROLES, TrainedRole, trained_role


def response_words(config: str, frame: pl.DataFrame) -> pl.Series:
    """The word count of each row's answer (the instruction's own for `instructions`; the
    assistant message for the SFT sets)."""
    if config in BUILD_SFT.folders:
        answers = frame["messages"].list.last().struct.field("content")
        return answers.map_elements(count_words, return_dtype=pl.Int64)
    return frame["extended_words" if config == EXTENDED else "words"]


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def open(cls, root: Path) -> RunFolder:
        if not (root / "config.yaml").is_file():
            raise SelflengthenError(f"{root}: not a run folder (no config.yaml; made by `selflengthen run`)")
        return cls(root)

    @cached_property
    def config(self) -> RunConfig:
        path = self.root / "config.yaml"
        return parse_config(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))

    def folder(self, config: str, iteration: int | None = None) -> StepFolder:
        if config == LONG:
            return long_folder(self.root)
        if config == FINAL:
            return final_folder(self.root)
        assert iteration is not None
        return step_folder(self.root, iteration, config)

    def stats(self, config: str, iteration: int | None = None) -> dict[str, Any]:
        return json.loads(self.folder(config, iteration).stats.read_text(encoding="utf-8"))

    def role(self, iteration: int, role: str) -> TrainedRole:
        return trained_role(self.root, iteration, role)

    def iteration_finished(self, iteration: int) -> bool:
        """Every dataset of the iteration written and both roles trained."""
        return all(self.folder(config, iteration).finished() for config in ITERATION_FOLDERS) and all(
            self.role(iteration, role).finished() for role in ROLES
        )

    def finished_iterations(self) -> list[int]:
        """The iterations 1..k that are all finished (a later one cannot be, without these)."""
        finished = []
        for iteration in range(1, self.config.iterations + 1):
            if not self.iteration_finished(iteration):
                break
            finished.append(iteration)
        return finished

    def extra_iteration(self) -> int | None:
        """Iteration N + 1 (the final Generator's answers to extra instructions), if written."""
        extra = self.config.iterations + 1
        finished = all(self.folder(config, extra).finished() for config in (INSTRUCTIONS, INITIAL))
        return extra if self.config.collect.extra_instructions and finished else None

    def final_configs(self) -> list[str]:
        return [config for config in FINAL_FOLDERS if self.folder(config).finished()]

    def shards(self, config: str, iteration: int | None = None) -> list[Path]:
        return self.folder(config, iteration).shards()

    def read(self, config: str, iteration: int | None = None) -> pl.DataFrame:
        return self.folder(config, iteration).read()

    def training_result(self, iteration: int, role: str) -> dict[str, Any]:
        return self.role(iteration, role).result()

    def training_recipe(self, iteration: int, role: str) -> dict[str, Any]:
        """The TRL arguments the role was trained with (the recipe over the defaults)."""
        return yaml.safe_load((self.role(iteration, role).folder / "recipe.yaml").read_text(encoding="utf-8"))
