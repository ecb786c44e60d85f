"""Evaluation: the two length scores on hand-computed values, prompt files, judge replies, and
`selflengthen eval --responses` end to end (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from selflengthen.errors import SelflengthenError
from selflengthen.eval.prompts import load_prompts, normalise
from selflengthen.eval.rollouts import parse_judgement
from selflengthen.length_scores import (
    constraint_numbers,
    length_following_score,
    longbench_length_score,
    target_interval,
)


@pytest.mark.parametrize(
    ("kind", "constraint", "interval"),
    [
        ("about", 1000, (800.0, 1200.0)),
        ("range", "2000-3000", (2000.0, 3000.0)),
        ("range", [500, 800], (500.0, 800.0)),
        ("above", "3,000 words", (3000.0, 4500.0)),
        ("below", "400", (200.0, 400.0)),
    ],
)
def test_target_intervals(kind: str, constraint: object, interval: tuple[float, float]) -> None:
    assert target_interval(kind, constraint) == pytest.approx(interval)


@pytest.mark.parametrize(
    ("words", "low", "high", "expected"),
    [
        (1000, 800, 1200, 100.0),  # inside
        (800, 800, 1200, 100.0),  # the lower boundary is inside
        (1200, 800, 1200, 100.0),  # the upper boundary is inside
        (600, 800, 1200, 50.0),  # 2·600/800 − 1 = 0.5
        (400, 800, 1200, 0.0),  # 2·400/800 − 1 = 0: the floor is reached at a/2
        (100, 800, 1200, 0.0),  # below a/2: floored at 0
        (0, 800, 1200, 0.0),
        (1500, 800, 1200, 50.0),  # 3 − 2·1500/1200 = 0.5
        (1800, 800, 1200, 0.0),  # 3 − 2·1800/1200 = 0: the floor is reached at 1.5·b
        (5000, 800, 1200, 0.0),
        (250, 200, 400, 100.0),  # below T=400: [200, 400]
        (150, 200, 400, 50.0),
    ],
)
def test_length_following_score(words: int, low: float, high: float, expected: float) -> None:
    assert length_following_score(words, low, high) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("required", "produced", "expected"),
    [
        (1000, 1000, 100.0),  # exact: both branches give 100
        (1000, 2500, 50.0),  # y > x: 1 − (2.5 − 1)/3 = 0.5
        (1000, 4000, 0.0),  # 1 − (4 − 1)/3 = 0
        (1000, 9000, 0.0),  # floored
        (1000, 500, 50.0),  # y < x: 1 − (2 − 1)/2 = 0.5
        (1000, 333, 0.0),  # 1 − (3.003 − 1)/2 < 0: floored
        (1000, 800, 87.5),  # 1 − (1.25 − 1)/2 = 0.875
        (1000, 1300, 90.0),  # 1 − 0.3/3 = 0.9
        (1000, 0, 0.0),  # nothing produced
    ],
)
def test_longbench_length_score(required: int, produced: int, expected: float) -> None:
    assert longbench_length_score(required, produced) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("kind", "constraint", "message"),
    [
        ("around", 100, "unknown constraint type 'around'"),
        ("range", "2000", "a range needs two numbers"),
        ("range", "3000-2000", "a range needs two numbers lo <= hi"),
        ("about", "many words", "about needs one positive number"),
        ("below", 0, "below needs one positive number"),
    ],
)
def test_bad_constraints(kind: str, constraint: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        target_interval(kind, constraint)


def test_constraint_numbers() -> None:
    assert constraint_numbers("between 1,500 and 2,000 words") == [1500, 2000]
    assert constraint_numbers(2.0) == [2]


def test_the_builtin_prompts_cover_both_languages_and_every_type_early() -> None:
    prompts = load_prompts("builtin")
    assert prompts.height == 16 and prompts["id"].n_unique() == 16
    assert set(prompts.group_by("language", "type").len()["len"]) == {2}  # 2 of each type per language
    first = prompts.head(8)
    assert set(zip(first["language"], first["type"], strict=True)) == {
        (language, kind) for language in ("en", "zh") for kind in ("about", "range", "above", "below")
    }


def test_longbench_style_prompts_are_normalised() -> None:
    frame = pl.DataFrame({"prompt": ["Write 300 words.", "写800字。"], "length": [300, 800]})
    prompts = normalise(frame, "lb.jsonl")
    assert prompts["required"].to_list() == [300, 800]
    assert prompts["language"].to_list() == ["en", "zh"]
    assert prompts["range"].to_list() == ["<500", "500-2000"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"text": ["x"]}, "p.jsonl: no column 'query' or 'prompt'"),
        ({"query": ["x"]}, "p.jsonl: no column 'constraint' (LonGen-style) or 'length'"),
        (
            {"query": ["x"], "type": ["about"], "constraint": ["lots"]},
            "p.jsonl: row 1: type/constraint: about",
        ),
        ({"query": [""], "type": ["about"], "constraint": ["5"]}, "p.jsonl: row 1: empty 'query'"),
        ({"prompt": ["x"], "length": [0]}, "p.jsonl: row 1: length must be a positive"),
        (
            {"id": ["a", "a"], "prompt": ["x", "y"], "length": [5, 6]},
            "p.jsonl: id 'a' appears more than once",
        ),
    ],
)
def test_bad_prompt_files(frame: dict, message: str) -> None:
    with pytest.raises(SelflengthenError) as caught:
        normalise(pl.DataFrame(frame), "p.jsonl")
    assert str(caught.value).startswith(message)


def test_judge_replies_parse_only_when_every_score_is_there() -> None:
    full = (
        '{"relevance": 7, "coherence": 6, "accuracy": 8, "consistency": 7, "clarity": 7, '
        '"creativity": 5, "engagement": 6}'
    )
    assert parse_judgement(f"Here you go:\n{full}\nThanks")["accuracy"] == 8
    assert parse_judgement(full.replace('"creativity": 5, ', "")) is None  # one missing
    assert parse_judgement(full.replace("8", "11")) is None  # out of range
    assert parse_judgement(full.replace("8", '"8"')) is None  # not a number
    assert parse_judgement("I rate it 7 out of 10.") is None
    assert parse_judgement('{"relevance": true}' + full)["relevance"] == 7  # the first complete object


def test_eval_responses_scores_existing_answers_and_writes_the_report(tmp_path: Path) -> None:
    """`--responses` with two models in one file: no engine is started; the JSON, the table and
    both plots are written, and each item's score is the formula's."""
    rows = [
        {"id": "a", "query": "About 100 words.", "type": "about", "constraint": "100", "language": "en",
         "model": "short", "response": " ".join(["w"] * 50)},
        {"id": "b", "query": "Below 40 words.", "type": "below", "constraint": "40", "language": "en",
         "model": "short", "response": " ".join(["w"] * 30)},
        {"id": "a", "query": "About 100 words.", "type": "about", "constraint": "100", "language": "en",
         "model": "long", "response": " ".join(["w"] * 100)},
        {"id": "b", "query": "Below 40 words.", "type": "below", "constraint": "40", "language": "en",
         "model": "long", "response": " ".join(["w"] * 70)},
    ]  # fmt: skip
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "selflengthen.cli",
        "eval",
        "--responses",
        str(source),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "starting vLLM" not in result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    scores = {(item["model"], item["id"]): item["score"] for item in results["items"]}
    # short/a: 50 words for [80, 120]: 2·50/80 − 1 = 0.25; short/b: 30 in [20, 40]: 100
    # long/a: 100 in [80, 120]: 100; long/b: 70 above [20, 40]: 3 − 140/40 < 0: 0
    assert scores == {("short", "a"): 25.0, ("short", "b"): 100.0, ("long", "a"): 100.0, ("long", "b"): 0.0}
    assert (
        results["aggregates"]["short"]["overall"] == 62.5 and results["aggregates"]["long"]["overall"] == 50.0
    )
    assert results["aggregates"]["long"]["by_type"]["below"] == {"score": 0.0, "items": 1}
    table = (out / "results.md").read_text()
    assert table.splitlines()[0] == "| | `short` | `long` |"
    assert "| **length score (overall)** | 62.5 | 50.0 |" in table
    for plot in ("scatter.png", "by_type.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_eval_with_a_bad_prompt_source_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "selflengthen.cli", "eval", "--prompts", str(tmp_path / "none.jsonl"),
               "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"selflengthen: error: {tmp_path / 'none.jsonl'}: no such file"
    ]
    assert not (tmp_path / "out").exists()
