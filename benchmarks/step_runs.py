"""What the step benchmarks share: a vLLM server of ours for the length of a benchmark, the
step commands run as a user runs them (timed), and their settings from a run config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import polars as pl

from selflengthen.config import RunConfig
from selflengthen.engine.launch import server_environment, vllm_command
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.shared_server import free_port


def selflengthen(*args: str | Path | int) -> float:
    """Run one step command; its wall time in seconds."""
    command = [str(Path(sys.executable).parent / "selflengthen"), *map(str, args)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def step_arguments(config: RunConfig, step: str, max_tokens: int) -> list[str]:
    """The run config's settings of `generate` or `extend` as the step command's flags."""
    if step == "generate":
        section = config.generate
        return ["--samples-per-instruction", str(section.samples_per_instruction),
                "--max-retries", str(section.max_retries), "--max-tokens", str(max_tokens)]  # fmt: skip
    section = config.extend
    return ["--rounds", str(section.rounds), "--max-retries", str(section.max_retries),
            "--min-ratio", str(section.min_ratio), "--max-tokens", str(max_tokens)]  # fmt: skip


@contextmanager
def serving(options: EngineOptions, model_source: str, seed: int) -> Iterator[str]:
    """A vLLM server of ours (the project's command and environment) for the block; its URL.
    Its start is not part of any timing."""
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    command = vllm_command(options, model_source, port, seed)
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_environment()
    )
    try:
        deadline = time.monotonic() + 900
        while True:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the vLLM server did not start")
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


#: The generation steps a benchmark runs after self-instruct, and their output folders.
STEPS = {"generate": "initial", "extend": "extended"}
_TEXT = {"initial": "response", "extended": "extended_response"}


@dataclass
class StepsRun:
    """What one run of `generate` + `extend` cost and made (from its stats.json and data)."""

    seconds: float = 0.0
    completion_tokens: int = 0
    speculative_tokens: int = 0
    stopped_early: int = 0
    in_flight: list[float] = field(default_factory=list)  # mean requests in flight, per step
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)

    @property
    def kept_rows(self) -> int:
        return self.frames["extended"].height

    @property
    def kept_words(self) -> int:
        return int(self.frames["extended"]["extended_words"].sum())

    def same_rows(self, other: StepsRun) -> bool:
        """Whether both made the same rows, text for text (initial and extended)."""
        return all(
            self.frames[folder].select("id", text).equals(other.frames[folder].select("id", text))
            for folder, text in _TEXT.items()
        )


def endpoint_flags(config: RunConfig, url: str, model_source: str, max_len: int) -> list[str]:
    """The step commands' flags that point them at the benchmark's server, as the run config."""
    return ["--endpoint", f"{url}/v1", "--model", model_source, "--max-model-len", str(max_len),
            "--concurrency", str(config.engine.concurrency), "--seed", str(config.seed)]  # fmt: skip


def write_instructions(
    config: RunConfig, run: Path, endpoint: list[str], max_tokens: int, count: int
) -> Path:
    """Iteration 1's instructions (`self-instruct`, the run config's settings); their folder."""
    section = config.self_instruct
    selflengthen("self-instruct", "--run-dir", run, "--count", count, "--max-retries", section.max_retries,
                 "--seed-language", section.seed_language, "--max-tokens", max_tokens, *endpoint)  # fmt: skip
    return run / "iter_1" / "instructions"


def generate_and_extend(
    config: RunConfig, instructions: Path, run: Path, endpoint: list[str], max_tokens: int, *flags: str
) -> StepsRun:
    """`generate` then `extend` on `instructions` into `run`, with the run config's settings and
    `flags`, each step command timed."""
    shutil.copytree(instructions, run / "iter_1" / "instructions")
    result = StepsRun()
    for step, folder in STEPS.items():
        arguments = step_arguments(config, step, max_tokens)
        result.seconds += selflengthen(step, "--run-dir", run, *arguments, *endpoint, *flags)
        stats = json.loads((run / "iter_1" / folder / "stats.json").read_text())
        result.completion_tokens += stats["completion_tokens"]
        result.speculative_tokens += stats["speculative"]["completion_tokens"]
        result.stopped_early += sum(counts["requests"] for counts in stats["stopped_early"].values())
        result.in_flight.append(stats["requests_in_flight_mean"])
        result.frames[folder] = pl.read_parquet(run / "iter_1" / folder / "data")
    return result
