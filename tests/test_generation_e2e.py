"""self-instruct -> generate -> extend on the real vLLM engine with the embedded model.

Each step is run as a user runs it (the installed `selflengthen` command, which launches and
stops its own vLLM server). Counts and token limits are tiny so that this fits in CI on 2 CPUs.
generate and extend run a second time on the same instructions with `--no-early-stop`: the
model is served in float32, in which sampling with the same seeds gives the same text however
requests are batched, so the two runs must keep the same rows, text for text.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from selflengthen.builders.extend import EXTENDED_SCHEMA
from selflengthen.builders.generate import INITIAL_SCHEMA
from selflengthen.builders.self_instruct import INSTRUCTION_SCHEMA
from selflengthen.filters import EndingFilter, MetaCommentFilter, RepetitionFilter, apply_filters

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
SAMPLING = ["--seed", "7", "--concurrency", "16", "--vllm-arg=--dtype=float32"]
GENERATE = ["--samples-per-instruction", "2", "--max-retries", "2", "--max-tokens", "1000"]
#: Six attempts per row: with three, none of the three rows grew (float32, seed 7).
EXTEND = ["--rounds", "1", "--max-retries", "6", "--max-tokens", "1000", "--min-ratio", "1.1"]


def selflengthen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    result = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    selflengthen("self-instruct", "--run-dir", run, "--count", "4", "--max-retries", "8",
                 "--seed-language", "en", *SAMPLING)  # fmt: skip
    selflengthen("generate", "--run-dir", run, *GENERATE, *SAMPLING)
    selflengthen("extend", "--run-dir", run, *EXTEND, *SAMPLING)
    return run


@pytest.fixture(scope="module")
def run_without_early_stop(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run-no-early-stop")
    shutil.copytree(run_dir / "iter_1" / "instructions", run / "iter_1" / "instructions")
    selflengthen("generate", "--run-dir", run, *GENERATE, *SAMPLING, "--no-early-stop")
    selflengthen("extend", "--run-dir", run, *EXTEND, *SAMPLING, "--no-early-stop")
    return run


def step(run: Path, name: str) -> tuple[pl.DataFrame, dict]:
    folder = run / "iter_1" / name
    return pl.read_parquet(folder / "data" / "*.parquet"), json.loads((folder / "stats.json").read_text())


def test_instructions(run_dir: Path) -> None:
    frame, stats = step(run_dir, "instructions")
    assert frame.schema == pl.Schema(INSTRUCTION_SCHEMA)
    assert 1 <= frame.height <= 4 and stats["rows_out"] == frame.height
    assert frame["words"].is_between(4, 499).all()
    assert frame["instruction"].str.to_lowercase().n_unique() == frame.height


def test_initial_responses_are_finished_and_clean(run_dir: Path) -> None:
    frame, stats = step(run_dir, "initial")
    assert frame.schema == pl.Schema(INITIAL_SCHEMA)
    assert frame.height >= 1 and stats["rows_out"] == frame.height
    assert (frame["finish_reason"] == "stop").all()
    report = apply_filters(
        frame, [EndingFilter(), RepetitionFilter(), MetaCommentFilter()], text_column="response"
    )
    assert report.kept.height == frame.height, report.drop_reasons
    assert stats["requests"] >= stats["samples_accepted"] and stats["completion_tokens"] > 0


def test_extended_rows_grew_and_are_clean(run_dir: Path) -> None:
    frame, stats = step(run_dir, "extended")
    assert frame.schema == pl.Schema(EXTENDED_SCHEMA)
    assert frame.height >= 1, stats
    assert (frame["extended_words"] > 1.1 * frame["initial_words"]).all()
    report = apply_filters(
        frame, [EndingFilter(), RepetitionFilter(), MetaCommentFilter()], text_column="extended_response"
    )
    assert report.kept.height == frame.height, report.drop_reasons
    initial, _ = step(run_dir, "initial")
    assert set(frame["id"]) <= set(initial["id"])
    means = frame["initial_words"].mean(), frame["extended_words"].mean()
    print(f"mean words initial {means[0]:.0f} -> extended {means[1]:.0f}")


def test_finished_steps_do_no_new_requests(run_dir: Path) -> None:
    for command in ("self-instruct", "generate", "extend"):
        stats_file = (
            run_dir
            / "iter_1"
            / {"self-instruct": "instructions"}.get(
                command, "initial" if command == "generate" else "extended"
            )
        )
        before = (stats_file / "stats.json").read_bytes()
        result = selflengthen(command, "--run-dir", run_dir, *SAMPLING)
        assert "starting vLLM" not in result.stderr
        assert (stats_file / "stats.json").read_bytes() == before


def test_early_stop_keeps_the_same_rows_with_fewer_tokens(
    run_dir: Path, run_without_early_stop: Path
) -> None:
    tokens = {}
    for run in (run_dir, run_without_early_stop):
        tokens[run] = 0
        for name in ("initial", "extended"):
            frame, stats = step(run, name)
            tokens[run] += stats["completion_tokens"]
            if run is run_without_early_stop:
                assert stats["stopped_early"] == {}
                assert frame.equals(step(run_dir, name)[0]), name
    stopped = {name: step(run_dir, name)[1]["stopped_early"] for name in ("initial", "extended")}
    assert any(stopped.values()), stopped
    for per_step in stopped.values():
        for reason, counts in per_step.items():
            assert reason.split(": ")[1] in ("repeated_ngram", "meta_comment"), reason
            assert counts["requests"] >= 1 and counts["completion_tokens"] >= 0
    print(
        f"completion tokens: early stop {tokens[run_dir]}, none {tokens[run_without_early_stop]}; {stopped}"
    )
    assert tokens[run_dir] < tokens[run_without_early_stop]
