"""`selflengthen run` end to end: the shipped CPU recipe (2 iterations, the embedded model served
by vLLM on the CPU, LoRA SFT of both roles with TRL), as a user runs it.

This is the README's main job with its run folder moved into pytest's temporary folder and its
model served in float32: the session's reference run (tests/e2e_runs.py), which other modules
compare with.
"""

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from safetensors.torch import load_file

from selflengthen.config import load_config
from selflengthen.engine.models import resolve_model
from selflengthen.filters import EndingFilter, MetaCommentFilter, RepetitionFilter, apply_filters
from tests.e2e_runs import RECIPE, SCRIPT, ReferenceRun, run_command

pytestmark = pytest.mark.e2e

ROLES = ("generator", "extender")


@pytest.fixture(scope="module")
def finished_run(reference_run: ReferenceRun) -> tuple[Path, str]:
    return reference_run.run_dir, reference_run.output


def stats(run_dir: Path, *parts: str) -> dict:
    return json.loads(run_dir.joinpath(*parts, "stats.json").read_text())


def test_every_step_of_both_iterations_wrote_data_and_stats(finished_run) -> None:
    run_dir, result = finished_run
    for iteration in (1, 2):
        for step in ("instructions", "initial", "extended", "gen_sft", "ext_sft"):
            folder = run_dir / f"iter_{iteration}" / step
            frame = pl.read_parquet(folder / "data" / "*.parquet")
            assert frame.height == stats(run_dir, f"iter_{iteration}", step)["rows_out"] > 0
        for role in ROLES:
            trained = json.loads(
                (run_dir / f"models/iter_{iteration}/{role}/adapter/train_result.json").read_text()
            )
            assert trained["global_step"] == 3 and trained["training_loss"] > 0
            assert len(trained["step_seconds"]) == 3 and trained["num_tokens"] > 0
            assert trained["peak_accelerator_memory"] is None  # no GPU
            assert trained["continued_from"] == (
                None if iteration == 1 else str(run_dir / f"models/iter_1/{role}/adapter")
            )
    for final in ("long", "final"):
        assert (
            stats(run_dir, final)["rows_out"]
            == pl.read_parquet(run_dir / final / "data" / "*.parquet").height
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["iteration"] for row in summary["iterations"]] == [1, 2]
    assert "generator loss" in result and "extended words mean/median/max" in result
    saved = (run_dir / "config.yaml").read_text()
    assert (
        "name: smollm2-cpu" in saved
        and (run_dir / "train_recipe.yaml").read_text() == (RECIPE.parent / "sft.yaml").read_text()
    )


def test_iteration_two_is_served_by_the_roles_trained_in_iteration_one(finished_run) -> None:
    run_dir, _ = finished_run
    assert stats(run_dir, "iter_1", "initial")["model"] == "smollm2-135m"
    assert stats(run_dir, "iter_2", "initial")["model"] == str(run_dir / "models/iter_1/generator/merged")
    assert stats(run_dir, "iter_2", "extended")["model"] == str(run_dir / "models/iter_1/extender/merged")
    base = load_file(str(Path(resolve_model("smollm2-135m").source) / "model.safetensors"))
    for role in ROLES:
        merged = load_file(str(run_dir / f"models/iter_1/{role}/merged/model.safetensors"))
        assert merged.keys() == base.keys()
        changed = sum(int((merged[name] != base[name]).sum()) for name in base)
        assert changed > 0, f"the served {role} has the base model's weights"
        assert (run_dir / f"models/iter_1/{role}/merged/chat_template.jinja").is_file()


