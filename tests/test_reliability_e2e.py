"""Faults injected into a real run of the loop, compared with the same run never disturbed.

The undisturbed run is the session's reference run (tests/e2e_runs.py: the README's main job,
served in float32). The disturbed run is the same command limited to iteration 1
(`--iterations 1`): it is killed with SIGKILL as a whole (its process group) during `generate`,
during `extend` and during `train`, and its vLLM server is killed from outside during a step;
after each kill of the run the same command is run again. In float32, sampling with the same
seeds gives the same text however requests are batched, so iteration 1 of the two runs can be
compared row for row, text included.

The reference run doubles as the security check: it runs with a Hub token and an API key in its
environment, its server is inspected while it runs, and every file it and a dry-run publish
write is searched for the secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.e2e_runs import SCRIPT, SECRETS, ReferenceRun, Run, kill_leftover_runs

pytestmark = pytest.mark.e2e

STEP_FOLDERS = (
    "iter_1/instructions",
    "iter_1/initial",
    "iter_1/extended",
    "iter_1/gen_sft",
    "iter_1/ext_sft",
)
ONE_ITERATION = ("--iterations", "1")


@pytest.fixture(scope="module", autouse=True)
def no_run_outlives_the_module() -> Iterator[None]:
    yield
    kill_leftover_runs()


def checkpointed(run_dir: Path, folder: str) -> int:
    """Documents the running step has saved to datatrove's checkpoints so far."""
    chunks = (run_dir / folder / "_work" / "checkpoints").glob("*/chunk_*.jsonl")
    return sum(len(chunk.read_bytes().splitlines()) for chunk in chunks)


def finished(run_dir: Path, folder: str) -> bool:
    return (run_dir / folder / "stats.json").is_file()


def read(run_dir: Path, folder: str) -> pl.DataFrame:
    return pl.read_parquet(run_dir / folder / "data" / "*.parquet")


def assert_consistent(run_dir: Path) -> None:
    """Every finished step's data agrees with its stats.json; an unfinished one has no stats."""
    for folder in STEP_FOLDERS:
        if finished(run_dir, folder):
            stats = json.loads((run_dir / folder / "stats.json").read_text())
            frame = read(run_dir, folder)
            assert frame.height == stats["rows_out"], folder
            assert frame["id"].n_unique() == frame.height, f"{folder}: duplicate ids"


def kill_when_checkpointed(run: Run, run_dir: Path, folder: str) -> str:
    """kill -9 the run once the step writing `folder` has checkpointed a document (and is not
    finished); check what it left; return its output."""
    run.wait_for(lambda: checkpointed(run_dir, folder) > 0, f"a checkpointed document in {folder}")
    run.kill()
    assert not finished(run_dir, folder)
    assert_consistent(run_dir)
    return run.text()


@pytest.fixture(scope="module")
def disturbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Iteration 1 of the reference run, disturbed four times (see the module docstring);
    returns its logs."""
    run_dir = tmp_path_factory.mktemp("reliability") / "disturbed"
    logs = []

    # 1. kill -9 during generate, once an answer is checkpointed.
    run = Run(run_dir, "1-generate", *ONE_ITERATION)
    logs.append(kill_when_checkpointed(run, run_dir, "iter_1/initial"))

    # 2. The server killed from outside once generate has resumed: the run starts a new one and
    #    goes on; then kill -9 during extend, once an extension is checkpointed.
    run = Run(run_dir, "2-server-extend", *ONE_ITERATION)
    server = run.server()
    run.wait_until_serving(server)
    time.sleep(2)  # the documents left by kill 1 are being answered
    server.kill()
    run.wait_for_output(r"the vLLM server died during the step .*restarting it")
    logs.append(kill_when_checkpointed(run, run_dir, "iter_1/extended"))

    # 3. kill -9 during train, while the Extender trains (the Generator is done).
    run = Run(run_dir, "3-train", *ONE_ITERATION)
    run.wait_for(lambda: (run_dir / "models/iter_1/.extender.partial").is_dir(), "the Extender's training")
    run.kill()
    assert_consistent(run_dir)
    logs.append(run.text())

    # 4. the same command again completes iteration 1.
    logs.append(Run(run_dir, "4-complete", *ONE_ITERATION).finish())
    return run_dir, logs


def test_each_kill_happened_where_intended(disturbed) -> None:
    _, logs = disturbed
    assert "== iteration 1/2: generate" in logs[0] and "== iteration 1/2: extend" not in logs[0]
    assert "restarting it, resuming the step (1/2)" in logs[1]
    assert "== iteration 1/2: extend" in logs[1] and "== iteration 1/2: build-sft" not in logs[1]
    assert "== iteration 1/2: generate" not in logs[2]  # finished steps are not redone
    assert "train generator" in logs[2]
    assert "train generator" not in logs[3] and "train extender" in logs[3]
    assert "== iteration 2/2" not in logs[3]  # --iterations 1


def test_the_disturbed_run_equals_the_undisturbed_one(reference_run: ReferenceRun, disturbed) -> None:
    reference = reference_run.run_dir
    run_dir, _ = disturbed
    assert_consistent(run_dir)
    for folder in STEP_FOLDERS:
        expected, got = read(reference, folder).sort("id"), read(run_dir, folder).sort("id")
        assert got["id"].to_list() == expected["id"].to_list(), f"{folder}: ids differ"
        assert got.drop("model", strict=False).equals(expected.drop("model", strict=False)), (
            f"{folder}: rows differ"
        )
    for role in ("generator", "extender"):
        trained = json.loads((run_dir / f"models/iter_1/{role}/adapter/train_result.json").read_text())
        expected = json.loads((reference / f"models/iter_1/{role}/adapter/train_result.json").read_text())
        assert trained["global_step"] == expected["global_step"] and trained["rows"] == expected["rows"]
    assert not list((run_dir / "models" / "iter_1").glob(".*.partial"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"][0]["extended"] == read(reference, "iter_1/extended").height > 0


def test_a_second_run_on_the_same_folder_is_refused(reference_run: ReferenceRun) -> None:
    second = reference_run.second  # the first one's result is checked against the disturbed run's
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"selflengthen: error: {reference_run.run_dir}: another selflengthen run is using this run folder"
    ]


def test_the_server_listens_on_localhost_without_remote_code(reference_run: ReferenceRun) -> None:
    command, listening = reference_run.server_command, reference_run.listening
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" not in command
    assert listening and all(ip == "127.0.0.1" for ip, _ in listening)


def test_no_secret_reaches_any_file_of_the_run_or_of_a_publish(
    reference_run: ReferenceRun, tmp_path: Path
) -> None:
    run_dir = reference_run.run_dir
    out = tmp_path / "publish"
    environment = {**os.environ, **SECRETS, "HF_HUB_OFFLINE": "1"}
    command = [
        SCRIPT,
        "publish",
        str(run_dir),
        "--repo",
        "me/reliability",
        "--models",
        "--dry-run",
        "--out",
        str(out),
    ]
    published = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert published.returncode == 0, published.stderr[-2000:]
    files = [path for folder in (run_dir, out) for path in folder.rglob("*") if path.is_file()]
    assert len(files) > 50
    leaks = [
        str(path) for path in files for secret in SECRETS.values() if secret.encode() in path.read_bytes()
    ]
    assert not leaks
    assert not any(secret in published.stdout + published.stderr for secret in SECRETS.values())

    # A published version is immutable: publishing iteration 1 again is refused, nothing changes.
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    again = subprocess.run([*command, "--iteration", "1"], capture_output=True, text=True, env=environment)
    assert again.returncode == 2 and "iter-1" in again.stderr
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
