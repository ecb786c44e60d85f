"""The held-out length-growth evaluation: bootstrap intervals and paired ratios on hand-computed
cases, the overlap check, the per-model summary, and the report files it writes."""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from selflengthen.builders.checks import ResponseChecks
from selflengthen.errors import SelflengthenError
from selflengthen.eval import bootstrap
from selflengthen.eval.growth import (
    GROWTH_ROWS,
    HELDOUT,
    GrowthSetup,
    growth_setup,
    heldout_answers,
    load_growth_prompts,
    relevance_by_length,
    summarise,
    with_relevance,
)
from selflengthen.eval.overlap import find_overlaps, similarity
from selflengthen.eval.prompts import load_prompts
from selflengthen.eval.report import growth_table, write_report
from selflengthen.filters.registry import parse_entries
from selflengthen.prompts import shipped_seeds
from selflengthen.relevance import OFF_TOPIC_RATIO
from selflengthen.text import count_words
from tests.run_fixture import make_run

# --- bootstrap --------------------------------------------------------------------------------


def test_mean_and_median_intervals_resample_whole_prompts() -> None:
    # Two prompts with two answers each. A resample of prompts is {1,1}, {1,2}/{2,1} or {2,2}:
    # means 2, 4, 6 and medians 2, 4, 6, each extreme with probability 1/4 (far above 2.5%).
    words = np.array([[1.0, 3.0], [5.0, 7.0]])
    mean, median = bootstrap.mean_and_median(words, resamples=2000, seed=1)
    assert (mean.value, mean.low, mean.high) == (4.0, 2.0, 6.0)
    assert (median.value, median.low, median.high) == (4.0, 2.0, 6.0)


def test_identical_prompts_give_a_zero_width_interval() -> None:
    mean, median = bootstrap.mean_and_median(np.array([[3.0, 5.0]] * 6), resamples=500)
    assert (mean.value, mean.low, mean.high) == (4.0, 4.0, 4.0)
    assert (median.low, median.high) == (4.0, 4.0)


def test_a_missing_answer_counts_for_nothing() -> None:
    mean, median = bootstrap.mean_and_median(np.array([[2.0, np.nan], [4.0, 6.0]]), resamples=200)
    assert mean.value == 4.0 and median.value == 4.0


def test_paired_ratio_of_means_on_hand_computed_prompts() -> None:
    # Ratio of means 20 / 15. Resamples: {1,1} -> 20/10 = 2, mixed -> 40/30, {2,2} -> 1.
    base = np.array([[10.0, 10.0], [20.0, 20.0]])
    model = np.array([[20.0, 20.0], [20.0, 20.0]])
    ratio = bootstrap.paired_ratio(model, base, resamples=2000, seed=3)
    assert ratio.value == pytest.approx(4 / 3)
    assert (ratio.low, ratio.high) == (1.0, 2.0)
    assert list(bootstrap.per_prompt_ratios(model, base)) == [2.0, 1.0]


def test_pairing_removes_the_spread_between_prompts() -> None:
    # Every prompt 1.5x longer: the paired interval is exactly 1.5, however unequal the prompts.
    base = np.array([[100.0, 120.0], [400.0, 380.0], [50.0, 70.0], [900.0, 1000.0]])
    ratio = bootstrap.paired_ratio(1.5 * base, base, resamples=1000)
    assert ratio.value == pytest.approx(1.5)
    assert ratio.low == pytest.approx(1.5) and ratio.high == pytest.approx(1.5)


def test_the_same_seed_gives_the_same_interval() -> None:
    words = np.random.default_rng(0).integers(100, 900, size=(30, 2)).astype(float)
    assert bootstrap.mean_and_median(words, seed=5) == bootstrap.mean_and_median(words, seed=5)


def test_paired_matrices_must_have_the_same_prompts() -> None:
    with pytest.raises(ValueError, match="same prompts"):
        bootstrap.paired_ratio(np.ones((3, 2)), np.ones((2, 2)))


# --- overlap ----------------------------------------------------------------------------------


