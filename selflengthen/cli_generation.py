"""The generation step commands (`self-instruct`, `generate`, `extend`): each starts a server for
its step (or uses `--endpoint`), runs it the loop's way, and reports its stats."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from selflengthen.builders.checks import DEFAULT_CHECKS, ResponseChecks
from selflengthen.builders.extend import ExtendSettings, run_extend
from selflengthen.builders.folder import finished_stats, step_folder
from selflengthen.builders.generate import GenerateSettings, run_generate
from selflengthen.builders.self_instruct import SelfInstructSettings, run_self_instruct, seed_instructions
from selflengthen.cli_engine import with_engine_options
from selflengthen.cli_steps import ITERATION_OPTION, RUN_DIR_OPTION, lock_run_dir, previous_step
from selflengthen.config import ExtendSection, GenerateSection, SelfInstructSection, section_from_flags
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.engine.shared_server import SharedServer
from selflengthen.errors import SelflengthenError
from selflengthen.filters.registry import DEFAULT_FILTERS, FilterConfigError, parse_entries
from selflengthen.steps import EXTEND, EXTENDED, GENERATE, INITIAL, INSTRUCTIONS, SELF_INSTRUCT
from selflengthen.tables import read_instructions

FILTERS_OPTION = typer.Option(
    "--filters",
    help="The filters every answer must pass, in order: a YAML list like the run config's `filters:`, "
    "e.g. '\\[ending, {repetition: {ngram: 8}}, datatrove.pipeline.filters:FineWebQualityFilter]' "
    f"(default: {', '.join(DEFAULT_FILTERS)}).",
    show_default=False,
)


def checks_from_flag(value: str | None) -> ResponseChecks:
    """The checks `--filters` names (a YAML list), or the default ones."""
    if value is None:
        return DEFAULT_CHECKS
    try:
        return ResponseChecks(parse_entries(yaml.safe_load(value)))
    except yaml.YAMLError:
        raise SelflengthenError("--filters: not valid YAML") from None
    except FilterConfigError as error:
        raise SelflengthenError(f"--filters: {error}") from None


class SeedLanguage(StrEnum):
    all = "all"
    en = "en"
    zh = "zh"


def _report(stats: dict, folder: Path) -> None:
    words = stats["words"]
    shape = (
        f"words mean {words['mean']} (min {words['min']}, median {words['median']}, max {words['max']})"
        if words["mean"] is not None
        else "no rows"
    )
    typer.echo(
        f"{stats['step']}: {stats['rows_in']} in -> {stats['rows_out']} out; {shape}; "
        f"{stats['requests']} requests, {stats['completion_tokens']} output tokens; "
        f"{stats['seconds']} s -> {folder}"
    )


def _serve_step(
    command: str,
    run_dir: Path,
    iteration: int,
    folder_name: str,
    served: tuple[EngineOptions, ResolvedModel, SamplingOptions],
    step: Callable[[EngineOptions], dict[str, Any]],
) -> dict[str, Any]:
    """A generation step command's work, served the loop's way: a server started for it (only
    if the step has not finished), restarted and the step resumed if it dies; or `--endpoint`.
    Reports the step's stats and returns them."""
    engine, model, sampling = served
    lock_run_dir(run_dir, command)
    folder = step_folder(run_dir, iteration, folder_name)
    stats = finished_stats(folder, sampling)
    if stats is None:
        with SharedServer(engine, run_dir / "server_logs", sampling.seed) as server:
            stats = server.serve(model, step)
    _report(stats, folder.root)
    return stats


