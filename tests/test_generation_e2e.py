"""self-instruct -> generate -> extend -> build-sft run alone, as a user runs them (the
installed `selflengthen` command, which starts and stops its own vLLM server), on the real engine
with the embedded model, with early stop and speculation off (the session's `steps_run`,
tests/e2e_runs.py).

They use the settings of the session's reference run (served in float32, early stop and
speculation on), and in float32 sampling with the same seeds gives the same text however
requests are batched. So the step commands must make iteration 1 of the loop row for row, text
included, although every request here runs to its end, one attempt after another, and the loop
was killed four times: the step commands and the loop are one code path, early stop changes no
kept row while it generates fewer tokens, and neither do attempts started ahead of need.
"""

import json
from pathlib import Path

import polars as pl
import pytest

from selflengthen.builders.extend import EXTENDED_SCHEMA
from selflengthen.builders.generate import INITIAL_SCHEMA
from selflengthen.builders.self_instruct import INSTRUCTION_SCHEMA
from selflengthen.filters import EndingFilter, MetaCommentFilter, RepetitionFilter, apply_filters
from selflengthen.filters.registry import DEFAULT_FILTERS
from tests.e2e_runs import (
    CONFIG,
    ON_TOPIC_NEVER_DROPS,
    SAMPLING,
    STEPS,
    THIRD_PARTY_FILTER,
    ReferenceRun,
    step_command,
)

pytestmark = pytest.mark.e2e


def step(run: Path, name: str) -> tuple[pl.DataFrame, dict]:
    folder = run / "iter_1" / name
    return pl.read_parquet(folder / "data" / "*.parquet"), json.loads((folder / "stats.json").read_text())


def test_the_steps_alone_make_the_loops_rows_with_early_stop_off(
    steps_run: Path, reference_run: ReferenceRun
) -> None:
    for name in STEPS:
        alone, stats = step(steps_run, name)
        in_loop, _ = step(reference_run.run_dir, name)
        assert stats.get("stopped_early", {}) == {}, name
        assert alone.drop("model").equals(in_loop.drop("model")), name


def test_early_stop_generated_fewer_tokens(steps_run: Path, reference_run: ReferenceRun) -> None:
    tokens = {
        run: sum(step(run, name)[1]["completion_tokens"] for name in ("initial", "extended"))
        for run in (steps_run, reference_run.run_dir)
    }
    stopped = {
        name: step(reference_run.run_dir, name)[1]["stopped_early"] for name in ("initial", "extended")
    }
    assert any(stopped.values()), stopped
    for per_step in stopped.values():
        for reason, counts in per_step.items():
            assert reason.split(": ")[1] in ("repeated_ngram", "character_loop", "meta_comment"), reason
            assert counts["requests"] >= 1 and counts["completion_tokens"] >= 0
    print(
        f"completion tokens: early stop {tokens[reference_run.run_dir]}, none {tokens[steps_run]}; {stopped}"
    )
    assert tokens[reference_run.run_dir] < tokens[steps_run]


def test_speculation_started_attempts_ahead_only_when_on(
    steps_run: Path, reference_run: ReferenceRun
) -> None:
    """The row-for-row comparison above compares speculation on (the loop) with off (the steps)."""
    started = {
        run: sum(step(run, name)[1]["speculative"]["attempts_started"] for name in ("initial", "extended"))
        for run in (steps_run, reference_run.run_dir)
    }
    assert started[steps_run] == 0
    assert started[reference_run.run_dir] >= 1, started
    for name in ("initial", "extended"):
        stats = step(reference_run.run_dir, name)[1]
        assert stats["speculate"] is True and stats["precision"]["dtype"] == "float32"
        assert 0 < stats["requests_in_flight_mean"] <= CONFIG.engine.concurrency


def test_instructions(steps_run: Path) -> None:
    frame, stats = step(steps_run, "instructions")
    assert frame.schema == pl.Schema(INSTRUCTION_SCHEMA)
    assert 1 <= frame.height <= CONFIG.self_instruct.count and stats["rows_out"] == frame.height
    assert frame["words"].is_between(4, 499).all()
    assert frame["instruction"].str.to_lowercase().n_unique() == frame.height


