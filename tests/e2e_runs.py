"""Real `selflengthen run` invocations shared by the e2e modules.

The reference run is the README's main job (`recipes/smollm2-cpu/run.yaml`: 2 iterations on the
embedded model, vLLM on the CPU, LoRA SFT with TRL) with its model served in float32, in which
sampling with the same seeds gives the same text however requests are batched: so the step
commands run alone (test_generation_e2e) and a run killed and resumed (test_reliability_e2e) can
be compared with it row for row. It is made once per test session (`reference_run` in
conftest.py) and only read by the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import psutil

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-cpu" / "run.yaml"
#: Served in float32: batch-invariant decoding (see the module docstring).
FLOAT32 = ["--set", "engine.vllm_args=[--dtype, float32]"]
#: In the reference run's environment: no file it writes may contain them.
SECRETS = {"HF_TOKEN": "hf_reliabilityTestToken0123456789", "OPENAI_API_KEY": "sk-reliability-0123456789"}
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def run_command(run_dir: Path, *extra: str) -> list[str]:
    """`selflengthen run` of the reference recipe into `run_dir`."""
    assert SCRIPT
    return [SCRIPT, "run", "--config", str(RECIPE), "--set", f"run_dir={run_dir}", *FLOAT32, *extra]


class Run:
    """One `selflengthen run` invocation in its own session, its output in a log file."""

    started: ClassVar[list[Run]] = []  # killed at the end of the session, whatever happened

    def __init__(self, run_dir: Path, name: str, *extra: str) -> None:
        Run.started.append(self)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = run_dir.parent / f"{run_dir.name}-{name}.log"
        with self.log.open("w") as stream:
            self.process = subprocess.Popen(
                run_command(run_dir, *extra),
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **SECRETS, "HF_HUB_OFFLINE": "1"},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 1200) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.2)

    def wait_for_output(self, pattern: str) -> None:
        self.wait_for(lambda: re.search(pattern, self.text()) is not None, repr(pattern))

    def wait_until_serving(self, server: psutil.Process) -> None:
        command = server.cmdline()
        url = f"http://127.0.0.1:{command[command.index('--port') + 1]}/v1/models"

        def serving() -> bool:
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        self.wait_for(serving, "the server to answer")

    def server(self) -> psutil.Process:
        """The vLLM server this run started."""
        found: list[psutil.Process] = []

        def started() -> bool:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                try:
                    if SERVER_MODULE in child.cmdline():
                        found.append(child)
                        return True
                except psutil.NoSuchProcess:
                    continue
            return False

        self.wait_for(started, "a vLLM server")
        return found[0]

    def kill(self) -> None:
        """SIGKILL the whole run (its process group), then wait until nothing it started is left."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 60
        while left := [process for process in psutil.process_iter() if _session(process) == self.process.pid]:
            assert time.monotonic() < deadline, f"left behind: {[process.cmdline() for process in left]}"
            time.sleep(0.5)

    def finish(self) -> str:
        assert self.process.wait(timeout=2400) == 0, self.text()[-3000:]
        return self.text()


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


@dataclass(frozen=True)
class ReferenceRun:
    """The finished reference run, with what was seen while it ran: its server's command line
    and listening addresses, and what a second `selflengthen run` on the same folder said."""

    run_dir: Path
    output: str
    server_command: list[str]
    listening: list[tuple[str, int]]
    second: subprocess.CompletedProcess[str]


def make_reference_run(run_dir: Path) -> ReferenceRun:
    run = Run(run_dir, "reference")
    server = run.server()
    command = server.cmdline()
    run.wait_until_serving(server)
    listening = [
        (connection.laddr.ip, connection.laddr.port)
        for connection in server.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    second = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=300)
    return ReferenceRun(run_dir, run.finish(), command, listening, second)


def kill_leftover_runs() -> None:
    for run in Run.started:
        if run.process.poll() is None:
            run.kill()
