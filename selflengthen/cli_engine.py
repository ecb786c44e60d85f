"""The engine and sampling options shared by every command that generates text."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from selflengthen.config import RunConfig, flag_name, section_from_flags
from selflengthen.config_engine import EngineSection, SamplingSection
from selflengthen.engine.launch import check_port_free
from selflengthen.engine.models import ResolvedModel, resolve_model
from selflengthen.engine.options import EngineOptions, SamplingOptions, context_problem
from selflengthen.engine.server import check_endpoint
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


#: The options of a run config that a step command offers as flags, in --help's order: each is
#: declared once, with its type, default, limits and help, in `selflengthen.config`; the CLI
#: derives its flags from there. (`host`, `enforce_eager`, `slurm` and `ray` are config-only; `vllm_args`
#: is the repeatable `--vllm-arg`.)
_FROM_CONFIG: list[tuple[str, type[BaseModel], str, str]] = [
    ("model", RunConfig, "--model", _PANEL_ENGINE),
    *[
        (name, EngineSection, "--vllm-arg" if name == "vllm_args" else flag_name(name), _PANEL_ENGINE)
        for name in EngineSection.model_fields
        if name not in ("host", "enforce_eager", "slurm", "ray")
    ],
    *[(name, SamplingSection, flag_name(name), _PANEL_SAMPLING) for name in SamplingSection.model_fields],
    ("seed", RunConfig, "--seed", _PANEL_SAMPLING),
    ("early_stop", RunConfig, "--early-stop/--no-early-stop", _PANEL_SAMPLING),
    ("speculate", RunConfig, "--speculate/--no-speculate", _PANEL_SAMPLING),
]
#: Flags only a step command has: a run serves the models its iterations train.
_ENDPOINT_OPTIONS = [
    _option(str | None, None, "Use this running OpenAI-compatible server (e.g. http://host:8000/v1) "
            "instead of launching vLLM.", _PANEL_ENGINE, "--endpoint"),
    _option(str | None, None, "Name of the environment variable with the endpoint's API key.",
            _PANEL_ENGINE, "--api-key-env"),
]  # fmt: skip


def _config_option(name: str, section: type[BaseModel], flag: str, panel: str) -> inspect.Parameter:
    declared = section.model_fields[name]
    default = None if declared.default_factory is not None else declared.default  # a list: repeatable
    kind = list[str] | None if declared.default_factory is not None else declared.annotation
    parameter = _option(kind, default, declared.description or "", panel, flag)
    return parameter.replace(name="vllm_arg") if name == "vllm_args" else parameter


_SHARED = [
    _config_option(*_FROM_CONFIG[0]),
    *_ENDPOINT_OPTIONS,
    *[_config_option(*entry) for entry in _FROM_CONFIG[1:]],
]
_ENGINE_FIELDS = ["model", "endpoint", "api_key_env"] + [
    name for name, section, *_ in _FROM_CONFIG if section is EngineSection and name != "vllm_args"
]
_SAMPLING_FIELDS = [name for name, section, *_ in _FROM_CONFIG if section is SamplingSection] + [
    "seed",
    "early_stop",
    "speculate",
]


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
        vllm_args = kwargs.pop("vllm_arg") or []
        engine_flags = {name: kwargs.pop(name) for name in _ENGINE_FIELDS}
        sampling_flags = {name: kwargs.pop(name) for name in _SAMPLING_FIELDS}
        # The run config's rules, with errors naming the flags.
        section_from_flags(
            EngineSection,
            {name: engine_flags[name] for name in EngineSection.model_fields if name in engine_flags}
            | {"vllm_args": vllm_args},
            flags={"vllm_args": "--vllm-arg"},
        )
        section_from_flags(
            SamplingSection, {name: sampling_flags[name] for name in SamplingSection.model_fields}
        )
        engine = EngineOptions(**engine_flags, vllm_args=tuple(vllm_args))
        sampling = SamplingOptions(**sampling_flags)
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