def test_initial_responses_are_finished_and_clean(steps_run: Path) -> None:
    frame, stats = step(steps_run, "initial")
    assert frame.schema == pl.Schema(INITIAL_SCHEMA)
    assert frame.height >= 1 and stats["rows_out"] == frame.height
    assert (frame["finish_reason"] == "stop").all()
    report = apply_filters(
        frame, [EndingFilter(), RepetitionFilter(), MetaCommentFilter()], text_column="response"
    )
    assert report.kept.height == frame.height, report.drop_reasons
    assert stats["requests"] >= stats["samples_accepted"] and stats["completion_tokens"] > 0


def test_extended_rows_grew_and_are_clean(steps_run: Path) -> None:
    frame, stats = step(steps_run, "extended")
    assert frame.schema == pl.Schema(EXTENDED_SCHEMA)
    assert frame.height >= 1, stats
    assert (frame["extended_words"] > CONFIG.extend.min_ratio * frame["initial_words"]).all()
    report = apply_filters(
        frame, [EndingFilter(), RepetitionFilter(), MetaCommentFilter()], text_column="extended_response"
    )
    assert report.kept.height == frame.height, report.drop_reasons
    initial, _ = step(steps_run, "initial")
    assert set(frame["id"]) <= set(initial["id"])
    means = frame["initial_words"].mean(), frame["extended_words"].mean()
    print(f"mean words initial {means[0]:.0f} -> extended {means[1]:.0f}")


def test_extend_scored_every_grown_row_for_relevance_on_its_server(steps_run: Path) -> None:
    """`--on-topic` on the real engine (the bound is never reached: `ON_TOPIC_NEVER_DROPS`):
    every row that grew enough was scored, and the Extender's own texts stay on their
    instructions (a last third's ratio below 1 in the median, as in `benchmarks/relevance.py`)."""
    _, stats = step(steps_run, "extended")
    on_topic = stats["on_topic"]
    assert on_topic["max_ratio"] == float(ON_TOPIC_NEVER_DROPS[1])
    assert on_topic["scored"] == stats["rows_grown"] >= 1 and on_topic["off_topic"] == 0
    assert stats["failed_rows"]["off_topic"] == 0
    assert 0 < on_topic["last_segment_ratio"]["median"] < 1, on_topic


def test_the_steps_name_the_filters_they_applied(steps_run: Path, reference_run: ReferenceRun) -> None:
    for run in (steps_run, reference_run.run_dir):
        for name in ("initial", "extended"):
            assert step(run, name)[1]["filters"] == [{"filter": check} for check in DEFAULT_FILTERS]


def test_a_datatrove_filter_in_the_filters_list_judges_every_finished_answer(
    reference_run: ReferenceRun,
) -> None:
    """`generate --filters` with datatrove's FineWebQualityFilter first (set to drop every
    finished answer), then ours, on the reference run's server: the datatrove filter rejects
    each finished answer before `ending` sees it, and, offering no watch, never stops a request
    early (only our repetition watch may)."""
    _, stats = step(reference_run.third_party, "initial")
    ((fineweb, arguments),) = THIRD_PARTY_FILTER.items()
    assert stats["filters"] == [
        {"filter": fineweb, **arguments},
        {"filter": "ending"},
        {"filter": "repetition"},
    ]
    rejected = stats["rejected_attempts"]
    assert rejected.get("🍷 FineWeb Quality: line_punct_ratio", 0) >= 1, rejected
    assert not any(reason.startswith("🔚 Ending") for reason in rejected), rejected
    assert all(reason.startswith("🔁 Repetition") for reason in stats["stopped_early"]), stats[
        "stopped_early"
    ]
    assert stats["rows_out"] == 0 and stats["requests"] >= 3


def test_finished_steps_do_no_new_requests(steps_run: Path) -> None:
    for folder, command in STEPS.items():
        before = (steps_run / "iter_1" / folder / "stats.json").read_bytes()
        output = step_command(command, "--run-dir", steps_run, *SAMPLING)
        assert "starting vLLM" not in output
        assert (steps_run / "iter_1" / folder / "stats.json").read_bytes() == before
