"""`selflengthen eval` end to end on the embedded model through the real engine (vLLM on the
CPU), with the same model as a (weak) judge: every item is scored by the formula, the judge's
replies are either parsed scores or counted failures, and the report files are written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selflengthen.eval.scores import length_following_score
from selflengthen.text import count_words

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
