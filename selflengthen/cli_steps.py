"""The step commands that need no server: `build-sft`, `train`, `collect`, `length-control`.

Each runs one step of the loop on a run folder, with the code `selflengthen run` uses and the
same `--run-dir`/`--iteration` shape as the generation steps, so that any step can be run,
inspected and redone alone. A finished step is reported, not redone; to redo one, move its
folder away (or use `selflengthen run --from-step`). Settings are checked by the run config's
own rules, and their defaults are the run config's.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
import yaml

from selflengthen.builders.collect import long_folder, run_collect
from selflengthen.builders.folder import refuse_other_settings, step_folder
from selflengthen.builders.length_control import final_folder, run_length_control
from selflengthen.builders.sft_data import run_build_sft
from selflengthen.config import (
    CollectSection,
    LengthControlSection,
    SftDataSection,
    TrainSection,
    flag_name,
    section_from_flags,
)
from selflengthen.engine.models import DEFAULT_MODEL, resolve_model
from selflengthen.errors import require_folder
from selflengthen.folder_lock import hold_for_process
from selflengthen.steps import BUILD_SFT, COLLECT, EXT_SFT, EXTENDED, INITIAL, LENGTH_CONTROL
from selflengthen.train.roles import ROLES, Launch, effective_recipe, train_role, trained_role


def _run_dir(value: Path) -> Path:
    return require_folder(value, "--run-dir")


def lock_run_dir(run_dir: Path, command: str) -> None:
    """Hold the run folder's lock for the rest of step command `command` (one selflengthen
    command per folder, `folder_lock`): taken once its input is checked, before it writes."""
    hold_for_process(run_dir, command)


RUN_DIR_OPTION = typer.Option(
    "--run-dir", help="The run folder: steps write runs/<name>/iter_<k>/<step>/.", callback=_run_dir
)
ITERATION_OPTION = typer.Option(min=1, help="The macro-iteration k.")
SEED_OPTION = typer.Option(help="Seed of the step's random choices (a run uses its config's `seed`).")


def previous_step(run_dir: Path, iteration: int, step: str, hint: str) -> pl.DataFrame:
    """The rows of a finished earlier step, or a one-line error saying what to run first."""
    return step_folder(run_dir, iteration, step).require_finished(hint).read()


def _words(stats: dict[str, Any]) -> str:
    words = stats["words"]
    return f"words mean {words['mean']}, median {words['median']}" if words["mean"] is not None else "no rows"


def build_sft_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    iteration: Annotated[int, ITERATION_OPTION] = 1,
    line_drop_probability: Annotated[
        float,
        typer.Option(help="Share of lines dropped from the Extender's copy of each answer (the paper: 0.2)."),
    ] = SftDataSection().line_drop_probability,
    seed: Annotated[int, SEED_OPTION] = 0,
) -> None:
    """Turn the extended answers into SFT data for both roles: iter_<k>/gen_sft, ext_sft (step 4).

    The Generator learns instruction -> extended answer; the Extender learns to lengthen a copy
    of the answer with some lines dropped."""
    settings = section_from_flags(SftDataSection, {"line_drop_probability": line_drop_probability})
    extended = previous_step(run_dir, iteration, EXTENDED, "run extend first")
    extender_data = step_folder(run_dir, iteration, EXT_SFT)
    if (made := extender_data.recorded_stats()) is not None:
        wanted = {"line_drop_probability": settings.line_drop_probability, "seed": seed}
        refuse_other_settings(extender_data.root, made, wanted)
    lock_run_dir(run_dir, BUILD_SFT.name)
    results = run_build_sft(run_dir, iteration, extended, settings.line_drop_probability, seed)
    for step, stats in results.items():
        typer.echo(
            f"{step}: {stats['rows_out']} rows; {_words(stats)} -> "
            f"{step_folder(run_dir, iteration, step).root}"
        )


class TrainingRows(StrEnum):
    new = "new"
    all = "all"


class Role(StrEnum):
    both = "both"
    generator = "generator"
    extender = "extender"


def train_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    recipe: Annotated[
        Path, typer.Option(help="The TRL SFT recipe (e.g. recipes/smollm2-cpu/sft.yaml).", show_default=False)
    ],
    iteration: Annotated[int, ITERATION_OPTION] = 1,
    model: Annotated[
        str,
        typer.Option(
            help="The base model (an embedded name, a folder or a Hub id); iteration k > 1 "
            "continues from iteration k-1's adapter."
        ),
    ] = DEFAULT_MODEL,
    role: Annotated[Role, typer.Option(help="Which role to train.")] = Role.both,
    rows: Annotated[
        TrainingRows,
        typer.Option(
            help="new: this iteration's SFT rows (the paper); all: those of iterations 1..k (a run "
            "config's train.rows). Either way iteration k > 1 continues from k-1's adapter."
        ),
    ] = TrainingRows.new,
    launcher: Annotated[
        str,
        typer.Option(
            help="python, accelerate (this machine's GPUs) or srun-accelerate (a Slurm allocation)."
        ),
    ] = TrainSection.model_fields["launcher"].default,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="accelerate's config file (e.g. recipes/accelerate/zero3.yaml).")
    ] = None,
    accelerate_args: Annotated[
        list[str] | None,
        typer.Option("--accelerate-arg", help="An extra `accelerate launch` argument (repeatable)."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Let the model's own code run (off unless given).")
    ] = False,
) -> None:
    """LoRA-train the Generator and/or Extender, merged for serving: models/iter_<k>/ (step 5).

    Trains on this iteration's SFT data (build-sft), or with --rows all on that of iterations
    1..k; iteration k > 1 continues from iteration k-1's adapters. The recipe runs as written
    (see the README's Training section)."""
    from selflengthen.train.preflight import check_training, visible_gpus
    from selflengthen.train.sft import check_recipe  # imports TRL (seconds): after the quick checks

    flags = {"accelerate_args": "--accelerate-arg"}
    settings = section_from_flags(
        TrainSection,
        {
            "recipe": recipe,
            "rows": rows.value,
            "launcher": launcher,
            "accelerate_config": accelerate_config,
            "accelerate_args": accelerate_args or [],
        },
        flags=flags,
    )
    recipe_settings = check_recipe(settings.recipe)
    check_training(settings, recipe_settings, visible_gpus(), lambda key: flags.get(key, flag_name(key)))
    base = resolve_model(model).source
    launch = Launch(
        settings.launcher, settings.accelerate_config, tuple(settings.accelerate_args), trust_remote_code
    )
    lock_run_dir(run_dir, "train")
    for name in ROLES if role is Role.both else (role.value,):
        trained = trained_role(run_dir, iteration, name)
        if trained.finished():
            before = yaml.safe_load((trained.folder / "recipe.yaml").read_text(encoding="utf-8"))
            refuse_other_settings(trained.folder, before, effective_recipe(settings.recipe)[0])
        result = train_role(run_dir, iteration, name, base, settings.recipe, launch, settings.rows)
        typer.echo(
            f"{name}: loss {result['training_loss']:.4f} after {result['global_step']} steps on "
            f"{result['rows']} rows -> {run_dir / 'models' / f'iter_{iteration}' / name}"
        )


def _last_extended_iteration(run_dir: Path) -> int:
    iteration = 0
    while step_folder(run_dir, iteration + 1, EXTENDED).finished():
        iteration += 1
    if iteration == 0:
        step_folder(run_dir, 1, EXTENDED).require_finished("run extend first")
    return iteration


def collect_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    iterations: Annotated[
        int | None,
        typer.Option(
            min=1, help="Collect iterations 1..N (default: every iteration whose extend step finished)."
        ),
    ] = None,
    extra: Annotated[
        bool,
        typer.Option(
            "--extra",
            help="Also collect iteration N+1's answers (the final Generator's extra data, "
            "`collect.extra_instructions` in a run config).",
        ),
    ] = CollectSection().extra_instructions > 0,
) -> None:
    """Gather the kept answers of iterations 1..N, without duplicates: long/ (step 6).

    Every initial and extended answer the steps kept, each once."""
    last = iterations or _last_extended_iteration(run_dir)
    if (made := long_folder(run_dir).recorded_stats()) is not None:
        before = {
            "iterations": made["iterations"],
            "extra": f"iter_{made['iterations'] + 1}/initial" in made["sources"],
        }
        refuse_other_settings(long_folder(run_dir).root, before, {"iterations": last, "extra": extra})
    for k in range(1, last + 1):
        step_folder(run_dir, k, EXTENDED).require_finished(f"run iteration {k} first")
    if extra:
        step_folder(run_dir, last + 1, INITIAL).require_finished(
            "run generate for the extra instructions first"
        )
    lock_run_dir(run_dir, COLLECT.name)
    stats = run_collect(run_dir, last, extra)
    typer.echo(
        f"long: {stats['rows_in']} in -> {stats['rows_out']} rows; {_words(stats)} -> "
        f"{long_folder(run_dir).root}"
    )


