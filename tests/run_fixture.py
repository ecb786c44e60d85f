"""A small finished run folder, written by the loop's own writers (config, step folders, SFT
data, collect, length control) from hand-made rows, for tests that read runs (publish, cards)
without spending minutes on the engine. The loop e2e test publishes a real run too."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch
import yaml
from peft import LoraConfig
from safetensors.torch import save_file

from selflengthen.builders.collect import long_folder, run_collect
from selflengthen.builders.folder import finish_step, step_folder, word_summary
from selflengthen.builders.length_control import run_length_control
from selflengthen.builders.sft_data import run_build_sft
from selflengthen.config import RunConfig, load_config
from selflengthen.loop import save_config
from selflengthen.train.roles import ROLES, effective_recipe, trained_role

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-cpu" / "sft.yaml"
SAMPLING = json.dumps({"temperature": 0.7, "top_p": 0.8, "max_tokens": 1000, "seed": 0})


def _text(words: int, language: str, salt: str) -> str:
    if language == "zh":
        return "长" * (words - 1) + "。"
    return " ".join(f"{salt}{index}" for index in range(words - 1)) + " end."


def _rows(iteration: int) -> list[dict]:
    """Two instructions per iteration (the second one of iteration 2 in Chinese)."""
    languages = ["en", "zh" if iteration == 2 else "en"]
    return [
        {
            "id": f"i{iteration}-{n}",
            "language": language,
            "instruction": f"Write about topic {iteration}.{n}.",
        }
        for n, language in enumerate(languages)
    ]


def _stats(step: str, iteration: int, words: list[int], **extra: object) -> dict:
    return {
        "step": step,
        "iteration": iteration,
        "rows_in": len(words) + 1,
        "rows_out": len(words),
        **extra,
        "words": word_summary(words),
    }


def _write_iteration(config: RunConfig, run_dir: Path, iteration: int, train: bool) -> None:
    rows = _rows(iteration)
    model = config.model if iteration == 1 else f"{run_dir}/models/iter_{iteration - 1}/generator/merged"
    instructions = pl.DataFrame(
        [row | {"iteration": iteration, "words": 5, "attempts": 1, "model": model} for row in rows]
    )
    finish_step(
        step_folder(run_dir, iteration, "instructions"),
        instructions,
        _stats("self-instruct", iteration, [5] * len(rows), rejected_attempts={"judge_no": 2}),
    )
    initial, extended = [], []
    for n, row in enumerate(rows):
        short, long = 100 * iteration + 10 * n + 50, 200 * iteration + 10 * n + 120
        common = {
            "id": f"{row['id']}-0",
            "iteration": iteration,
            "instruction_id": row["id"],
            "instruction": row["instruction"],
            "language": row["language"],
        }
        initial_text = _text(short, row["language"], "w")
        extras = {"attempts": 1, "finish_reason": "stop", "model": model, "sampling": SAMPLING}
        initial.append(common | {"response": initial_text, "words": short} | extras)
        extended.append(
            common
            | {
                "initial_response": initial_text,
                "initial_words": short,
                "extended_response": _text(long, row["language"], "x"),
                "extended_words": long,
                "rounds": 1,
            }
            | extras
        )
    finish_step(
        step_folder(run_dir, iteration, "initial"),
        pl.DataFrame(initial),
        _stats(
            "generate",
            iteration,
            [row["words"] for row in initial],
            failed_samples={"request_error": 0, "retries_exhausted": 1},
            dropped_by_sampler=1,
            rejected_attempts={
                "finish_reason: length": 3,
                "🔚 Ending: bad_ending": 1,
                "🔁 Repetition: repeated_ngram": 2,
            },
            stopped_early={"🔁 Repetition: repeated_ngram": {"requests": 2, "completion_tokens": 412}},
        ),
    )
    extended_frame = pl.DataFrame(extended)
    finish_step(
        step_folder(run_dir, iteration, "extended"),
        extended_frame,
        _stats(
            "extend",
            iteration,
            [row["extended_words"] for row in extended],
            failed_rows={"no_round_succeeded": 1},
            rejected_attempts={"not_longer": 2},
        ),
    )
    run_build_sft(run_dir, iteration, extended_frame, config.sft_data.line_drop_probability, config.seed)
    if train:
        for role in ROLES:
            _write_trained_role(config, run_dir, iteration, role)


def _write_trained_role(config: RunConfig, run_dir: Path, iteration: int, role: str) -> None:
    """What `train_role` leaves: a PEFT adapter (pointing at a local base folder), its result,
    the effective recipe and a merged model folder."""
    folder = trained_role(run_dir, iteration, role).folder
    adapter, merged = folder / "adapter", folder / "merged"
    LoraConfig(r=8, lora_alpha=16, target_modules="all-linear").save_pretrained(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(run_dir.parent / "cache" / "models" / config.model)
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    save_file(
        {"base_model.model.layer.lora_A.weight": torch.zeros(8, 4)}, adapter / "adapter_model.safetensors"
    )
    (adapter / "README.md").write_text("PEFT's generated card\n")
    (adapter / "training_args.bin").write_bytes(b"pickled TrainingArguments")
    result = {
        "training_loss": 1.5 / iteration,
        "global_step": 3,
        "losses": [1.6, 1.5, 1.4],
        "rows": 2,
        "continued_from": str(trained_role(run_dir, iteration - 1, role).adapter) if iteration > 1 else None,
        "seconds": 1.0,
    }
    (adapter / "train_result.json").write_text(json.dumps(result))
    (folder / "recipe.yaml").write_text(yaml.safe_dump(effective_recipe(RECIPE)[0], sort_keys=False))
    merged.mkdir(parents=True)
    (merged / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"weight": torch.ones(2, 2)}, merged / "model.safetensors")


def make_run(
    root: Path, iterations: int = 2, trained: int | None = None, final: bool = True, **overrides: object
) -> Path:
    """A run folder `root/run` whose iterations 1..`iterations` have data, 1..`trained` (default:
    all) trained roles, and (when every iteration is trained and `final`) long and final sets."""
    trained = iterations if trained is None else trained
    root.mkdir(parents=True, exist_ok=True)
    (root / "sft.yaml").write_text(RECIPE.read_text())
    data = {
        "name": "fixture",
        "run_dir": str(root / "run"),
        "iterations": iterations,
        "train": {"recipe": "sft.yaml"},
        "sampling": {"max_tokens": 1000},  # fits the default context of 4096 tokens
    }
    data["length_control"] = {"min_words": 100, "max_words": 2000, "round_to": 100, "coarse_round_to": 100}
    (root / "run.yaml").write_text(yaml.safe_dump(data | overrides))
    config = load_config(root / "run.yaml")
    run_dir = config.folder
    run_dir.mkdir(parents=True)
    save_config(config, run_dir)
    for iteration in range(1, iterations + 1):
        _write_iteration(config, run_dir, iteration, train=iteration <= trained)
    if final and trained == iterations:
        run_collect(run_dir, iterations, extra=False)
        run_length_control(run_dir, long_folder(run_dir).read(), config.length_control, config.seed)
    return run_dir
