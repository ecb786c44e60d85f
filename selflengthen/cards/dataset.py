"""The dataset card of one published version: metadata, how it was made, rows and lengths per
config (from the steps' stats.json), filter drop reasons, histograms, lineage and usage."""

from __future__ import annotations

from typing import Any

import polars as pl
from huggingface_hub import DatasetCard, DatasetCardData

from selflengthen.builders.collect import LONG_SCHEMA
from selflengthen.builders.extend import EXTENDED_SCHEMA
from selflengthen.builders.generate import INITIAL_SCHEMA
from selflengthen.builders.length_control import FINAL_SCHEMA
from selflengthen.builders.self_instruct import INSTRUCTION_SCHEMA
from selflengthen.builders.sft_data import SFT_SCHEMA
from selflengthen.cards.common import TAGS, base_model_info, model_repo_id, render, size_category
from selflengthen.config import RunConfig
from selflengthen.filters.registry import FilterEntry
from selflengthen.run_folder import RunFolder
from selflengthen.steps import (
    BUILD_SFT,
    EXT_SFT,
    EXTENDED,
    FINAL,
    GEN_SFT,
    INITIAL,
    INSTRUCTIONS,
    ITERATION_FOLDERS,
    LONG,
    STEP_OF_FOLDER,
)

#: Counts in a step's stats.json that are rows lost (each a dict of reason -> count, or a number).
_DROPPED_ROWS = {
    "failed_rows": None,
    "failed_samples": None,
    "dropped_by_sampler": "length-weighted sampler",
    "unfilled_slots": "no acceptable instruction",
    "duplicates_after_resume": "duplicate after resume",
    "duplicates_dropped": "exact duplicate",
    "outside_length_bounds": "outside the length window",
}


#: The columns of each config, as the steps write them.
CONFIG_COLUMNS: dict[str, list[str]] = {
    INSTRUCTIONS: list(INSTRUCTION_SCHEMA),
    INITIAL: list(INITIAL_SCHEMA),
    EXTENDED: list(EXTENDED_SCHEMA),
    GEN_SFT: list(SFT_SCHEMA),
    EXT_SFT: list(SFT_SCHEMA),
    LONG: list(LONG_SCHEMA),
    FINAL: list(FINAL_SCHEMA),
}

#: What each column holds, for the card's column table (a test checks every column is here).
COLUMN_MEANINGS: dict[str, str] = {
    "id": "the row's id, unique within its config",
    "iteration": "the macro-iteration that made the row",
    "instruction": "the instruction (in `final`, with its length constraint written in)",
    "instruction_id": "the `id` of the `instructions` row this answer answers",
    "language": (
        "`en` or `zh`, detected from the instruction; `ar`, `he`, `ru`, `el`, `hi`, `th` or `ko` "
        "for one mostly in that language's script (prompted with the English templates)"
    ),
    "words": "words of the row's text: the instruction's in `instructions`, the answer's elsewhere",
    "attempts": "generations made for the row, rejected retries included",
    "model": "the model that wrote it: the base model, or `<run>/models/iter_<k>/<role>/merged`, "
    "a role tuned by this run",
    "sampling": "the decoding parameters of its requests",
    "response": "the answer",
    "finish_reason": "vLLM's finish reason of the accepted generation (`stop`: it ended by itself)",
    "initial_response": "the answer that was extended (a row of `initial`)",
    "initial_words": "words of `initial_response`",
    "extended_response": "the lengthened answer",
    "extended_words": "words of `extended_response`",
    "rounds": "extension rounds that made the text longer",
    "messages": "the conversation in TRL's format: the user's prompt, the assistant's answer",
    "origin": "`initial` or `extended`: the step that wrote the answer",
    "original_instruction": "the instruction before the length constraint was added",
    "constraint_type": "`about`, `range`, `above` (more than) or `below` (less than)",
    "target_words": "the number written in the constraint (none for a range)",
    "low_words": "start of the interval `selflengthen eval` scores as followed; the answer lies inside",
    "high_words": "end of that interval",
}


