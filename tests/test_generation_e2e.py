"""self-instruct -> generate -> extend on the real vLLM engine with the embedded model.

Each step is run as a user runs it (the installed `selflengthen` command, which launches and
stops its own vLLM server). Counts and token limits are tiny so that this fits in CI on 2 CPUs.
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
SAMPLING = ["--seed", "7", "--concurrency", "16"]


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
    selflengthen("generate", "--run-dir", run, "--samples-per-instruction", "2", "--max-retries", "2",
                 "--max-tokens", "1000", *SAMPLING)  # fmt: skip
    selflengthen("extend", "--run-dir", run, "--rounds", "1", "--max-retries", "3", "--max-tokens", "1000",
                 "--min-ratio", "1.1", *SAMPLING)  # fmt: skip
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
