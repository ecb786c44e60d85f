"""The `generate` step's output tokens per second against vLLM's own offline `LLM.chat`.

Same model, prompts and sampling parameters on both sides, one answer per prompt and no
retries, so both do the same requests. The offline engine runs in a child process (its start is
not timed); the step runs against a vLLM server that selflengthen launches (its start is not
timed either), through datatrove's InferenceRunner, including writing its dataset. Both run in
the environment selflengthen gives vLLM (`server_environment`). Target: the step reaches >= 0.85
of offline throughput.

    python benchmarks/generation.py [--prompts 16] [--max-tokens 256] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl
from loguru import logger

from selflengthen.builders.generate import GenerateSettings, run_generate
from selflengthen.config import GenerateSection
from selflengthen.engine.launch import on_gpu, server_environment, vllm_command
from selflengthen.engine.models import ResolvedModel, resolve_model
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.engine.precision import serving_precision
from selflengthen.prompts import shipped_seeds

TARGET = 0.85
_MARKER = "offline tokens/s: "  # vLLM logs to stdout too; this marks the child's answer
PORT = 18555


def prompts(count: int) -> list[str]:
    return [row["instruction"] for row in shipped_seeds()][:count]


def offline_tokens_per_second(
    model_source: str, texts: list[str], sampling: SamplingOptions, max_len: int
) -> float:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_source,
        max_model_len=max_len,
        gpu_memory_utilization=0.9 if on_gpu() else 0.3,
        enforce_eager=not on_gpu(),
        dtype=serving_precision("auto", on_gpu()).dtype or "auto",  # what our server is given
        seed=sampling.seed,
    )
    params = SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )
    conversations = [[{"role": "user", "content": text}] for text in texts]
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return sum(len(output.outputs[0].token_ids) for output in outputs) / elapsed


def wait_until_ready(port: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError("vLLM server did not start")


def step_tokens_per_second(
    model: ResolvedModel, texts: list[str], sampling: SamplingOptions, max_len: int
) -> float:
    engine = EngineOptions(model=model.source, endpoint=f"http://127.0.0.1:{PORT}/v1", max_model_len=max_len)
    command = vllm_command(EngineOptions(max_model_len=max_len), model.source, PORT, sampling.seed)
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_environment()
    )
    try:
        wait_until_ready(PORT)
        instructions = pl.DataFrame({"id": [f"p{i}" for i in range(len(texts))], "instruction": texts})
        settings = GenerateSettings(GenerateSection(samples_per_instruction=1, max_retries=1), sampling)
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            stats = run_generate(Path(run_dir), 1, instructions, engine, model, settings)
            elapsed = time.perf_counter() - started
        return stats["completion_tokens"] / elapsed
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    logger.disable("datatrove")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--offline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = resolve_model(args.model)
    sampling = SamplingOptions(max_tokens=args.max_tokens, seed=0)
    texts = prompts(args.prompts)
    if args.offline_only:
        print(f"{_MARKER}{offline_tokens_per_second(model.source, texts, sampling, args.max_model_len)}")
        return
    child = subprocess.run(
        [sys.executable, __file__, "--offline-only", "--prompts", str(args.prompts), "--max-tokens",
         str(args.max_tokens), "--model", args.model, "--max-model-len", str(args.max_model_len)],
        capture_output=True, text=True, check=True, env=server_environment(),
    )  # fmt: skip
    offline = float(
        next(line for line in child.stdout.splitlines() if line.startswith(_MARKER))[len(_MARKER) :]
    )
    ours = step_tokens_per_second(model, texts, sampling, args.max_model_len)
    ratio = ours / offline
    print(
        f"generate step vs vLLM offline LLM.chat: {args.prompts} prompts x {args.max_tokens} max tokens, "
        f"{model.spec}"
    )
    print(f"vLLM offline LLM.chat      {offline:8.1f} output tokens/s")
    print(f"selflengthen generate      {ours:8.1f} output tokens/s   ratio {ratio:.2f}  "
          f"{'met' if ratio >= TARGET else 'MISSED'} (target >= {TARGET})")  # fmt: skip


if __name__ == "__main__":
    main()
