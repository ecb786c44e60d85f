"""The vLLM server's output tokens/s against requests in flight, for each serving precision.

The baseline is bfloat16, what every CPU was served in before `engine.dtype: auto` (the
converted embedded model's own dtype); the other side is float32. Each is the project's own
server (`vllm_command`, `server_environment`), the same model and the same requests: chat
requests of exactly `--tokens` new tokens with the paper's sampling (temperature 0.7, top_p
0.8, top_k 20, repetition_penalty 1.1, a seed per request), sent `N` at once for each `N` in
`--in-flight`. The seconds until each server answers are printed beside (not part of the
rates); one short wave warms each server up first. `--compiled` adds the precision `auto`
picks without `--enforce-eager` (vLLM's compiled CPU path). The CPU is named (`lscpu`'s model
name and its bf16 hardware), with the precision `auto` picks on it.

    python benchmarks/cpu_server.py [--tokens 256] [--in-flight 1,4,16,48,96] [--compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import platform
import subprocess
import time

import httpx
from step_runs import serving

from selflengthen.engine.launch import on_gpu
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import PAPER_SAMPLING, EngineOptions
from selflengthen.engine.precision import cpu_flags, cpu_kind, serving_precision

PRECISIONS = ("bfloat16", "float32")


async def tokens_per_second(url: str, model: str, tokens: int, requests: int) -> float:
    async def one(client: httpx.AsyncClient, index: int) -> int:
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": f"({index}) Write a long essay on the history of tea."}],
            "max_tokens": tokens,
            "min_tokens": tokens,
            "seed": index,
            **PAPER_SAMPLING,
        }
        response = await client.post(f"{url}/v1/chat/completions", json=payload, timeout=1800)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, index) for index in range(requests)))
        return sum(counts) / (time.perf_counter() - started)


def measure(
    options: EngineOptions, model: str, tokens: int, in_flight: list[int]
) -> tuple[float, dict[int, float]]:
    """Seconds until the server answered, and its tokens/s for each count of requests in flight."""
    started = time.monotonic()
    with serving(options, model, 0) as url:
        ready = time.monotonic() - started
        asyncio.run(tokens_per_second(url, model, 16, 4))  # warm-up
        return ready, {
            count: asyncio.run(tokens_per_second(url, model, tokens, count)) for count in in_flight
        }


def cpu_name() -> str:
    try:
        listed = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        listed = ""
    for line in listed.splitlines():
        if line.startswith("Model name:"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--in-flight", default="1,4,16,48,96", help="comma-separated request counts")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--compiled", action="store_true", help="also measure the fastest precision without --enforce-eager"
    )
    args = parser.parse_args()
    in_flight = [int(count) for count in args.in_flight.split(",")]
    model = resolve_model(args.model).source
    options = EngineOptions(max_model_len=2048)
    variants = {dtype: dataclasses.replace(options, dtype=dtype) for dtype in PRECISIONS}
    if args.compiled:
        variants["auto, compiled"] = dataclasses.replace(options, enforce_eager=False)
    results = {name: measure(variant, model, args.tokens, in_flight) for name, variant in variants.items()}
    chosen = serving_precision("auto", on_gpu())
    print(
        f"vLLM server, {args.model}, {args.tokens}-token answers; CPU: {cpu_name()} "
        f"({cpu_kind(cpu_flags())}); auto serves in {chosen.dtype} ({chosen.reason})"
    )
    print(f"{'variant':>16}  {'ready s':>7}  " + "  ".join(f"{count:>4} in flight" for count in in_flight))
    for name, (ready, rates) in results.items():
        row = "  ".join(f"{rates[count]:>7.1f} tok/s" for count in in_flight)
        print(f"{name:>16}  {ready:>7.1f}  {row}")
    best = {name: max(rates.values()) for name, (_, rates) in results.items()}
    baseline = best["bfloat16"]
    print(
        "saturated (best of the counts) / bfloat16: "
        + ", ".join(f"{n} {v / baseline:.2f}" for n, v in best.items())
    )
    print(f"auto ({chosen.dtype}) / bfloat16 (before): {best[chosen.dtype or 'bfloat16'] / baseline:.2f}")


if __name__ == "__main__":
    main()