def column_table(configs: list[str]) -> list[dict[str, str]]:
    """One entry per column of `configs`: its meaning and the configs that have it."""
    where: dict[str, list[str]] = {}
    for config in configs:
        for column in CONFIG_COLUMNS[config]:
            where.setdefault(column, []).append(config)
    return [
        {"name": column, "configs": ", ".join(f"`{c}`" for c in found), "meaning": COLUMN_MEANINGS[column]}
        for column, found in where.items()
    ]


def data_files(config: str) -> str:
    return f"data/{config}/*.parquet"


def drop_reasons(stats: dict[str, Any], iteration: str, step: str) -> list[dict[str, Any]]:
    """The rejected attempts and dropped rows a step's stats record, one entry per reason."""
    rows = [
        {"iteration": iteration, "step": step, "kind": "attempt rejected", "reason": reason, "count": count}
        for reason, count in stats.get("rejected_attempts", {}).items()
    ]
    rows += [
        {
            "iteration": iteration,
            "step": step,
            "kind": "of which stopped early",
            "reason": f"{reason} ({counts['completion_tokens']} tokens generated)",
            "count": counts["requests"],
        }
        for reason, counts in stats.get("stopped_early", {}).items()
    ]
    for key, label in _DROPPED_ROWS.items():
        value = stats.get(key)
        reasons = value.items() if isinstance(value, dict) else [(label, value)]
        rows += [
            {"iteration": iteration, "step": step, "kind": "row dropped", "reason": reason, "count": count}
            for reason, count in reasons
            if count
        ]
    return [row | {"reason": str(row["reason"]).replace("|", "\\|")} for row in rows]


def _settings(config: RunConfig, final: bool) -> dict[str, str]:
    section = config.self_instruct
    seeds = f"`{section.seeds.name}`" if section.seeds else f"the built-in seed set ({section.seed_language})"
    writer = "the base model" if section.model == "base" else "Generator k"

    def tokens(value: int | None) -> str:
        return f", `max_tokens={value}`" if value else ""

    def described(entry: FilterEntry) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in entry.kwargs.items())
        return f"`{entry.name}`" + (f" ({arguments})" if arguments else "")

    settings = {
        "filters": ", ".join(described(entry) for entry in config.filter_entries()),
        "self_instruct": f"{section.count} new instructions per iteration, written by {writer} from "
        f"{seeds} and the earlier iterations' instructions, up to {section.max_retries} attempts each"
        f"{tokens(section.max_tokens)}",
        "generate": f"{config.generate.samples_per_instruction} samples per instruction, up to "
        f"{config.generate.max_retries} retries each{tokens(config.generate.max_tokens)}",
        "extend": f"up to {config.extend.rounds} round(s) of two stages, up to {config.extend.max_retries} "
        f"attempts per round; kept when more than {config.extend.min_ratio}× the initial words"
        f"{tokens(config.extend.max_tokens)}"
        + (
            "; stage 2 held (vLLM `min_tokens`) until it could reach that ratio"
            if config.extend.force_growth
            else ""
        )
        + (
            f"; dropped when a segment after the first has a relevance ratio above {config.extend.on_topic} "
            "(off topic)"
            if config.extend.on_topic is not None
            else ""
        ),
        "sft_data": "each non-blank line of the initial answer dropped with p = "
        f"{config.sft_data.line_drop_probability} in `ext_sft` prompts",
    }
    if final:
        control = config.length_control
        weights = ", ".join(f"{kind} {weight}" for kind, weight in control.weights.items())
        settings["length_control"] = (
            f"targets of {control.min_words}–{control.max_words} words in units of {control.round_to} "
            f"({control.coarse_round_to} with p = {control.coarse_probability}); types {weights}"
        )
    return settings


