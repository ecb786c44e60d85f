"""Our servers as datatrove's InferenceRunner sees them.

Every vLLM server we launch is started, made ready and stopped by `SharedServer`; here it is
plugged into datatrove: `WatchedServer` for a server started by this process (the step
commands, the loop and eval start it before the step), `TaskServer` for the server each Slurm or
Ray task starts on its node, `Endpoint` for a server the user runs. Requests whose payload asks
for a stream go through `stream_chat`, which can cancel them early.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.servers import EndpointServer, InferenceServer
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError

from selflengthen.engine.launch import process_running
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.shared_server import SharedServer
from selflengthen.engine.streaming import stream_chat
from selflengthen.errors import SelflengthenError
from selflengthen.relevance import RelevanceScorer

_READY_POLL_SECONDS = 2.0
_WATCH_SECONDS = 1.0
#: datatrove's message for a request that failed on connection errors after all its retries.
_RETRIES_EXHAUSTED = "Failed to process request after"
#: An endpoint the user already runs must answer within this many seconds.
ENDPOINT_READY_SECONDS = 30.0


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


class StreamedRequests(InferenceServer):
    """Sends a request whose payload asks for a stream through `stream_chat` (which can cancel
    it early); any other request the way datatrove's server does."""

    async def _make_request(self, payload: dict) -> dict:
        if not payload.get("stream"):
            return await super()._make_request(payload)
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await stream_chat(f"{self.get_base_url()}/v1/chat/completions", payload, headers)


class Endpoint(StreamedRequests, EndpointServer):
    """An OpenAI-compatible server the user runs (`--endpoint`)."""


class WatchedServer(StreamedRequests):
    """A vLLM server this process started, at `url` with process `pid`.

    datatrove treats an endpoint as always healthy and retries a refused request for ~5 minutes,
    after which the rollout sees an ordinary failed request, so a server killed mid-step would
    leave documents recorded as finished without their rows. Here the server's process is
    watched: once it is gone every request raises `ServerError`, the step stops before saving
    the documents in flight, and a rerun (or `SharedServer.serve`) resumes them.
    """

    def __init__(self, config: InferenceConfig, rank: int, url: str = "", pid: int | None = None) -> None:
        super().__init__(config, rank)
        self.url, self.pid = url, pid

    async def start_server(self) -> None:
        return None  # already serving

    def get_base_url(self) -> str:
        return self.url

    async def monitor_health(self) -> None:
        while self.pid is not None and process_running(self.pid):
            await asyncio.sleep(_WATCH_SECONDS)
        raise ServerError(f"the vLLM server (pid {self.pid}) exited")

    async def _make_request(self, payload: dict) -> dict:
        try:
            return await super()._make_request(payload)
        except (TimeoutError, InferenceError, ServerError, ConnectionError, OSError):
            raise
        except Exception as error:  # e.g. a response body cut short: retried, by then the watch knows
            raise ConnectionError(f"unreadable response ({error})") from error


class TaskServer(WatchedServer):
    """The server of one Slurm or Ray task: `SharedServer` starts it on the task's node when
    datatrove starts the task's server, and stops it with the task."""

    def __init__(self, config: InferenceConfig, rank: int, engine: EngineOptions, seed: int) -> None:
        super().__init__(config, rank)
        here = dataclasses.replace(engine, slurm=None, ray=None)  # this task serves itself
        self.owner = SharedServer(here, Path(config.server_log_folder or "."), seed)

    async def start_server(self) -> None:
        source = self.config.model_name_or_path
        self.owner.launch(ResolvedModel(source, source, "local"))
        await asyncio.to_thread(self.owner.wait_until_ready)
        assert self.owner.process is not None
        self.url, self.pid = self.owner.url, self.owner.process.pid

    async def server_cleanup(self) -> None:
        await super().server_cleanup()
        self.owner.stop()


class SelflengthenInferenceRunner(InferenceRunner):
    """datatrove's InferenceRunner, serving requests from our vLLM server (or an endpoint).

    With `relevance`, the rollouts also receive `relevance`: a factory of `RelevanceScorer`s on
    the server their requests go to (known only once datatrove has started it)."""

    def __init__(
        self, *args: Any, engine: EngineOptions, seed: int, relevance: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.seed = seed
        self.relevance = relevance
        self._server: InferenceServer | None = None

    @contextlib.contextmanager
    def get_shared_context_cm(self) -> Iterator[dict[str, Any]]:
        with super().get_shared_context_cm() as shared:
            if self.relevance:
                assert self._server is not None, "the shared context is entered once the server runs"
                url = self._server.get_base_url().rstrip("/").removesuffix("/v1")
                model = self.config.model_name_or_path
                shared = {**shared, "relevance": partial(RelevanceScorer, url, model, self.engine.api_key())}
            yield shared

    async def run_async(self, data_gen: Any, rank: int = 0) -> None:
        """datatrove's run, with its request cache closed however it ends: an error before
        datatrove's own cleanup (a damaged or full cache file) left aiosqlite's thread running,
        and the interpreter waited for it forever after the traceback."""
        try:
            await super().run_async(data_gen, rank)
        finally:
            connection = self.request_cache._conn  # datatrove closes it only on its own path
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), timeout=10)
                if (stopped := connection.stop()) is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(stopped, timeout=10)
                self.request_cache._conn = None

    def _init_server(self, rank: int) -> InferenceServer:
        self._server = self._new_server(rank)
        return self._server

    def _new_server(self, rank: int) -> InferenceServer:
        if self.config.server_type == "vllm":
            return TaskServer(self.config, rank, self.engine, self.seed)
        if self.engine.server_pid is not None:
            assert self.config.endpoint_url is not None
            return WatchedServer(self.config, rank, self.config.endpoint_url, self.engine.server_pid)
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
    """datatrove's InferenceConfig for our engine options: an endpoint (the user's, or the
    server this process started), else a server per task (`TaskServer`, Slurm and Ray). Only
    how requests are sent is set here: datatrove never launches a server of ours, so the vLLM
    settings (context, parallelism, ...) go to `launch.vllm_command` alone. Our start already
    waits until the server answers, so datatrove's readiness check after it is a formality,
    given the time an endpoint is given."""
    endpoint = options.endpoint.rstrip("/").removesuffix("/v1") if options.endpoint else None
    return InferenceConfig(
        server_type="endpoint" if endpoint else "vllm",
        model_name_or_path=model_source,
        endpoint_url=endpoint,
        use_chat=True,
        rollouts_per_document=1,
        max_concurrent_generations=options.concurrency,
        server_log_folder=server_log_folder,
        metric_interval=3600,
        server_start_timeout_sec=options.startup_timeout + _READY_POLL_SECONDS,
        server_ready_max_attempts=int(ENDPOINT_READY_SECONDS / _READY_POLL_SECONDS),
        server_ready_delay_sec=_READY_POLL_SECONDS,
        server_start_max_retries=0,
    )