def test_exact_and_near_duplicates_are_found_and_other_wordings_are_not() -> None:
    seen = [
        "Write an essay on what the invention of the refrigerator changed about family life!",
        "Please explain, for a curious ten-year-old child, how the water cycle works in nature.",
        "Write a story about a lighthouse keeper.",
    ]
    prompts = [
        ("exact", "write an essay on what the invention of the REFRIGERATOR changed about family life."),
        ("embedded", "Explain for a curious ten-year-old child how the water cycle works"),
        ("same-topic", "Describe how refrigerators changed the way families live and eat."),
        ("other", "Explain the rules of chess to a beginner."),
    ]
    found = {overlap.prompt_id: overlap for overlap in find_overlaps(prompts, seen)}
    assert set(found) == {"exact", "embedded"}
    assert found["exact"].similarity == 1.0 and found["exact"].seen == seen[0]
    assert found["embedded"].seen == seen[1]
    assert similarity("Explain the rules of chess to a beginner.", seen[2]) == 0.0


def test_our_heldout_prompts_are_new_open_ended_and_not_seeds() -> None:
    prompts = load_growth_prompts(HELDOUT)
    assert prompts.height >= 48 and prompts["id"].n_unique() == prompts.height
    assert prompts["query"].n_unique() == prompts.height
    assert not prompts["query"].str.contains(r"\d|words").any()  # no length constraint
    seeds = [row["instruction"] for row in shipped_seeds()]
    assert find_overlaps(zip(prompts["id"], prompts["query"], strict=True), seeds) == []
    builtin = load_prompts("builtin")["query"].to_list()  # the scored prompts are another set
    assert find_overlaps(zip(prompts["id"], prompts["query"], strict=True), builtin) == []


# --- setup and summary ------------------------------------------------------------------------


def test_setup_leaves_out_prompts_the_run_has_seen(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "seen", "query": "Write about topic 2.1."})
        + "\n"
        + json.dumps({"id": "new", "query": "Describe a harbour at dawn."})
        + "\n"
    )
    setup = growth_setup(run_dir, str(prompts), samples=3)
    assert [overlap.prompt_id for overlap in setup.excluded] == ["seen"]
    assert setup.prompts == 1 and setup.requests["id"].to_list() == [f"growth:new:{k}" for k in (1, 2, 3)]
    assert setup.requests.filter(GROWTH_ROWS).height == 3
    extended = pl.read_parquet(run_dir / "iter_1/extended/data/*.parquet")
    assert setup.extender["1"]["rows_kept"] == extended.height
    assert (
        setup.extender["1"]["ratios"]
        == (extended["extended_words"] / extended["initial_words"]).round(3).to_list()
    )


def test_setup_refuses_a_prompt_file_without_prompts(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "a", "query": "  "}) + "\n")
    with pytest.raises(SelflengthenError, match="prompt 'a' is empty"):
        growth_setup(run_dir, str(empty), samples=2)
    only_seen = tmp_path / "seen.jsonl"
    only_seen.write_text(json.dumps({"query": "Write about topic 1.0."}) + "\n")
    with pytest.raises(SelflengthenError, match="every prompt overlaps"):
        growth_setup(run_dir, str(only_seen), samples=2)


def _answers(label: str, texts: dict[tuple[str, int], tuple[str | None, str | None]]) -> pl.DataFrame:
    """A model's growth answers as `eval` hands them to `summarise`."""
    return heldout_answers(_responses(label, texts))


def _responses(label: str, texts: dict[tuple[str, int], tuple[str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": f"growth:{prompt}:{sample}",
                "prompt_id": prompt,
                "sample": sample,
                "model": label,
                "response": text,
                "finish_reason": finish,
            }
            for (prompt, sample), (text, finish) in texts.items()
        ],
        schema={
            "id": pl.String,
            "prompt_id": pl.String,
            "sample": pl.Int64,
            "model": pl.String,
            "response": pl.String,
            "finish_reason": pl.String,
        },
    )


def _text(words: int, end: str = ".") -> str:
    return " ".join(f"w{index}" for index in range(words)) + end