def length_control_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    min_words: Annotated[int, typer.Option(help="Keep answers of at least this many words.")] = (
        LengthControlSection().min_words
    ),
    max_words: Annotated[int, typer.Option(help="Keep answers of at most this many words.")] = (
        LengthControlSection().max_words
    ),
    round_to: Annotated[int, typer.Option(help="The unit a constraint's length is rounded to.")] = (
        LengthControlSection().round_to
    ),
    coarse_round_to: Annotated[
        int, typer.Option(help="The coarser unit, used with --coarse-probability.")
    ] = (LengthControlSection().coarse_round_to),
    coarse_probability: Annotated[float, typer.Option(help="How often the coarser unit is used.")] = (
        LengthControlSection().coarse_probability
    ),
    seed: Annotated[int, SEED_OPTION] = 0,
) -> None:
    """Add a length constraint each answer follows to its instruction: final/ (step 7).

    Answers outside --min-words..--max-words are left out. Constraint types are weighted as
    `length_control.weights` in a run config (default about 0.4, range 0.25, above 0.1, below
    0.25)."""
    settings = section_from_flags(
        LengthControlSection,
        {
            "min_words": min_words,
            "max_words": max_words,
            "round_to": round_to,
            "coarse_round_to": coarse_round_to,
            "coarse_probability": coarse_probability,
        },
    )
    folder = long_folder(run_dir).require_finished("run collect first")
    if (made := final_folder(run_dir).recorded_stats()) is not None:
        before = made["settings"] | {"seed": made["seed"]}
        refuse_other_settings(final_folder(run_dir).root, before, settings.model_dump() | {"seed": seed})
    lock_run_dir(run_dir, LENGTH_CONTROL.name)
    stats = run_length_control(run_dir, folder.read(), settings, seed)
    typer.echo(
        f"final: {stats['rows_in']} in -> {stats['rows_out']} rows ({stats['outside_length_bounds']} outside "
        f"{settings.min_words}-{settings.max_words} words); {_words(stats)} -> {final_folder(run_dir).root}"
    )