@with_engine_options
def self_instruct_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    iteration: Annotated[int, ITERATION_OPTION] = 1,
    seeds: Annotated[
        Path | None,
        typer.Option(
            help="Seed instructions (.jsonl/.csv/.parquet, column `instruction`) "
            "(default: the shipped English and Chinese seeds)."
        ),
    ] = None,
    seed_language: Annotated[
        SeedLanguage,
        typer.Option(
            help="Use only the seeds in this language (e.g. en for a model that writes English only)."
        ),
    ] = SeedLanguage.all,
    count: Annotated[int, typer.Option(help="How many new instructions to grow.")] = 5000,
    max_retries: Annotated[int, typer.Option(help="Attempts per instruction slot.")] = 10,
    *,
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
) -> None:
    """Grow new long-writing instructions from seed instructions (step 1)."""
    section = section_from_flags(
        SelfInstructSection,
        {"count": count, "max_retries": max_retries, "seed_language": seed_language.value, "seeds": seeds},
    )
    settings = SelfInstructSettings(section, sampling)
    seed_frame = seed_instructions(section.seeds, section.seed_language, "--seed-language")
    stats = _serve_step(
        SELF_INSTRUCT.name, run_dir, iteration, INSTRUCTIONS, (engine, model, sampling),
        lambda engine: run_self_instruct(run_dir, iteration, seed_frame, engine, model, settings),
    )  # fmt: skip
    if stats["rows_out"] < stats["requested"]:
        typer.echo(f"reached {stats['rows_out']} of {stats['requested']} instructions (see stats.json)")


@with_engine_options
def generate_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    iteration: Annotated[int, ITERATION_OPTION] = 1,
    instructions: Annotated[
        Path | None, typer.Option(help="Instructions file (default: this iteration's self-instruct output).")
    ] = None,
    samples_per_instruction: Annotated[int, typer.Option(help="Answers per instruction.")] = 2,
    max_retries: Annotated[int, typer.Option(help="Attempts per answer until it finishes and passes.")] = 20,
    filters: Annotated[str | None, FILTERS_OPTION] = None,
    *,
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
) -> None:
    """Answer each instruction with the Generator, filter and sample (step 2)."""
    section = section_from_flags(
        GenerateSection, {"samples_per_instruction": samples_per_instruction, "max_retries": max_retries}
    )
    settings = GenerateSettings(section, sampling, checks_from_flag(filters))
    frame = (
        read_instructions(instructions, "instruction")
        if instructions
        else previous_step(
            run_dir, iteration, INSTRUCTIONS, "run self-instruct first, or pass --instructions"
        )
    )
    _serve_step(
        GENERATE.name, run_dir, iteration, INITIAL, (engine, model, sampling),
        lambda engine: run_generate(run_dir, iteration, frame, engine, model, settings),
    )  # fmt: skip


@with_engine_options
def extend_command(
    run_dir: Annotated[Path, RUN_DIR_OPTION],
    iteration: Annotated[int, ITERATION_OPTION] = 1,
    rounds: Annotated[int, typer.Option(help="Two-stage extension rounds per response.")] = 3,
    max_retries: Annotated[int, typer.Option(help="Attempts per round.")] = 3,
    min_ratio: Annotated[
        float, typer.Option(help="Keep an extension only above this × the initial words.")
    ] = 1.2,
    force_growth: Annotated[
        bool,
        typer.Option(
            help="Stage 2 may not end (vLLM min_tokens) before it could make the text "
            "--min-ratio × longer: one token per missing word."
        ),
    ] = False,
    on_topic: Annotated[
        float | None,
        typer.Option(
            help="Drop a kept extension when a segment after its first has a relevance ratio "
            "(PPL with the instruction / PPL without, scored on the step's server) above this; "
            "0.96 is the threshold validated on the embedded model. Off by default.",
            show_default=False,
        ),
    ] = None,
    filters: Annotated[str | None, FILTERS_OPTION] = None,
    *,
    engine: EngineOptions,
    model: ResolvedModel,
    sampling: SamplingOptions,
) -> None:
    """Lengthen each initial response with the Extender, filter and sample (step 3)."""
    section = section_from_flags(
        ExtendSection,
        {
            "rounds": rounds,
            "max_retries": max_retries,
            "min_ratio": min_ratio,
            "force_growth": force_growth,
            "on_topic": on_topic,
        },
    )
    settings = ExtendSettings(section, sampling, checks_from_flag(filters))
    initial = previous_step(run_dir, iteration, INITIAL, "run generate first")
    _serve_step(
        EXTEND.name, run_dir, iteration, EXTENDED, (engine, model, sampling),
        lambda engine: run_extend(run_dir, iteration, initial, engine, model, settings),
    )  # fmt: skip
