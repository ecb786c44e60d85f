"""The engine and sampling options shared by every command that generates text."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from selflengthen.engine.models import DEFAULT_MODEL, ResolvedModel, resolve_model
from selflengthen.engine.options import (
    DEFAULT_MAX_TOKENS,
    PAPER_SAMPLING,
    EngineOptions,
    SamplingOptions,
    context_problem,
)
from selflengthen.engine.server import check_endpoint, check_port_free
from selflengthen.errors import SelflengthenError

_PANEL_ENGINE = "Engine"
_PANEL_SAMPLING = "Sampling"


def _option(kind: Any, default: Any, help_text: str, panel: str, *flags: str) -> inspect.Parameter:
    return inspect.Parameter(
        flags[0].split("/")[0].lstrip("-").replace("-", "_") if flags else "",
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(*flags, help=help_text, rich_help_panel=panel)],
    )


_SHARED = [
    _option(str, DEFAULT_MODEL, "Model: the embedded default smollm2-135m, a local folder, or a Hub id "
            "(org/name). With --endpoint, the model name the endpoint serves.", _PANEL_ENGINE, "--model"),
    _option(str | None, None, "Use this running OpenAI-compatible server (e.g. http://host:8000/v1) "
            "instead of launching vLLM.", _PANEL_ENGINE, "--endpoint"),
    _option(str | None, None, "Name of the environment variable with the endpoint's API key.",
            _PANEL_ENGINE, "--api-key-env"),
    _option(int, 4096, "Context length given to vLLM.", _PANEL_ENGINE, "--max-model-len"),
    _option(float | None, None, "vLLM memory fraction (default: 0.9 on GPU, 0.3 on CPU).", _PANEL_ENGINE,
            "--gpu-memory-utilization"),
    _option(int, 1, "vLLM tensor parallel size.", _PANEL_ENGINE, "--tensor-parallel-size"),
    _option(int, 1, "vLLM data parallel size.", _PANEL_ENGINE, "--data-parallel-size"),
    _option(int | None, None, "Port for the vLLM server (default: a free one).", _PANEL_ENGINE, "--port"),
    _option(bool, False, "Let vLLM run code shipped with the model (off unless given).", _PANEL_ENGINE,
            "--trust-remote-code"),
    _option(list[str] | None, None, "Extra flag for the vLLM server, e.g. --vllm-arg=--enable-prefix-caching "
            "(repeatable).", _PANEL_ENGINE, "--vllm-arg"),
    _option(float, 900.0, "Seconds to wait for the vLLM server to be ready.", _PANEL_ENGINE,
            "--startup-timeout"),
    _option(int, 64, "Requests in flight at once.", _PANEL_ENGINE, "--concurrency"),
    _option(int, DEFAULT_MAX_TOKENS, "Most new tokens per request.", _PANEL_SAMPLING, "--max-tokens"),
    _option(float, PAPER_SAMPLING["temperature"], "Sampling temperature.", _PANEL_SAMPLING, "--temperature"),
    _option(float, PAPER_SAMPLING["top_p"], "Nucleus sampling threshold.", _PANEL_SAMPLING, "--top-p"),
    _option(int, PAPER_SAMPLING["top_k"], "Top-k sampling (-1 for off).", _PANEL_SAMPLING, "--top-k"),
    _option(float, PAPER_SAMPLING["repetition_penalty"], "Repetition penalty.", _PANEL_SAMPLING,
            "--repetition-penalty"),
    _option(int, 0, "Seed of every request's sampling, of retries and of the sampler.", _PANEL_SAMPLING,
            "--seed"),
    _option(bool, True, "Stream each request and cancel it as soon as the filters' rejection of the "
            "finished text is certain (a repeated 13-gram, a meta-comment in the first lines). Never "
            "changes the kept rows; --no-early-stop sends plain requests (servers without streaming, "
            "comparisons).", _PANEL_SAMPLING, "--early-stop/--no-early-stop"),
]  # fmt: skip
_ENGINE_FIELDS = [
    "model", "endpoint", "api_key_env", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size",
    "data_parallel_size", "port", "trust_remote_code", "startup_timeout", "concurrency",
]  # fmt: skip
_SAMPLING_FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "early_stop"]


def with_engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the shared options; it receives `engine`, `model` and `sampling` instead.

    Everything is validated before any work: a bad value, a busy --port, an unknown model or
    an --endpoint that does not answer is a one-line error.
    """
    hints = typing.get_type_hints(command, include_extras=True)  # the command's own module resolves them
    own = [
        parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
        for parameter in inspect.signature(command).parameters.values()
        if parameter.name not in ("engine", "model", "sampling")
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        vllm_args = tuple(kwargs.pop("vllm_arg") or ())
        engine = EngineOptions(**{name: kwargs.pop(name) for name in _ENGINE_FIELDS}, vllm_args=vllm_args)
        sampling = SamplingOptions(**{name: kwargs.pop(name) for name in _SAMPLING_FIELDS})
        if engine.endpoint:
            check_endpoint(engine)
            model = ResolvedModel(engine.model, engine.model, "endpoint")
        else:
            if problem := context_problem(sampling.max_tokens, engine.max_model_len):
                raise SelflengthenError(f"--max-tokens {problem} (--max-model-len)")
            if engine.port is not None:
                check_port_free(engine.host, engine.port)
            model = resolve_model(engine.model, prepare=False)  # converted when the step starts
        command(engine=engine, model=model, sampling=sampling, **kwargs)

    parameters = own + _SHARED
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return wrapper
