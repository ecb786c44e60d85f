"""A step command stopped by SIGTERM, SIGHUP or SIGINT on the real engine: one line, exit status
128 + the signal, no process left behind, and the same command resumes.

The command runs in a session of its own, so that everything it started can be found afterwards
by the session id, including processes whose parent has already gone (orphans re-parented to
PID 1 would be missed by walking the tree from the command).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
MESSAGE = "selflengthen: interrupted; rerun the same command to resume"


def generate(run: Path, instructions: Path) -> list[str]:
    assert SCRIPT
    return [SCRIPT, "generate", "--run-dir", str(run), "--instructions", str(instructions),
            "--samples-per-instruction", "2", "--max-retries", "1", "--max-tokens", "200",
            "--seed", "3", "--concurrency", "4"]  # fmt: skip


def session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def interrupt(command: list[str], signum: int, when: str) -> tuple[int, str, list[psutil.Process]]:
    """Start `command`, send `signum` once `when` holds ("server" = a vLLM process was started,
    "answering" = the progress bar is up, so the server answered), and wait for it to end;
    returns its exit status, its stderr, and what of its session is still alive 30 s later."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if when == "answering" and any("generate (iter 1)" in line for line in stderr):
            time.sleep(3)
            break
        if when == "server" and any(
            "vllm" in " ".join(child.cmdline()) for child in session_processes(process.pid)
        ):
            time.sleep(2)
            break
        time.sleep(0.5)
    assert process.poll() is None, "".join(stderr)[-2000:]
    process.send_signal(signum)
    try:
        status = process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        for straggler in session_processes(process.pid):  # a hung command leaves nothing behind
            straggler.kill()
        raise AssertionError(f"still running 300 s after {signal.Signals(signum).name}") from None
    reader.join(timeout=10)
    leftover = session_processes(process.pid)
    for _ in range(30):
        if not leftover:
            break
        time.sleep(1)
        leftover = session_processes(process.pid)
    for straggler in leftover:  # do not leave them to the next test
        straggler.kill()
    return status, "".join(stderr), leftover


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    path = tmp_path / "instructions.jsonl"
    rows = [{"instruction": f"Write a short note about {topic}."} for topic in ("tea", "rain", "maps")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_sigterm_after_the_server_answered_leaves_nothing_and_resumes(
    tmp_path: Path, instructions: Path
) -> None:
    run = tmp_path / "run"
    status, stderr, leftover = interrupt(generate(run, instructions), signal.SIGTERM, "answering")
    assert status == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == MESSAGE
    assert not leftover, [process.cmdline() for process in leftover]
    assert not (run / "iter_1" / "initial" / "stats.json").exists()
    assert SCRIPT
    result = subprocess.run(generate(run, instructions), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((run / "iter_1" / "initial" / "stats.json").read_text())
    assert stats["rows_in"] == 3


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_sigint_while_the_server_starts_leave_nothing(
    tmp_path: Path, instructions: Path, signum: int
) -> None:
    status, stderr, leftover = interrupt(generate(tmp_path / "run", instructions), signum, "server")
    assert status == 128 + signum, stderr[-2000:]
    assert MESSAGE in stderr.splitlines()  # (a log line of the server's start may follow it)
    assert not leftover, [process.cmdline() for process in leftover]
