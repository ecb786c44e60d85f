"""The step commands without a server (`build-sft`, `train`, `collect`, `length-control`): run
alone on a run folder, each writes what `selflengthen run` writes for that step, refuses a
finished step made with other settings, and turns bad flags into one line."""

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from selflengthen.folder_lock import LOCK_NAME
from tests.run_fixture import RECIPE, make_run

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
#: The fixture run's length-control settings, as flags.
LENGTH_FLAGS = ["--min-words", "100", "--max-words", "2000", "--round-to", "100", "--coarse-round-to", "100"]


def selflengthen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=900)


def files(folder: Path) -> dict[str, bytes]:
    """The folder's files, but the lock record that every command on it rewrites."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != LOCK_NAME
    }


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selflengthen: error: "), result.stderr
    return lines[0]


def test_each_step_alone_writes_what_the_loop_wrote(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=2)
    made_by_loop = tmp_path / "made-by-loop"
    for folder in ("iter_1/gen_sft", "iter_1/ext_sft", "long", "final"):
        (made_by_loop / folder).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(run_dir / folder, made_by_loop / folder)

    for command in (
        ["build-sft", "--run-dir", run_dir, "--iteration", "1"],
        ["collect", "--run-dir", run_dir],  # iterations 1..2: each one's extend finished
        ["length-control", "--run-dir", run_dir, *LENGTH_FLAGS],
    ):
        result = selflengthen(*command)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "gen_sft: 2 rows" in selflengthen("build-sft", "--run-dir", run_dir).stdout  # finished: reported
    for folder in ("iter_1/gen_sft", "iter_1/ext_sft", "long", "final"):
        expected = pl.read_parquet(made_by_loop / folder / "data" / "*.parquet")
        assert pl.read_parquet(run_dir / folder / "data" / "*.parquet").equals(expected), folder


def test_a_step_command_is_refused_while_another_command_holds_the_folder(
    tmp_path: Path,
) -> None:
    """Two commands on one run folder would write the same step folders: the second is refused
    with one line naming the holder, before any work, and runs once the holder has ended."""
    run_dir = make_run(tmp_path, iterations=1, trained=0, final=False)
    shutil.rmtree(run_dir / "iter_1" / "gen_sft")
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import time\nfrom pathlib import Path\nfrom selflengthen.folder_lock import hold_for_process\n"
            f"hold_for_process(Path({str(run_dir)!r}), 'generate')\n"
            "print('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        line = one_line_error(selflengthen("build-sft", "--run-dir", run_dir))
        assert line == (
            f"selflengthen: error: {run_dir}: in use by selflengthen generate (pid {holder.pid}); wait for "
            "it to finish, or stop it, before running selflengthen build-sft on this folder"
        )
        assert not (run_dir / "iter_1" / "gen_sft").exists()
    finally:
        holder.kill()
        holder.wait()
    assert selflengthen("build-sft", "--run-dir", run_dir).returncode == 0  # the holder is gone (kill -9)
    assert (run_dir / "iter_1" / "gen_sft" / "stats.json").is_file()


def test_a_finished_step_asked_for_with_other_settings_is_refused(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1)
    before = files(run_dir)
    for command, changed in (
        (["build-sft", "--line-drop-probability", "0.5"], "line_drop_probability 0.2 -> 0.5"),
        (["build-sft", "--seed", "3"], "seed 0 -> 3"),
        (["collect", "--iterations", "1", "--extra"], "extra False -> True"),
        (["length-control", *LENGTH_FLAGS[:-1], "200", "--min-words", "200"], "coarse_round_to 100 -> 200"),
    ):
        line = one_line_error(selflengthen(*command, "--run-dir", run_dir))
        assert "finished earlier with other settings" in line and changed in line, line
    assert files(run_dir) == before


def test_bad_flags_and_missing_steps_are_one_line(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1, trained=0, final=False)
    before = files(run_dir)
    for command, message in (
        (["build-sft", "--iteration", "2"], "iter_2/extended: step not finished (run extend first)"),
        (
            ["build-sft", "--line-drop-probability", "1.5"],
            "--line-drop-probability: Input should be less than 1",
        ),
        (["length-control"], "long: step not finished (run collect first)"),
        (["collect", "--iterations", "2"], "iter_2/extended: step not finished (run iteration 2 first)"),
        (
            ["length-control", "--min-words", "50"],
            "--min-words must be at least --round-to and --coarse-round-to",
        ),
        (["train", "--recipe", tmp_path / "absent.yaml"], "absent.yaml: cannot be read as YAML"),
        (
            ["train", "--recipe", RECIPE, "--accelerate-arg", "--num_processes=2"],
            "--accelerate-config and --accelerate-arg need --launcher: accelerate",
        ),
        (
            ["train", "--recipe", RECIPE, "--iteration", "2"],
            "iter_2/gen_sft/data: no SFT data for the generator",
        ),
        (["extend", "--filters", "[ending, nope]"], "--filters: entry 2 (nope): unknown filter"),
        (["generate", "--filters", "[ending"], "--filters: not valid YAML"),
    ):
        line = one_line_error(selflengthen(*command, "--run-dir", run_dir))
        assert message in line, (command, line)
    assert files(run_dir) == before


@pytest.mark.e2e
def test_train_alone_trains_and_merges_a_role_and_refuses_another_recipe_later(tmp_path: Path) -> None:
    """One real LoRA step (TRL, the embedded model on the CPU) for the Generator of iteration 1."""
    run_dir = make_run(tmp_path, iterations=1, trained=0, final=False)
    recipe = tmp_path / "one-step.yaml"
    recipe.write_text(
        yaml.safe_dump(yaml.safe_load(RECIPE.read_text()) | {"max_steps": 1, "max_length": 512})
    )
    result = selflengthen("train", "--run-dir", run_dir, "--recipe", recipe, "--role", "generator")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generator: loss" in result.stdout and "after 1 steps on 2 rows" in result.stdout
    role = run_dir / "models" / "iter_1" / "generator"
    assert (role / "merged" / "model.safetensors").is_file() and (
        role / "adapter" / "train_result.json"
    ).is_file()
    assert not (run_dir / "models" / "iter_1" / "extender").exists()

    recipe.write_text(yaml.safe_dump(yaml.safe_load(recipe.read_text()) | {"max_steps": 2}))
    line = one_line_error(
        selflengthen("train", "--run-dir", run_dir, "--recipe", recipe, "--role", "generator")
    )
    assert "finished earlier with other settings (max_steps 1 -> 2)" in line
