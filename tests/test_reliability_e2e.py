"""Faults injected into a real run of the loop, compared with the same steps never disturbed.

The disturbed run is the session's reference run (tests/e2e_runs.py: the README's main job,
served in float32): it is killed with SIGKILL as a whole (its process group) during `generate`,
during `extend` and during `train`, and its vLLM server is killed from outside during a step;
after each kill of the run the same command is run again, and the last finishes both
iterations. The undisturbed run is the session's steps run: iteration 1 made by the step
commands one by one. In float32, sampling with the same seeds gives the same text however
requests are batched, so the two can be compared row for row, text included.

The reference run doubles as the security check: it runs with a Hub token and an API key in its
environment, its server is inspected while it runs, and every file it and a dry-run publish
write is searched for the secrets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e_runs import SCRIPT, SECRETS, STEP_FOLDERS, ReferenceRun, assert_consistent, read

pytestmark = pytest.mark.e2e


def test_each_kill_happened_where_intended(reference_run: ReferenceRun) -> None:
    logs = reference_run.logs
    assert "== iteration 1/2: generate" in logs[0] and "== iteration 1/2: extend" not in logs[0]
    assert "restarting it, resuming the step (1/2)" in logs[1]
    assert "== iteration 1/2: extend" in logs[1] and "== iteration 1/2: build-sft" not in logs[1]
    assert "== iteration 1/2: generate" not in logs[2]  # finished steps are not redone
    assert "train generator" in logs[2]
    assert "train generator (iter 1)" not in logs[3] and "train extender (iter 1)" in logs[3]
    assert "== iteration 2/2" in logs[3] and "== length-control" in logs[3]


def test_the_disturbed_run_equals_the_undisturbed_steps(reference_run: ReferenceRun, steps_run: Path) -> None:
    run_dir = reference_run.run_dir
    assert_consistent(run_dir)
    for folder in STEP_FOLDERS:
        expected, got = read(steps_run, folder).sort("id"), read(run_dir, folder).sort("id")
        assert got["id"].to_list() == expected["id"].to_list(), f"{folder}: ids differ"
        assert got.drop("model", strict=False).equals(expected.drop("model", strict=False)), (
            f"{folder}: rows differ"
        )
    for role, data in (("generator", "iter_1/gen_sft"), ("extender", "iter_1/ext_sft")):
        trained = json.loads((run_dir / f"models/iter_1/{role}/adapter/train_result.json").read_text())
        assert trained["rows"] == read(run_dir, data).height
    assert not list((run_dir / "models").glob("*/.*.partial"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"][0]["extended"] == read(run_dir, "iter_1/extended").height > 0


def test_a_second_run_on_the_same_folder_is_refused(reference_run: ReferenceRun) -> None:
    second = reference_run.second  # tried while the first invocation ran
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"selflengthen: error: {re.escape(str(reference_run.run_dir))}: in use by selflengthen run "
        r"\(pid \d+\); wait for it to finish, or stop it, before running selflengthen run on this folder",
        line,
    )


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
