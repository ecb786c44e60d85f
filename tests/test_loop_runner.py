import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selflengthen.atomic import write_json_atomic
from selflengthen.config import load_config
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.shared_server import SharedServer
from selflengthen.errors import SelflengthenError
from selflengthen.folder_lock import folder_lock
from selflengthen.loop import Runner, empty_extended_error, save_config


def make_runner(tmp_path: Path, force_from: tuple[int | None, str] | None = None) -> Runner:
    config = load_config(write_config(tmp_path, {}))
    return Runner(config, tmp_path / "run", SharedServer(EngineOptions(), tmp_path / "logs", 0), force_from)


def write_config(folder: Path, data: dict) -> Path:
    (folder / "sft.yaml").write_text("learning_rate: 1.0e-4\n")
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "train": {"recipe": "sft.yaml"}} | data))
    return path


def finished_step(folder: Path, marker: str) -> Path:
    write_json_atomic({"made_by": marker}, folder / "stats.json")
    return folder


def test_finished_steps_are_skipped_until_something_before_them_runs(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    first = finished_step(runner.run_dir / "iter_1" / "instructions", "old")
    second = finished_step(runner.run_dir / "iter_1" / "initial", "old")
    third = runner.run_dir / "iter_1" / "extended"
    calls: list[str] = []
    assert not runner.step("self-instruct", 1, [first], lambda: calls.append("first"))
    assert not runner.step("generate", 1, [second], lambda: calls.append("second"))
    assert runner.step("extend", 1, [third], lambda: finished_step(third, "new") and calls.append("third"))
    fourth = finished_step(runner.run_dir / "iter_1" / "gen_sft", "old")  # made from the old extended
    assert runner.step("build-sft", 1, [fourth], lambda: finished_step(fourth, "new"))
    assert calls == ["third"]
    assert json.loads((fourth / "stats.json").read_text()) == {"made_by": "new"}
    moved = list((runner.run_dir / ".replaced").glob("*/iter_1/gen_sft/stats.json"))
    assert len(moved) == 1 and json.loads(moved[0].read_text()) == {"made_by": "old"}


def test_from_step_redoes_a_finished_step_and_keeps_the_old_output(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, force_from=(1, "generate"))
    first = finished_step(runner.run_dir / "iter_1" / "instructions", "old")
    second = finished_step(runner.run_dir / "iter_1" / "initial", "old")
    assert not runner.step("self-instruct", 1, [first], lambda: None)
    assert runner.step("generate", 1, [second], lambda: finished_step(second, "new"))
    assert json.loads((second / "stats.json").read_text()) == {"made_by": "new"}
    assert runner.replaced and Path(runner.replaced[0]).joinpath("stats.json").is_file()


def test_an_unfinished_step_resumes_in_place(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    partial = runner.run_dir / "iter_1" / "initial"
    (partial / "_work" / "checkpoints").mkdir(parents=True)
    assert runner.step("generate", 1, [partial], lambda: None)
    assert (partial / "_work" / "checkpoints").is_dir() and not runner.replaced


def test_one_run_per_folder(tmp_path: Path) -> None:
    attempt = [
        sys.executable,
        "-c",
        "from pathlib import Path\nfrom selflengthen.folder_lock import folder_lock\n"
        f"with folder_lock(Path({str(tmp_path)!r}), 'run'): pass",
    ]

    def other_process() -> subprocess.CompletedProcess[str]:
        return subprocess.run(attempt, capture_output=True, text=True, cwd=tmp_path)

    with folder_lock(tmp_path, "run"):
        refused = other_process()
        assert refused.returncode != 0
        assert f"{tmp_path}: in use by selflengthen run (pid {os.getpid()}); wait" in refused.stderr
        pid = os.fork()  # a forked child must not keep the lock alive
        if pid == 0:
            time.sleep(30)
            os._exit(0)
    try:
        assert other_process().returncode == 0  # released, although the forked child still runs
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_run_folder_refuses_another_config(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"extend": {"rounds": 2}}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(config, run_dir)
    before = (run_dir / "config.yaml").read_bytes()
    save_config(config.model_copy(update={"iterations": 7}), run_dir)  # allowed: more iterations
    assert "iterations: 7" in (run_dir / "config.yaml").read_text()
    other = load_config(write_config(tmp_path, {"extend": {"rounds": 3}}))
    with pytest.raises(SelflengthenError, match=r"made with a different config \(extend.rounds differ"):
        save_config(other, run_dir)
    moved = tmp_path / "moved-checkout"
    moved.mkdir()
    (moved / "sft.yaml").write_bytes((tmp_path / "sft.yaml").read_bytes())
    train = config.train.model_copy(update={"recipe": moved / "sft.yaml"})
    save_config(config.model_copy(update={"train": train}), run_dir)  # allowed: the same recipe, moved
    (tmp_path / "sft.yaml").write_text("learning_rate: 2.0e-4\n")
    with pytest.raises(SelflengthenError, match=r"the training recipe"):
        save_config(config, run_dir)
    assert (run_dir / "config.yaml").read_bytes() != before  # the allowed save above
    assert "rounds: 2" in (run_dir / "config.yaml").read_text()


def test_an_empty_extended_set_says_which_filter_dropped_what(tmp_path: Path) -> None:
    stats = {
        "rows_in": 4,
        "failed_rows": {"no_round_succeeded": 3, "too_little_growth": 1},
        "rejected_attempts": {"not_longer": 3, "🔚 Ending: bad_ending": 2, "finish_reason: length": 1},
    }
    message = str(empty_extended_error(1, stats, tmp_path / "iter_1" / "extended"))
    assert message.startswith("iteration 1: extend kept no rows, nothing to train on (4 initial rows")
    assert "no_round_succeeded 3, too_little_growth 1" in message and "🔚 Ending: bad_ending 2" in message
    assert str(tmp_path / "iter_1" / "extended" / "stats.json") in message and "\n" not in message
