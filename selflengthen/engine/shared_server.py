"""The one owner of the vLLM servers we launch: it starts a server, waits until it answers,
notices when it dies and stops it.

The loop runs several steps on the same model in a row (iteration 1 uses the base model for all
of them), so it starts the server once, keeps it while the model stays the same, and has each
step talk to it as an endpoint; starting a server takes ~40 s on a CPU and minutes for a 7B
model on GPUs. A step command and `eval` use it the same way; each Slurm or Ray task starts one
through it on its node (`server.TaskServer`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from selflengthen.engine.launch import (
    die_with_parent,
    kill_process_group,
    served_precision,
    server_environment,
    vllm_command,
)
from selflengthen.engine.models import ResolvedModel, prepare_embedded_model
from selflengthen.engine.options import EngineOptions
from selflengthen.errors import SelflengthenError, ServerFailed

_POLL_SECONDS = 2.0
#: How often a step is resumed on a fresh server after its server died during the step.
SERVER_RESTARTS = 2
T = TypeVar("T")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class SharedServer:
    """Serves one model at a time; `engine_for(model)` starts (or reuses) its server and returns
    engine options that point the steps at it. With an `endpoint` (the user's server) or on a
    cluster (each task serves itself) it starts nothing. A context manager that stops its server."""

    def __init__(self, engine: EngineOptions, log_folder: Path, seed: int) -> None:
        self.engine, self.log_folder, self.seed = engine, log_folder, seed
        self.model: ResolvedModel | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log: Path | None = None

    def engine_for(self, model: ResolvedModel) -> EngineOptions:
        if self.engine.endpoint or self.engine.on_cluster:
            return dataclasses.replace(self.engine, model=model.source)
        if self.model != model or not self.alive():
            self.stop()
            self.launch(model)
            self.wait_until_ready()
        assert self.process is not None
        return dataclasses.replace(
            self.engine, model=model.source, endpoint=f"{self.url}/v1", port=None, server_pid=self.process.pid
        )

    def serve(self, model: ResolvedModel, step: Callable[[EngineOptions], T]) -> T:
        """Run `step` against `model`'s server. If the server dies during the step (killed, out
        of memory), start it again and resume the step from its checkpoints, up to
        `SERVER_RESTARTS` times; a server failing while it runs is an error at once."""
        restarts = 0
        while True:
            engine = self.engine_for(model)
            try:
                return step(engine)
            except ServerFailed:
                if self.process is None or self.alive():
                    raise
                died = (
                    f"model {model.spec}: the vLLM server died during the step "
                    f"(exit code {self.process.returncode}; log: {self.log})"
                )
                if restarts == SERVER_RESTARTS:
                    raise ServerFailed(f"{died}, {restarts + 1} times; rerun to resume") from None
                restarts += 1
                print(f"{died}; restarting it, resuming the step ({restarts}/{SERVER_RESTARTS})", flush=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, model: ResolvedModel) -> None:
        """Start `model`'s server (`wait_until_ready` waits for it to answer)."""
        if model.kind == "embedded":
            prepare_embedded_model(model.spec)
        port = self.engine.port or free_port(self.engine.host)
        command = vllm_command(self.engine, model.source, port, self.seed)
        self.log_folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = self.log = self.log_folder / f"vllm-{stamp}-{os.getpid()}.log"
        precision = served_precision(self.engine)
        dtype = f" in {precision.dtype}" if precision.dtype else ""
        print(f"starting vLLM for {model.spec}{dtype} ({precision.reason}; log: {log})", flush=True)
        with log.open("wb") as stream:
            self.process = subprocess.Popen(
                command,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                preexec_fn=die_with_parent,
                process_group=0,  # its own group, so that `stop` can end its engine processes
            )
        self.model, self.url = model, f"http://{self.engine.host}:{port}"

    def wait_until_ready(self) -> None:
        """Wait until the launched server answers; stop it and raise a one-line error if it
        exits or does not answer within `engine.startup_timeout`."""
        assert self.model is not None
        spec, log = self.model.spec, self.log
        deadline = time.monotonic() + self.engine.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                raise SelflengthenError(f"model {spec}: the vLLM server exited at start (log: {log})")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(_POLL_SECONDS)
        self.stop()
        raise SelflengthenError(
            f"model {spec}: the vLLM server was not ready within {self.engine.startup_timeout:.0f} s "
            f"(engine.startup_timeout, --startup-timeout; log: {log})"
        )

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            kill_process_group(self.process.pid)
        self.process, self.model = None, None

    def __enter__(self) -> SharedServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
