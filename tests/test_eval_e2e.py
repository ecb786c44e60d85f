"""`selflengthen eval` end to end on the embedded model through the real engine (vLLM on the
CPU): with the same model as a (weak) judge, every item is scored by the formula, the judge's
replies are either parsed scores or counted failures, and the report files are written; with
`--compare`, the held-out growth figures come from the answers themselves."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from selflengthen.engine.models import resolve_model
from selflengthen.length_scores import length_following_score
from selflengthen.relevance import OFF_TOPIC_RATIO
from selflengthen.text import count_words
from tests.run_fixture import make_run

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))


def test_eval_of_the_embedded_model_on_the_builtin_prompts(tmp_path: Path) -> None:
    assert SCRIPT
    out = tmp_path / "eval"
    command = [
        SCRIPT, "eval", "--out", str(out), "--limit", "8", "--max-tokens", "600",
        "--judge", "smollm2-135m", "--judge-retries", "2", "--judge-max-tokens", "100",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("starting vLLM") == 1  # the judge shares the model's server
    results = json.loads((out / "results.json").read_text())
    items = results["items"]
    assert len(items) == 8 and {item["language"] for item in items} == {"en", "zh"}
    for item in items:
        assert item["response"] and item["finish_reason"] in ("stop", "length")
        assert item["words"] == count_words(item["response"])
        assert item["score"] == pytest.approx(
            length_following_score(item["words"], item["low"], item["high"]), abs=0.01
        )
        scores = [item[criterion] for criterion in ("relevance", "coherence", "accuracy", "clarity")]
        if item["judge_failed"]:
            assert scores == [None] * 4 and item["judge_attempts"] == 2
        else:
            assert all(1 <= score <= 10 for score in scores)
    summary = results["aggregates"]["smollm2-135m"]
    assert summary["items"] == 8 and set(summary["by_type"]) == {"about", "range", "above", "below"}
    assert summary["judge_failures"] == sum(item["judge_failed"] for item in items)
    assert 0 <= summary["overall"] <= 100
    assert "| **length score (overall)** |" in (out / "results.md").read_text()
    assert {path.name for path in (out / "plots").iterdir()} == {"scatter.png", "by_type.png"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "starting vLLM" not in again.stdout  # finished steps are reused
    assert json.loads((out / "results.json").read_text())["items"] == items


def test_eval_compare_measures_growth_on_prompts_the_run_never_saw(tmp_path: Path) -> None:
    """`eval --compare` through the real engine: a run folder whose iteration-1 Generator is
    the embedded model's own folder (served as a second model), the base and that Generator
    answering the growth prompts (2 samples each) in the same step as the scored prompts; a
    prompt the run has seen is left out; the report's figures are the answers' own."""
    assert SCRIPT
    run_dir = make_run(tmp_path / "fixture", iterations=1)
    merged = run_dir / "models/iter_1/generator/merged"
    shutil.rmtree(merged)
    merged.symlink_to(resolve_model("smollm2-135m").source, target_is_directory=True)
    seen = pl.read_parquet(run_dir / "iter_1/instructions/data/*.parquet")["instruction"][0]
    prompts = tmp_path / "growth.jsonl"
    rows = [
        {"id": "seen", "query": seen.upper()},
        {"id": "harbour", "query": "Describe a small fishing harbour at dawn."},
        {"id": "bees", "query": "Explain why bees matter for farming."},
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    command = [
        SCRIPT, "eval", "--compare", str(run_dir), "--out", str(out), "--limit", "2",
        "--growth-prompts", str(prompts), "--growth-samples", "2", "--max-tokens", "200", "--relevance",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left out 1 growth prompt(s) that the run has seen: seen" in result.stderr
    # One server per model, both prompt sets in it; the base answers last and scores relevance.
    assert result.stdout.count("starting vLLM") == 2
    results = json.loads((out / "results.json").read_text())
    growth = results["growth"]
    assert growth["prompts"] == 2 and [e["prompt_id"] for e in growth["excluded_prompts"]] == ["seen"]
    assert list(growth["models"]) == ["base", "iter-1"]
    assert len(results["items"]) == 2 * 2  # the scored prompts alone, not the growth answers
    for label, entry in growth["models"].items():
        answers = pl.read_parquet(out / "responses" / label / "data" / "*.parquet").filter(
            pl.col("id").str.starts_with("growth:")
        )
        assert answers.height == 4 and set(answers["prompt_id"]) == {"harbour", "bees"}
        answered = answers.filter(pl.col("response").is_not_null())
        assert entry["answers"] == answered.height > 0
        assert sorted(entry["words"]) == sorted(count_words(text) for text in answered["response"])
        assert entry["mean_words"]["low"] <= entry["mean_words"]["value"] <= entry["mean_words"]["high"]
        cut = 100 * (answered["finish_reason"] == "length").sum() / answered.height
        assert entry["cut_at_max_tokens_pct"] == pytest.approx(cut, abs=0.05)
        assert entry["length_score"] == results["aggregates"][label]["overall"]
        evidence = pl.read_ndjson(out / "heldout_answers" / f"{label}.jsonl")
        assert evidence.height == 4
        assert evidence["words"].drop_nulls().sort().to_list() == sorted(entry["words"])
        passed = evidence.filter(pl.col("text").is_not_null())["pass_ending"]
        assert entry["pass_ending_pct"] == pytest.approx(100 * passed.sum() / passed.len(), abs=0.05)
        scored = evidence.filter(pl.col("relevance").is_not_null())
        assert entry["relevance_scored"] == scored.height > 0
        lasts = [ratios[-1] for ratios in scored["relevance"].to_list()]
        assert all(ratio > 0 for ratios in scored["relevance"].to_list() for ratio in ratios)
        assert entry["relevance_last"]["value"] == pytest.approx(sum(lasts) / len(lasts), abs=0.001)
        assert scored["off_topic_end"].to_list() == [ratio > OFF_TOPIC_RATIO for ratio in lasts]
    assert "ratio_to_base" not in growth["models"]["base"]
    ratio = growth["models"]["iter-1"]["ratio_to_base"]
    base_mean, trained_mean = (growth["models"][label]["mean_words"]["value"] for label in ("base", "iter-1"))
    assert ratio["value"] == pytest.approx(trained_mean / base_mean, abs=0.01)
    extended = pl.read_parquet(run_dir / "iter_1/extended/data/*.parquet")
    assert growth["extender"]["1"]["rows_kept"] == extended.height
    assert "## Length growth on held-out prompts" in (out / "results.md").read_text()
    assert "relevance, last segment" in (out / "results.md").read_text()
    assert {"growth_words.png", "extender_growth.png"} <= {path.name for path in (out / "plots").iterdir()}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "starting vLLM" not in again.stdout  # finished answers reused
    assert json.loads((out / "results.json").read_text())["growth"] == growth
