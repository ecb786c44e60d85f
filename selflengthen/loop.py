"""`selflengthen run`: the Self-Lengthen loop, iterations 1..N, then collect and length control.

Iteration k: self-instruct (base model; earlier iterations' instructions join the seeds) ->
generate (Generator k) -> extend (Extender k) -> build-sft -> train (Generator k+1 and
Extender k+1, saved in `models/iter_<k>/`). Generator 1 and Extender 1 are the base model.

Resuming works at step granularity: a finished step is skipped, an unfinished one continues
from its checkpoints. Once a step has actually run, every later step is redone (its old output,
made from the old inputs, is moved to `.replaced/`), and `--from-step` forces that from a step
of the first selected iteration on purpose. Nothing is deleted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from selflengthen.atomic import write_json_atomic, write_text_atomic
from selflengthen.builders.checks import ResponseChecks
from selflengthen.builders.collect import long_folder, run_collect
from selflengthen.builders.extend import ExtendSettings, run_extend
from selflengthen.builders.folder import StepFolder, step_folder
from selflengthen.builders.generate import GenerateSettings, run_generate
from selflengthen.builders.length_control import final_folder, run_length_control
from selflengthen.builders.self_instruct import SelfInstructSettings, run_self_instruct, seed_instructions
from selflengthen.builders.sft_data import run_build_sft
from selflengthen.config import RunConfig, identity_differences, parse_config
from selflengthen.engine.launch import check_port_free
from selflengthen.engine.models import ResolvedModel, resolve_model
from selflengthen.engine.shared_server import SharedServer
from selflengthen.errors import SelflengthenError, require_folder
from selflengthen.folder_lock import folder_lock
from selflengthen.interrupts import children_die_with_us
from selflengthen.run_summary import run_summary
from selflengthen.steps import (
    BUILD_SFT,
    COLLECT,
    EXTEND,
    EXTENDED,
    FINAL_STEPS,
    GENERATE,
    INITIAL,
    INSTRUCTIONS,
    ITERATION_STEPS,
    LENGTH_CONTROL,
    SELF_INSTRUCT,
    TRAIN,
    Step,
)
from selflengthen.train.roles import ROLES, Launch, train_role, trained_role

#: The names `run --from-step` takes.
STEP_NAMES = ITERATION_STEPS + FINAL_STEPS


def parse_iterations(spec: str | None, total: int) -> range:
    """`None` -> 1..total; "k" -> k; "a-b" -> a..b (within 1..total)."""
    if spec is None:
        return range(1, total + 1)
    try:
        first, _, last = spec.partition("-")
        selected = range(int(first), int(last or first) + 1)
    except ValueError:
        raise SelflengthenError(f"--iterations: expected K or A-B, got {spec!r}") from None
    if not selected or selected.start < 1 or selected.stop - 1 > total:
        raise SelflengthenError(f"--iterations {spec}: the config has iterations 1..{total}")
    return selected


def role_model(config: RunConfig, run_dir: Path, iteration: int, role: str) -> ResolvedModel:
    """Generator/Extender k: the base model for k = 1, else the role trained in iteration k-1."""
    if iteration == 1:
        return resolve_model(config.model, prepare=False)
    trained = trained_role(run_dir, iteration - 1, role)
    if not trained.finished():
        raise SelflengthenError(
            f"{trained.folder}: the {role} of iteration {iteration - 1} is not trained "
            f"(run iteration {iteration - 1} first)"
        )
    return resolve_model(str(trained.merged))


@dataclass
class Runner:
    """Walks the steps in order, skipping finished ones and redoing stale ones."""

    config: RunConfig
    run_dir: Path
    server: SharedServer
    force_from: tuple[int | None, str] | None = None
    verbose: bool = False
    upstream_ran: bool = False
    replaced: list[str] = field(default_factory=list)

    def step(
        self,
        name: str,
        iteration: int | None,
        folders: list[Path],
        action: Callable[[], Any],
        stale: bool = False,
    ) -> bool:
        """Run `action` unless its output `folders` are finished and nothing before it ran (or
        the caller knows them to be `stale`). Returns whether it ran."""
        forced = stale or self.force_from == (iteration, name)
        finished = all(_finished(folder) for folder in folders)
        if finished and not forced and not self.upstream_ran:
            return False
        if forced or self.upstream_ran:
            self._move_aside(folders)
        label = f"iteration {iteration}/{self.config.iterations}: {name}" if iteration else name
        print(f"== {label}", flush=True)
        self.upstream_ran = True
        action()
        return True

    def _move_aside(self, folders: list[Path]) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for folder in folders:
            if folder.exists():
                target = self.run_dir / ".replaced" / stamp / folder.relative_to(self.run_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(folder, target)
                self.replaced.append(str(target))


def _finished(folder: Path) -> bool:
    return StepFolder(folder).finished() if folder.name not in ROLES else folder.is_dir()


def empty_extended_error(iteration: int, stats: dict[str, Any], folder: Path) -> SelflengthenError:
    reasons = ", ".join(f"{reason} {count}" for reason, count in list(stats["rejected_attempts"].items())[:5])
    failed = ", ".join(f"{reason} {count}" for reason, count in stats["failed_rows"].items() if count)
    return SelflengthenError(
        f"iteration {iteration}: extend kept no rows, nothing to train on "
        f"({stats['rows_in']} initial rows; failed: {failed or 'none'}; rejected attempts: "
        f"{reasons or 'none'}; see {folder / 'stats.json'}); try more extend.rounds/max_retries "
        "or a larger max_tokens in a new run"
    )


def check_run_folder(config: RunConfig, run_dir: Path) -> None:
    """Refuse a run folder made by a different config (or training recipe)."""
    saved_path, recipe_copy = run_dir / "config.yaml", run_dir / "train_recipe.yaml"
    if not saved_path.is_file():
        return
    saved = parse_config(yaml.safe_load(saved_path.read_text(encoding="utf-8")), str(saved_path))
    differences = identity_differences(saved, config)
    recipe_text = config.train.recipe.read_text(encoding="utf-8")
    if recipe_copy.is_file() and recipe_copy.read_text(encoding="utf-8") != recipe_text:
        differences.append(f"the training recipe ({config.train.recipe})")
    if differences:
        raise SelflengthenError(
            f"{run_dir}: made with a different config ({', '.join(differences)} differ from "
            f"{saved_path}); use another run_dir or name"
        )


def check_before_run(config: RunConfig) -> None:
    """Every check that needs no writing, so that bad input leaves the run folder as it was:
    the seeds, the model, the port, and the config the run folder was made with."""
    section = config.self_instruct
    seed_instructions(section.seeds, section.seed_language, "self_instruct.seed_language")
    resolve_model(config.model, prepare=False)
    if config.engine.port is not None and not config.engine.on_cluster:
        check_port_free(config.engine.host, config.engine.port, "engine.port")
    require_folder(config.folder, "run_dir")
    check_run_folder(config, config.folder)


def save_config(config: RunConfig, run_dir: Path) -> None:
    """Save the resolved config and the TRL recipe with the run. Checked again here, under the
    lock: another run may have saved its config since `check_before_run`."""
    check_run_folder(config, run_dir)
    write_text_atomic(config.to_yaml(), run_dir / "config.yaml")
    write_text_atomic(config.train.recipe.read_text(encoding="utf-8"), run_dir / "train_recipe.yaml")


def run_loop(
    config: RunConfig, iterations: range, from_step: str | None = None, verbose: bool = False
) -> dict[str, Any]:
    """Run the selected iterations (and, when they reach the last one, collect and length control)."""
    run_dir = config.folder
    force_from = _force_point(from_step, iterations)
    children_die_with_us()
    check_before_run(config)
    with folder_lock(run_dir, "run"):
        save_config(config, run_dir)
        server = SharedServer(config.engine.options(config.model), run_dir / "server_logs", config.seed)
        runner = Runner(config, run_dir, server, force_from, verbose)
        try:
            for iteration in iterations:
                _run_iteration(runner, iteration)
            if iterations.stop - 1 == config.iterations:
                _run_final(runner)
        finally:
            server.stop()
        summary = run_summary(run_dir, config.iterations)
        write_json_atomic(summary, run_dir / "summary.json")
    if runner.replaced:
        print(f"moved {len(runner.replaced)} earlier output folder(s) to {run_dir / '.replaced'}")
    return summary


def _force_point(from_step: str | None, iterations: range) -> tuple[int | None, str] | None:
    if from_step is None:
        return None
    if from_step not in STEP_NAMES:
        raise SelflengthenError(
            f"--from-step: unknown step {from_step!r} (choose from {', '.join(STEP_NAMES)})"
        )
    return (None, from_step) if from_step in FINAL_STEPS else (iterations.start, from_step)


def _run_iteration(runner: Runner, iteration: int) -> None:
    config, run_dir, server = runner.config, runner.run_dir, runner.server

    def folders(step: Step) -> list[Path]:
        return [step_folder(run_dir, iteration, name).root for name in step.folders]

    def read(step: str) -> pl.DataFrame:
        return step_folder(run_dir, iteration, step).read()

    runner.step(
        SELF_INSTRUCT.name,
        iteration,
        folders(SELF_INSTRUCT),
        lambda: _self_instruct(runner, iteration, config.self_instruct.count),
    )
    runner.step(
        GENERATE.name, iteration, folders(GENERATE), lambda: _generate(runner, iteration, read(INSTRUCTIONS))
    )
    runner.step(EXTEND.name, iteration, folders(EXTEND), lambda: _extend(runner, iteration, read(INITIAL)))
    extended_folder = step_folder(run_dir, iteration, EXTENDED)
    stats = json.loads(extended_folder.stats.read_text())
    if stats["rows_out"] == 0:
        raise empty_extended_error(iteration, stats, extended_folder.root)
    runner.step(
        BUILD_SFT.name,
        iteration,
        folders(BUILD_SFT),
        lambda: run_build_sft(
            run_dir, iteration, read(EXTENDED), config.sft_data.line_drop_probability, config.seed
        ),
    )
    launch = Launch(
        config.train.launcher,
        config.train.accelerate_config,
        tuple(config.train.accelerate_args),
        config.engine.trust_remote_code,
        runner.verbose,
    )

    def train_both() -> None:
        server.stop()  # training needs the memory
        base = resolve_model(config.model).source
        for role in ROLES:
            train_role(run_dir, iteration, role, base, config.train.recipe, launch, config.train.rows)

    runner.step(
        TRAIN.name, iteration, [trained_role(run_dir, iteration, role).folder for role in ROLES], train_both
    )


def _generate(runner: Runner, iteration: int, instructions: pl.DataFrame) -> None:
    config = runner.config
    generator = role_model(config, runner.run_dir, iteration, "generator")
    section = config.generate
    settings = GenerateSettings(
        section, config.sampling_options(section.max_tokens), ResponseChecks(config.filter_entries())
    )
    runner.server.serve(
        generator,
        lambda engine: run_generate(runner.run_dir, iteration, instructions, engine, generator, settings),
    )


def _extend(runner: Runner, iteration: int, initial: pl.DataFrame) -> None:
    config = runner.config
    extender = role_model(config, runner.run_dir, iteration, "extender")
    section = config.extend
    settings = ExtendSettings(
        section, config.sampling_options(section.max_tokens), ResponseChecks(config.filter_entries())
    )
    runner.server.serve(
        extender, lambda engine: run_extend(runner.run_dir, iteration, initial, engine, extender, settings)
    )


def _self_instruct(runner: Runner, iteration: int, count: int) -> None:
    """Self-instruct for `iteration` (with the base model, or Generator k when the config says
    so); earlier iterations' instructions join the seeds (as examples, and so that they are not
    produced again)."""
    config, run_dir = runner.config, runner.run_dir
    section = config.self_instruct
    seeds = seed_instructions(section.seeds, section.seed_language, "self_instruct.seed_language")
    earlier = [
        step_folder(run_dir, k, INSTRUCTIONS).read().select("id", "instruction")
        for k in range(1, iteration)
        if step_folder(run_dir, k, INSTRUCTIONS).finished()
    ]
    pool = pl.concat([seeds.select(pl.col("id").cast(pl.String), "instruction"), *earlier])
    model = (
        role_model(config, run_dir, iteration, "generator")
        if section.model == "generator"
        else resolve_model(config.model, prepare=False)
    )
    settings = SelfInstructSettings(
        section.model_copy(update={"count": count}), config.sampling_options(section.max_tokens)
    )
    runner.server.serve(
        model, lambda engine: run_self_instruct(run_dir, iteration, pool, engine, model, settings)
    )


def _run_final(runner: Runner) -> None:
    config, run_dir = runner.config, runner.run_dir
    last = config.iterations
    extra = config.collect.extra_instructions
    if extra:
        # The paper's extra data: the final Generator answers new self-instructed prompts
        # (stored as iteration N + 1's instructions and initial answers).
        runner.step(
            "self-instruct (extra)",
            last + 1,
            [step_folder(run_dir, last + 1, INSTRUCTIONS).root],
            lambda: _self_instruct(runner, last + 1, extra),
        )
        runner.step(
            "generate (extra)",
            last + 1,
            [step_folder(run_dir, last + 1, INITIAL).root],
            lambda: _generate(runner, last + 1, step_folder(run_dir, last + 1, INSTRUCTIONS).read()),
        )
    runner.server.stop()
    collected = long_folder(run_dir).recorded_stats()
    runner.step(
        COLLECT.name,
        None,
        [long_folder(run_dir).root],
        lambda: run_collect(run_dir, last, bool(extra)),
        stale=collected is not None and collected["sources"] != _collect_sources(run_dir, last, bool(extra)),
    )
    runner.step(
        LENGTH_CONTROL.name,
        None,
        [final_folder(run_dir).root],
        lambda: run_length_control(run_dir, long_folder(run_dir).read(), config.length_control, config.seed),
    )


def _collect_sources(run_dir: Path, iterations: int, extra: bool) -> dict[str, int]:
    """The row count of each step folder `collect` reads, as its stats record them."""
    steps = [(k, step) for k in range(1, iterations + 1) for step in (INITIAL, EXTENDED)]
    steps += [(iterations + 1, INITIAL)] if extra else []
    return {
        f"iter_{k}/{step}": step_folder(run_dir, k, step).recorded_stats()["rows_out"] for k, step in steps
    }