def test_sft_datasets_load_and_hold_the_extended_answers(finished_run) -> None:
    run_dir, _ = finished_run
    for iteration in (1, 2):
        extended = pl.read_parquet(run_dir / f"iter_{iteration}/extended/data/*.parquet").sort("id")
        for step, role in (("gen_sft", "generator"), ("ext_sft", "extender")):
            dataset = load_dataset(str(run_dir / f"iter_{iteration}" / step), split="train")
            assert dataset.num_rows == extended.height
            assert [messages[1]["content"] for messages in dataset["messages"]] == extended[
                "extended_response"
            ].to_list()
            assert [[turn["role"] for turn in messages] for messages in dataset["messages"]] == [
                ["user", "assistant"]
            ] * extended.height
            trained = json.loads(
                (run_dir / f"models/iter_{iteration}/{role}/adapter/train_result.json").read_text()
            )
            assert trained["rows"] == dataset.num_rows  # TRL took every row


def test_extended_rows_grew_and_kept_the_answers_they_extend(finished_run) -> None:
    run_dir, _ = finished_run
    for iteration in (1, 2):
        extended = pl.read_parquet(run_dir / f"iter_{iteration}/extended/data/*.parquet")
        initial = pl.read_parquet(run_dir / f"iter_{iteration}/initial/data/*.parquet")
        min_ratio = load_config(RECIPE).extend.min_ratio
        assert (extended["extended_words"] > min_ratio * extended["initial_words"]).all()
        joined = extended.join(initial, on="id")
        assert joined.height == extended.height
        assert (joined["initial_response"] == joined["response"]).all()


def test_long_and_final_sets(finished_run) -> None:
    run_dir, _ = finished_run
    long = pl.read_parquet(run_dir / "long/data/*.parquet")
    assert set(long["iteration"]) == {1, 2} and set(long["origin"]) == {"initial", "extended"}
    assert long.select("instruction", "response").n_unique() == long.height
    final = pl.read_parquet(run_dir / "final/data/*.parquet")
    assert final["words"].is_between(200, 2000).all()
    assert final.height == long.filter(pl.col("words").is_between(200, 2000)).height
    for row in final.iter_rows(named=True):
        assert row["low_words"] <= row["words"] <= row["high_words"]  # eval's interval: scored 100
        assert row["original_instruction"] in row["instruction"]
    kept = apply_filters(
        long.filter(pl.col("origin") == "extended"),
        [EndingFilter(), RepetitionFilter(), MetaCommentFilter()],
        text_column="response",
    ).kept
    assert kept.height == long.filter(pl.col("origin") == "extended").height


def test_rerunning_the_finished_run_does_nothing(finished_run) -> None:
    run_dir, _ = finished_run
    before = {
        path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.name != ".lock"
    }
    again = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== " not in again.stdout and "starting vLLM" not in again.stdout + again.stderr
    after = {
        path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.name != ".lock"
    }
    assert after.keys() == before.keys()
    changed = [str(path) for path in before if before[path] != after[path]]
    assert changed == [], changed


def test_the_finished_run_publishes_as_two_versions_with_cards(finished_run, tmp_path: Path) -> None:
    """The real run through `selflengthen publish --dry-run`: every config loads with the rows
    the steps' stats count, the card states those counts, and the run folder is not touched."""
    run_dir, _ = finished_run
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    out = tmp_path / "hub"
    command = [
        SCRIPT,
        "publish",
        str(run_dir),
        "--repo",
        "ci/loop",
        "--models",
        "--dry-run",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("iter-1:") == 3 and result.stdout.count("iter-2:") == 3
    root = out / "datasets" / "ci" / "loop"
    card = DatasetCard.load(root / "README.md").text
    for config in ("instructions", "initial", "extended", "gen_sft", "ext_sft"):
        counts = [stats(run_dir, f"iter_{k}", config)["rows_out"] for k in (1, 2)]
        loaded = load_dataset(str(root), config, split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == sum(counts), config
        section = card.split(f"### `{config}`")[1]
        for k, count in zip((1, 2), counts, strict=True):
            assert f"| {k} | {count} | " in section, config
    for config in ("long", "final"):
        loaded = load_dataset(str(root), config, split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == stats(run_dir, config)["rows_out"]
    for role in ROLES:
        assert (out / "models" / "ci" / f"loop-{role}" / "adapter_model.safetensors").is_file()
    after = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    assert after == before