def _two_prompts_twice(tmp_path: Path) -> GrowthSetup:
    """The growth setup of a one-iteration run asked prompts `a` and `b`, 2 samples each."""
    run_dir = make_run(tmp_path, iterations=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": p, "query": f"Describe place {p}."}) + "\n" for p in "ab"))
    return growth_setup(run_dir, str(prompts), samples=2)


def test_summary_figures_per_model(tmp_path: Path) -> None:
    setup = _two_prompts_twice(tmp_path)
    base = _answers(
        "base",
        {
            ("a", 1): (_text(10), "stop"),
            ("a", 2): (_text(10), "stop"),
            ("b", 1): (_text(20), "stop"),
            ("b", 2): (_text(20), "stop"),
        },
    )
    trained = _answers(
        "iter-1",
        {
            ("a", 1): (_text(20), "stop"),
            ("a", 2): (_text(20, end=""), "length"),  # cut off, and no terminal mark
            ("b", 1): (_text(30), "stop"),
            ("b", 2): (None, None),  # a failed request: not a 0-word answer
        },
    )
    summary = summarise({"base": base, "iter-1": trained}, setup, seed=0)
    assert summary["prompts"] == 2 and summary["samples_per_prompt"] == 2
    first = summary["models"]["iter-1"]
    assert first["answers"] == 3 and first["failed_requests"] == 1
    assert first["words"] == [count_words(_text(20)), count_words(_text(20, end="")), count_words(_text(30))]
    assert first["mean_words"]["value"] == pytest.approx(np.mean(first["words"]), abs=0.05)
    assert first["cut_at_max_tokens_pct"] == pytest.approx(100 / 3, abs=0.05)
    assert first["pass_ending_pct"] == pytest.approx(200 / 3, abs=0.05)
    assert first["pass_repetition_pct"] == 100.0
    assert first["pass_both_pct"] == pytest.approx(200 / 3, abs=0.05)
    expected = np.mean([20, 20, 30]) / np.mean([10, 10, 20, 20])
    assert first["ratio_to_base"]["value"] == pytest.approx(expected, abs=0.001)
    assert first["prompts_longer_than_base_pct"] == 100.0
    assert "ratio_to_base" not in summary["models"]["base"]
    assert math.isclose(summary["models"]["base"]["mean_words"]["value"], 15.0)


LOOP = " ".join(["again and again"] * 40) + "."


def test_heldout_answers_are_the_evidence_behind_every_figure() -> None:
    answers = _responses(
        "iter-1",
        {
            ("b", 1): (_text(30), "stop"),
            ("a", 2): (_text(20, end=""), "length"),
            ("a", 1): (LOOP, "stop"),
            ("b", 2): (None, None),
        },
    )
    evidence = heldout_answers(answers)
    assert evidence.columns == [
        "prompt_id", "sample", "text", "words", "finish_reason", "pass_repetition", "pass_ending", "accepted"
    ]  # fmt: skip
    assert evidence.select("prompt_id", "sample").rows() == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    texts = [LOOP, _text(20, end=""), _text(30)]
    assert evidence["words"].to_list() == [*map(count_words, texts), None]
    assert evidence["pass_repetition"].to_list() == [False, True, True, None]
    assert evidence["pass_ending"].to_list() == [True, False, True, None]
    assert evidence["accepted"].to_list() == [False, False, True, None]  # the loop would keep only b/1
    # With the run's own filters: no repetition check (the loop passes), a floor of 40 words
    # that b/1 (30 words) does not reach.
    floor = ResponseChecks(parse_entries(["ending", {"length": {"min_words": 40}}]))
    assert heldout_answers(answers, floor)["accepted"].to_list() == [True, False, False, None]


def test_report_files_hold_the_growth_table_and_plots(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": p, "query": f"Describe place {p}."}) + "\n" for p in "abc"))
    setup = growth_setup(run_dir, str(prompts), samples=1)
    answers = {
        label: _answers(label, {(p, 1): (_text(words + 5 * i), "stop") for i, p in enumerate("abc")})
        for label, words in (("base", 10), ("iter-1", 15), ("iter-2", 25))
    }
    growth = summarise(answers, setup, seed=0)
    items = pl.DataFrame(
        {
            "id": ["x"],
            "query": ["q"],
            "type": ["about"],
            "language": ["en"],
            "range": ["<500"],
            "low": [8.0],
            "high": [12.0],
            "required": [None],
            "model": ["base"],
            "response": ["r"],
            "finish_reason": ["stop"],
            "words": [10],
            "score": [100.0],
        }
    )
    out = tmp_path / "eval"
    results = write_report(items, out, judged=False, growth=growth)
    assert json.loads((out / "results.json").read_text())["growth"] == results["growth"] == growth
    markdown = (out / "results.md").read_text()
    assert "## Length growth on held-out prompts" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`base`", "`iter-1`", "`iter-2`"]
    assert f"{growth['models']['iter-2']['ratio_to_base']['value']} [" in rows[2]
    assert "| 1 | " in markdown and "| 2 | " in markdown  # the Extender's rows per iteration
    for name in ("growth_words.png", "extender_growth.png", "scatter.png", "by_type.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_relevance_figures_per_model(tmp_path: Path) -> None:
    setup = _two_prompts_twice(tmp_path)
    answers = _answers(
        "iter-1",
        {
            ("a", 1): (_text(90), "stop"),
            ("a", 2): (_text(90), "stop"),
            ("b", 1): (_text(90), "stop"),
            ("b", 2): (None, None),  # a failed request is not scored
        },
    )
    ends = [0.8, OFF_TOPIC_RATIO + 0.05, 0.9]
    scored = with_relevance(answers, [[0.6, 0.7, ends[0]], [0.7, 0.9, ends[1]], [0.8, 0.8, ends[2]]])
    assert scored["off_topic_end"].to_list() == [False, True, False, None]
    assert scored["relevance"].to_list()[3] is None
    figures = summarise({"iter-1": scored}, setup, seed=0)["models"]["iter-1"]
    assert figures["relevance_scored"] == 3
    assert figures["relevance_first"]["value"] == pytest.approx(0.7)
    assert figures["relevance_last"]["value"] == pytest.approx(np.mean(ends), abs=0.001)
    assert figures["off_topic_end_pct"]["value"] == pytest.approx(100 / 3, abs=0.05)
    low, high = figures["relevance_first"]["low"], figures["relevance_first"]["high"]
    assert low <= 0.7 <= high and low < high  # prompts differ: the interval is not a point
    assert "relevance_first" not in summarise({"iter-1": answers}, setup, seed=0)["models"]["iter-1"]
    table = growth_table(summarise({"iter-1": scored}, setup, seed=0))
    header, row = table.splitlines()[2], table.splitlines()[4]
    assert "relevance, last segment" in header and "last segment off topic" in header
    assert row.count("|") == header.count("|") and "33.3% [" in row


def test_off_topic_ends_per_answer_length_use_the_bases_terciles() -> None:
    """Word ranges from the base's answers (terciles: 40 and 60 words of 20/30/40/60/70/90), the
    same for every model; each model's share of off-topic ends within each range."""
    off, on = [0.5, 0.5, OFF_TOPIC_RATIO + 0.1], [0.5, 0.5, 0.5]

    def scored(label: str, lengths: list[int], ends: list[list[float]]) -> pl.DataFrame:
        texts = {(f"p{index}", 1): (_text(words), "stop") for index, words in enumerate(lengths)}
        return with_relevance(_answers(label, texts), ends)

    answers = {
        "base": scored("base", [20, 30, 40, 60, 70, 90], [on, on, on, off, on, on]),
        "iter-1": scored("iter-1", [25, 65, 80, 95], [off, on, off, off]),
        "unscored": _answers("unscored", {("p0", 1): (_text(50), "stop")}),
    }
    table = relevance_by_length(answers, "base")
    assert table is not None and table["terciles_of"] == "base" and "unscored" not in table["models"]
    assert [entry["words"] for entry in table["models"]["base"]] == ["< 40", "40–59", "≥ 60"]
    assert [(e["answers"], e["off_topic_end_pct"]) for e in table["models"]["base"]] == [
        (2, 0.0),
        (1, 0.0),
        (3, 33.3),
    ]
    assert [(e["answers"], e["off_topic_end_pct"]) for e in table["models"]["iter-1"]] == [
        (1, 100.0),
        (0, None),
        (3, 66.7),
    ]
    assert relevance_by_length({"iter-1": answers["iter-1"]}, "base") is None
    growth = {"prompts": 6, "samples_per_prompt": 1, "interval": "-", "excluded_prompts": [], "extender": {}}
    markdown = growth_table({**growth, "models": {}, "relevance_by_length": table})
    assert "| `iter-1` | 100.0% of 1 | – | 66.7% of 3 |" in markdown
