"""The real `selflengthen run` shared by the e2e modules: the reference run.

The reference run is the README's main job (`recipes/smollm2-cpu/run.yaml`: 2 iterations on the
embedded model, vLLM on the CPU, LoRA SFT with TRL) with its model served in float32, in which
sampling with the same seeds gives the same text however requests are batched. It is also the
reliability check: it is disturbed four times in iteration 1 (`make_reference_run`) and then
finishes both iterations, so every module that reads it reads a run that survived kills, and the
step commands run alone (test_generation_e2e, undisturbed) can be compared with it row for row.
It is made once per test session (`reference_run` in conftest.py) and only read by the tests.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import polars as pl
import psutil

from selflengthen.config import load_config
from selflengthen.relevance import score_pairs

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "smollm2-cpu" / "run.yaml"
#: Served in float32: batch-invariant decoding (see the module docstring).
FLOAT32 = ["--set", "engine.vllm_args=[--dtype, float32]"]
#: In the reference run's environment: no file it writes may contain them.
SECRETS = {"HF_TOKEN": "hf_reliabilityTestToken0123456789", "OPENAI_API_KEY": "sk-reliability-0123456789"}
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
RELEVANCE_PAIRS = Path(__file__).resolve().parent / "data" / "relevance_pairs.jsonl"


def run_command(run_dir: Path, *extra: str) -> list[str]:
    """`selflengthen run` of the reference recipe into `run_dir`."""
    assert SCRIPT
    return [SCRIPT, "run", "--config", str(RECIPE), "--set", f"run_dir={run_dir}", *FLOAT32, *extra]


CONFIG = load_config(RECIPE)
#: The reference run's engine and sampling settings as step-command flags, early stop and
#: speculation off (the reference run has both on).
SAMPLING = [
    "--seed", str(CONFIG.seed), "--concurrency", str(CONFIG.engine.concurrency),
    "--max-model-len", str(CONFIG.engine.max_model_len), "--max-tokens", str(CONFIG.sampling.max_tokens),
    "--vllm-arg=--dtype=float32", "--no-early-stop", "--no-speculate",
]  # fmt: skip
SELF_INSTRUCT = [
    "--count", str(CONFIG.self_instruct.count), "--max-retries", str(CONFIG.self_instruct.max_retries),
    "--seed-language", CONFIG.self_instruct.seed_language,
]  # fmt: skip
GENERATE = [
    "--samples-per-instruction", str(CONFIG.generate.samples_per_instruction),
    "--max-retries", str(CONFIG.generate.max_retries),
]  # fmt: skip
EXTEND = [
    "--rounds", str(CONFIG.extend.rounds), "--max-retries", str(CONFIG.extend.max_retries),
    "--min-ratio", str(CONFIG.extend.min_ratio),
]  # fmt: skip
#: The steps run's extend scores every grown row's relevance (`--on-topic`) with a bound no
#: ratio reaches, so that it keeps the loop's rows.
ON_TOPIC_NEVER_DROPS = ["--on-topic", "10"]
BUILD_SFT = [
    "--line-drop-probability",
    str(CONFIG.sft_data.line_drop_probability),
    "--seed",
    str(CONFIG.seed),
]
#: The generation steps' folders and commands.
STEPS = {"instructions": "self-instruct", "initial": "generate", "extended": "extend"}


def step_command(*args: str | Path) -> str:
    """Run a step command; its output (where the server's start is reported)."""
    assert SCRIPT
    result = subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def make_steps_run(run: Path) -> Path:
    """Iteration 1 of the reference run's data, made by the step commands one by one with early
    stop and speculation off, undisturbed; extend also scores relevance (`ON_TOPIC_NEVER_DROPS`)."""
    step_command("self-instruct", "--run-dir", run, *SELF_INSTRUCT, *SAMPLING)
    step_command("generate", "--run-dir", run, *GENERATE, *SAMPLING)
    step_command("extend", "--run-dir", run, *EXTEND, *ON_TOPIC_NEVER_DROPS, *SAMPLING)
    step_command("build-sft", "--run-dir", run, *BUILD_SFT)
    return run


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


#: Iteration 1's data steps, in order: what a disturbance may leave half made.
STEP_FOLDERS = (
    "iter_1/instructions",
    "iter_1/initial",
    "iter_1/extended",
    "iter_1/gen_sft",
    "iter_1/ext_sft",
)


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


@dataclass(frozen=True)
class ReferenceRun:
    """The finished reference run, with what was seen while it ran: its server's command line
    and listening addresses, what a second `selflengthen run` on the same folder said, and the
    output of each of its four invocations (`output`: the last, which finished it)."""

    run_dir: Path
    output: str
    server_command: list[str]
    listening: list[tuple[str, int]]
    second: subprocess.CompletedProcess[str]
    logs: tuple[str, ...]
    relevance: dict[str, list[list[float]]]
    third_party: Path


def make_reference_run(run_dir: Path) -> ReferenceRun:
    """The reference run, disturbed in iteration 1 and then finished:
    1. its server is inspected and a second run is tried on the folder; then kill -9 of the
       whole run (its process group) during `generate`, once an answer is checkpointed;
    2. the same command again; its server is killed from outside once it answers (the run
       starts a new one and goes on); then kill -9 during `extend`;
    3. the same command again, killed while the Extender trains (the Generator is done);
    4. the same command again finishes both iterations."""
    run = Run(run_dir, "1-generate")
    server = run.server()
    command = server.cmdline()
    run.wait_until_serving(server)
    listening = [
        (connection.laddr.ip, connection.laddr.port)
        for connection in server.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    second = subprocess.run(run_command(run_dir), capture_output=True, text=True, timeout=300)
    relevance = score_relevance_pairs(command)
    third_party = generate_with_a_third_party_filter(command, run_dir.parent / "third-party")
    logs = [kill_when_checkpointed(run, run_dir, "iter_1/initial")]

    run = Run(run_dir, "2-server-extend")
    server = run.server()
    run.wait_until_serving(server)
    time.sleep(2)  # the documents left by kill 1 are being answered
    server.kill()
    run.wait_for_output(r"the vLLM server died during the step .*restarting it")
    logs.append(kill_when_checkpointed(run, run_dir, "iter_1/extended"))

    run = Run(run_dir, "3-train")
    run.wait_for(lambda: (run_dir / "models/iter_1/.extender.partial").is_dir(), "the Extender's training")
    run.kill()
    assert_consistent(run_dir)
    logs.append(run.text())

    output = Run(run_dir, "4-complete").finish()
    logs.append(output)
    return ReferenceRun(run_dir, output, command, listening, second, tuple(logs), relevance, third_party)


def score_relevance_pairs(server_command: list[str]) -> dict[str, list[list[float]]]:
    """The relevance ratios (`selflengthen.relevance`) of tests/data/relevance_pairs.jsonl on the
    run's server while it generates: each text with its own instruction (`own`), with the next
    text's instruction (`mismatched`), and with its second half replaced by the next text's
    second half (`drifted`, with its own instruction)."""
    url = f"http://127.0.0.1:{server_command[server_command.index('--port') + 1]}"
    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    pairs = [json.loads(line) for line in RELEVANCE_PAIRS.read_text().splitlines()]
    following = pairs[1:] + pairs[:1]

    def halves(text: str) -> tuple[str, str]:
        middle = text.index(" ", len(text) // 2)
        return text[:middle], text[middle:]

    cases = {
        "own": [(pair["instruction"], pair["text"]) for pair in pairs],
        "mismatched": [
            (other["instruction"], pair["text"]) for pair, other in zip(pairs, following, strict=True)
        ],
        "drifted": [
            (pair["instruction"], halves(pair["text"])[0] + halves(other["text"])[1])
            for pair, other in zip(pairs, following, strict=True)
        ],
    }
    ratios = iter(score_pairs(url, model, [pair for case in cases.values() for pair in case]))
    return {name: [next(ratios) for _ in case] for name, case in cases.items()}


#: datatrove's own filter, first in a `generate --filters` list; with this threshold it drops
#: every finished answer (`line_punct_ratio`: the share of lines ending in punctuation is <= 1.01).
THIRD_PARTY_FILTER = {"datatrove.pipeline.filters:FineWebQualityFilter": {"line_punct_thr": 1.01}}


def generate_with_a_third_party_filter(server_command: list[str], run_dir: Path) -> Path:
    """A small `generate` on the run's server (`--endpoint`) whose `--filters` list puts a
    datatrove filter before ours: 3 short answers, up to 2 attempts each."""
    url = f"http://127.0.0.1:{server_command[server_command.index('--port') + 1]}/v1"
    model = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]
    run_dir.mkdir(parents=True)
    instructions = run_dir / "instructions.jsonl"
    topics = ("green tea", "a harbour at dawn", "the first bicycle")
    instructions.write_text(
        "".join(json.dumps({"instruction": f"Write two sentences about {topic}."}) + "\n" for topic in topics)
    )
    filters = json.dumps([THIRD_PARTY_FILTER, "ending", "repetition"])
    step_command(
        "generate", "--run-dir", run_dir, "--instructions", instructions, "--endpoint", url, "--model", model,
        "--samples-per-instruction", "1", "--max-retries", "2", "--max-tokens", "300", "--filters", filters,
    )  # fmt: skip
    return run_dir


def kill_leftover_runs() -> None:
    for run in Run.started:
        if run.process.poll() is None:
            run.kill()
