"""Early stop on vs off: the CPU recipe's iteration-1 `generate` + `extend`, same instructions,
seeds and server, in one run.

The instructions are written once (`self-instruct`, the recipe's settings); then `generate` and
`extend` run twice on them, with `--no-early-stop` first and with early stop second, as the
step commands a user runs, against one vLLM server serving the embedded model in float32 (in
which the same seeds give the same text however requests are batched, so the kept rows can be
compared text for text). Printed: completion tokens, wall time, kept rows, and completion
tokens per kept word, each with its ratio to the run without early stop. The server's start is
not timed.

    python benchmarks/early_stop.py [--recipe recipes/smollm2-cpu/run.yaml] [--max-tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl

from selflengthen.builders.step import ResponseWatch
from selflengthen.config import RunConfig, load_config
from selflengthen.engine.launch import server_environment, vllm_command
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.shared_server import free_port

_STEPS = {"generate": "initial", "extend": "extended"}
_TEXT = {"initial": "response", "extended": "extended_response"}


def selflengthen(*args: str | Path) -> float:
    """Run one step command; its wall time in seconds."""
    command = [str(Path(sys.executable).parent / "selflengthen"), *map(str, args)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def step_arguments(config: RunConfig, step: str, max_tokens: int) -> list[str]:
    if step == "generate":
        section = config.generate
        return ["--samples-per-instruction", str(section.samples_per_instruction),
                "--max-retries", str(section.max_retries), "--max-tokens", str(max_tokens)]  # fmt: skip
    section = config.extend
    return ["--rounds", str(section.rounds), "--max-retries", str(section.max_retries),
            "--min-ratio", str(section.min_ratio), "--max-tokens", str(max_tokens)]  # fmt: skip


def wait_until_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("the vLLM server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-cpu/run.yaml"))
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--instructions", type=int, help="default: the recipe's self_instruct.count")
    parser.add_argument("--keep", type=Path, help="keep both runs' folders here")
    args = parser.parse_args()
    config = load_config(args.recipe)
    model = resolve_model(config.model)
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    max_len = max(config.engine.max_model_len, 2 * args.max_tokens + 2048)  # stage 2: text + continuation
    command = vllm_command(EngineOptions(max_model_len=max_len, vllm_args=("--dtype", "float32")),
                           model.source, port, config.seed)  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_environment()
    )
    work = Path(tempfile.mkdtemp(prefix="early-stop-bench-"))
    shared = ["--endpoint", f"{url}/v1", "--model", model.source, "--max-model-len", str(max_len),
              "--concurrency", str(config.engine.concurrency), "--seed", str(config.seed)]  # fmt: skip
    try:
        wait_until_ready(url, server)
        base = work / "instructions-run"
        count = args.instructions or config.self_instruct.count
        selflengthen("self-instruct", "--run-dir", base, "--count", count, "--max-retries",
                     config.self_instruct.max_retries, "--seed-language", config.self_instruct.seed_language,
                     "--max-tokens", args.max_tokens, *shared)  # fmt: skip
        results: dict[str, dict[str, float]] = {}
        frames: dict[str, dict[str, pl.DataFrame]] = {}
        for label, flag in (("off", "--no-early-stop"), ("on", "--early-stop")):
            run = work / f"early-stop-{label}"
            shutil.copytree(base / "iter_1" / "instructions", run / "iter_1" / "instructions")
            seconds = tokens = 0.0
            stopped = 0
            for step, folder in _STEPS.items():
                arguments = step_arguments(config, step, args.max_tokens)
                seconds += selflengthen(step, "--run-dir", run, *arguments, *shared, flag)
                stats = json.loads((run / "iter_1" / folder / "stats.json").read_text())
                tokens += stats["completion_tokens"]
                stopped += sum(counts["requests"] for counts in stats["stopped_early"].values())
            frames[label] = {
                folder: pl.read_parquet(run / "iter_1" / folder / "data") for folder in _STEPS.values()
            }
            kept_words = int(frames[label]["extended"]["extended_words"].sum())
            results[label] = {"completion tokens": tokens, "wall seconds": seconds,
                              "kept extended rows": frames[label]["extended"].height,
                              "tokens per kept word": tokens / kept_words if kept_words else float("nan"),
                              "requests stopped early": stopped}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    identical = all(
        frames["on"][folder]
        .select("id", _TEXT[folder])
        .equals(frames["off"][folder].select("id", _TEXT[folder]))
        for folder in _STEPS.values()
    )
    print(f"early stop vs none: {model.spec}, {count} instructions, max_tokens {args.max_tokens}, float32")
    print(f"{'':26}{'off':>12}{'on':>12}{'on/off':>9}")
    for key in results["off"]:
        off, on = results["off"][key], results["on"][key]
        ratio = f"{on / off:.2f}" if off else "-"
        print(f"{key:26}{off:>12.1f}{on:>12.1f}{ratio:>9}")
    print(f"kept rows identical, text for text (initial and extended): {identical}")
    saved_tokens = 1 - results["on"]["completion tokens"] / results["off"]["completion tokens"]
    saved_time = 1 - results["on"]["wall seconds"] / results["off"]["wall seconds"]
    print(f"completion tokens saved: {saved_tokens:.1%} (target >= 40%)")
    print(f"wall time saved: {saved_time:.1%} (target >= 30%)")
    texts = (
        frames["off"]["initial"]["response"].to_list()
        + frames["off"]["extended"]["extended_response"].to_list()
    )
    decoding = results["off"]["wall seconds"] / results["off"]["completion tokens"]
    watching = watch_seconds_per_chunk(texts)
    print(f"checks per streamed chunk: {watching * 1e6:.1f} µs vs {decoding * 1e6:.0f} µs of wall time per "
          f"generated token without early stop ({watching / decoding:.2%})")  # fmt: skip


def watch_seconds_per_chunk(texts: list[str], characters_per_chunk: int = 4) -> float:
    """The early-stop checks' cost per streamed chunk (~one token), fed the kept answers."""
    chunks = 0
    started = time.perf_counter()
    for text in texts:
        watch = ResponseWatch()
        for begin in range(0, len(text), characters_per_chunk):
            watch.feed(text[begin : begin + characters_per_chunk])
            chunks += 1
    return (time.perf_counter() - started) / max(chunks, 1)


if __name__ == "__main__":
    main()
