"""Faults injected into real runs of the loop (the embedded model on vLLM, tiny counts, one
iteration), compared with the same run never disturbed.

The disturbed run is killed with SIGKILL as a whole (its process group) during `generate`,
during `extend` and during `train`, and its vLLM server is killed from outside during a step;
after each kill of the run the same command is run again. The model is served in float32, in
which sampling with the same seeds gives the same text however requests are batched, so the
two runs can be compared row for row, text included.

The undisturbed run doubles as the security check: it runs with a Hub token and an API key in
its environment, its server is inspected while it runs, and every file it and a dry-run publish
write is searched for the secrets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import polars as pl
import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-cpu" / "sft.yaml"
SECRETS = {"HF_TOKEN": "hf_reliabilityTestToken0123456789", "OPENAI_API_KEY": "sk-reliability-0123456789"}
STEP_FOLDERS = (
    "iter_1/instructions",
    "iter_1/initial",
    "iter_1/extended",
    "iter_1/gen_sft",
    "iter_1/ext_sft",
)
FINAL_FOLDERS = ("long", "final")
CONFIG = {
    "name": "reliability",
    "model": "smollm2-135m",
    "iterations": 1,
    "seed": 0,
    "engine": {"max_model_len": 2048, "concurrency": 4, "vllm_args": ["--dtype", "float32"]},
    "sampling": {"max_tokens": 700},
    "self_instruct": {"model": "generator", "count": 4, "max_retries": 8, "seed_language": "en"},
    "generate": {"samples_per_instruction": 1, "max_retries": 2},
    "extend": {"rounds": 1, "max_retries": 3, "min_ratio": 0.5},
    "train": {"recipe": "sft.yaml"},
    "length_control": {"min_words": 100, "max_words": 1000, "round_to": 50, "coarse_round_to": 100},
}
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reliability")
    recipe = yaml.safe_load(RECIPE.read_text()) | {"max_steps": 1, "max_length": 1024}
    (folder / "sft.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    return folder / "run.yaml"


class Run:
    """One `selflengthen run` invocation in its own session, its output in a log file."""

    started: ClassVar[list[Run]] = []  # killed at the end of the module, whatever happened

    def __init__(self, config: Path, run_dir: Path, name: str) -> None:
        assert SCRIPT
        Run.started.append(self)
        self.log = run_dir.parent / f"{run_dir.name}-{name}.log"
        with self.log.open("w") as stream:
            self.process = subprocess.Popen(
                [SCRIPT, "run", "--config", str(config), "--set", f"run_dir={run_dir}"],
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **SECRETS, "HF_HUB_OFFLINE": "1"},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 900) -> None:
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
        assert self.process.wait(timeout=1800) == 0, self.text()[-3000:]
        return self.text()


@pytest.fixture(scope="module", autouse=True)
def no_run_outlives_the_module() -> Iterator[None]:
    yield
    for run in Run.started:
        if run.process.poll() is None:
            run.kill()


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


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
    for folder in STEP_FOLDERS + FINAL_FOLDERS:
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
def undisturbed(
    config: Path,
) -> tuple[Path, list[str], list[tuple[str, int]], subprocess.CompletedProcess[str]]:
    """The run never disturbed; with its server's command line and listening addresses, and
    what a second `selflengthen run` on the same folder said while it ran."""
    run_dir = config.parent / "undisturbed"
    run = Run(config, run_dir, "only")
    server = run.server()
    command = server.cmdline()
    run.wait_until_serving(server)
    listening = [
        (connection.laddr.ip, connection.laddr.port)
        for connection in server.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    second = subprocess.run(
        [SCRIPT, "run", "--config", str(config), "--set", f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    run.finish()
    return run_dir, command, listening, second


@pytest.fixture(scope="module")
def disturbed(config: Path) -> tuple[Path, list[str]]:
    """The same run, disturbed four times (see the module docstring); returns its logs."""
    run_dir = config.parent / "disturbed"
    logs = []

    # 1. kill -9 during generate, once an answer is checkpointed.
    run = Run(config, run_dir, "1-generate")
    logs.append(kill_when_checkpointed(run, run_dir, "iter_1/initial"))

    # 2. The server killed from outside once generate has resumed: the run starts a new one and
    #    goes on; then kill -9 during extend, once an extension is checkpointed.
    run = Run(config, run_dir, "2-server-extend")
    server = run.server()
    run.wait_until_serving(server)
    time.sleep(2)  # the documents left by kill 1 are being answered
    server.kill()
    run.wait_for_output(r"the vLLM server died during the step .*restarting it")
    logs.append(kill_when_checkpointed(run, run_dir, "iter_1/extended"))

    # 3. kill -9 during train, while the Extender trains (the Generator is done).
    run = Run(config, run_dir, "3-train")
    run.wait_for(lambda: (run_dir / "models/iter_1/.extender.partial").is_dir(), "the Extender's training")
    run.kill()
    assert_consistent(run_dir)
    logs.append(run.text())

    # 4. the same command again completes the run.
    logs.append(Run(config, run_dir, "4-complete").finish())
    return run_dir, logs


def test_each_kill_happened_where_intended(disturbed) -> None:
    _, logs = disturbed
    assert "== iteration 1/1: generate" in logs[0] and "== iteration 1/1: extend" not in logs[0]
    assert "restarting it, resuming the step (1/2)" in logs[1]
    assert "== iteration 1/1: extend" in logs[1] and "== iteration 1/1: build-sft" not in logs[1]
    assert "== iteration 1/1: generate" not in logs[2]  # finished steps are not redone
    assert "train generator" in logs[2] and "== collect" not in logs[2]
    assert "train generator" not in logs[3] and "train extender" in logs[3]
    assert "== collect" in logs[3] and "long: " in logs[3]


def test_the_disturbed_run_equals_the_undisturbed_one(undisturbed, disturbed) -> None:
    reference, *_ = undisturbed
    run_dir, _ = disturbed
    assert_consistent(run_dir)
    for folder in STEP_FOLDERS + FINAL_FOLDERS:
        expected, got = read(reference, folder).sort("id"), read(run_dir, folder).sort("id")
        assert got["id"].to_list() == expected["id"].to_list(), f"{folder}: ids differ"
        assert got.drop("model", strict=False).equals(expected.drop("model", strict=False)), (
            f"{folder}: rows differ"
        )
    for role in ("generator", "extender"):
        trained = json.loads((run_dir / f"models/iter_1/{role}/adapter/train_result.json").read_text())
        assert trained["global_step"] == 1 and trained["rows"] == read(reference, "iter_1/gen_sft").height
    assert not list((run_dir / "models" / "iter_1").glob(".*.partial"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["long_rows"] == read(reference, "long").height > 0


def test_a_second_run_on_the_same_folder_is_refused(undisturbed) -> None:
    *_, second = undisturbed  # the first one's result is checked against the disturbed run's
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"selflengthen: error: {undisturbed[0]}: another selflengthen run is using this run folder"
    ]


def test_the_server_listens_on_localhost_without_remote_code(undisturbed) -> None:
    _, command, listening, _ = undisturbed
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" not in command
    assert listening and all(ip == "127.0.0.1" for ip, _ in listening)


def test_no_secret_reaches_any_file_of_the_run_or_of_a_publish(undisturbed, tmp_path: Path) -> None:
    run_dir, *_ = undisturbed
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