def _label(run: RunFolder, iteration: int) -> str:
    return f"{iteration} (final Generator)" if iteration > run.config.iterations else str(iteration)


def _lineage(run: RunFolder, repo_id: str, iterations: list[int], base: str) -> list[str]:
    config = run.config
    lines = []
    for iteration in iterations:
        if iteration > config.iterations:
            lines.append(
                f"Iteration {iteration}: instructions and `initial` answers by the final Generator, "
                f"trained in iteration {config.iterations}."
            )
        elif iteration == 1:
            lines.append(f"Iteration 1: Generator 1 and Extender 1 are the base model, {base}.")
        else:
            lines.append(
                f"Iteration {iteration}: Generator {iteration} and Extender {iteration} are the roles "
                f"trained in iteration {iteration - 1} on its `gen_sft` and `ext_sft` (LoRA adapters; "
                f"when the models are published, version `iter-{iteration - 1}` of "
                f"`{model_repo_id(repo_id, 'generator')}` and `{model_repo_id(repo_id, 'extender')}`)."
            )
    if config.self_instruct.model == "base":
        lines.append("Instructions of every iteration were written by the base model.")
    return lines


def dataset_card(
    run: RunFolder,
    repo_id: str,
    version: int,
    iterations: list[int],
    final_configs: list[str],
    histograms: dict[str, str],
    license_id: str,
) -> DatasetCard:
    """The card of version `iter-<version>`, holding `iterations` and the `final_configs`."""
    config = run.config
    base = base_model_info(config.model)
    configs = [*ITERATION_FOLDERS, *final_configs]
    tables, drops = [], []
    for name in ITERATION_FOLDERS:
        rows = []
        for iteration in iterations:
            if not run.folder(name, iteration).finished():
                continue
            stats = run.stats(name, iteration)
            rows.append({"iteration": _label(run, iteration), "rows": stats["rows_out"], **stats["words"]})
            if name not in BUILD_SFT.folders:
                drops += drop_reasons(stats, _label(run, iteration), STEP_OF_FOLDER[name])
        tables.append({"name": name, "rows": rows, "histogram": histograms.get(name)})
    for name in final_configs:
        stats = run.stats(name)
        everything = f"1–{config.iterations}"
        tables.append(
            {
                "name": name,
                "rows": [{"iteration": everything, "rows": stats["rows_out"], **stats["words"]}],
                "histogram": histograms.get(name),
            }
        )
        drops += drop_reasons(stats, everything, STEP_OF_FOLDER[name])
    languages = sorted(
        set(
            pl.concat([run.read(INSTRUCTIONS, iteration).select("language") for iteration in iterations])[
                "language"
            ].unique()
        )
    )
    largest = max(row["rows"] for table in tables for row in table["rows"])
    card_data = DatasetCardData(
        license=license_id,
        language=languages,
        task_categories=["text-generation"],
        size_categories=[size_category(largest)],
        tags=TAGS,
        pretty_name=f"Self-Lengthen: {config.name}",
        configs=[
            {"config_name": name, "data_files": [{"split": "train", "path": data_files(name)}]}
            for name in configs
        ],
        source_models=[base.hub_id or base.spec],
    )
    return render(
        DatasetCard,
        "dataset_card.md",
        card_data,
        repo_id=repo_id,
        tag=f"iter-{version}",
        previous_tag=f"iter-{version - 1}" if version > 1 else None,
        iteration=version,
        total_iterations=config.iterations,
        final_configs=final_configs,
        base_model=base.description,
        base_model_short=base.short_name,
        seed=config.seed,
        sampling=config.sampling.model_dump(),
        settings=_settings(config, FINAL in final_configs),
        configs=tables,
        columns=column_table(configs),
        drops=drops,
        lineage=_lineage(run, repo_id, iterations, base.description),
        train_config=FINAL if FINAL in final_configs else GEN_SFT,
        train_model=base.hub_id or "your/base-model",
    )
