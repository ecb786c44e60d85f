"""Each engine and sampling option is declared once (the run config's sections); the step
commands' flags and the runtime options agree with that declaration."""

import dataclasses
import inspect

from selflengthen.cli_engine import _SHARED
from selflengthen.config import RunConfig
from selflengthen.config_engine import EngineSection, SamplingSection
from selflengthen.engine.options import EngineOptions, SamplingOptions

CONFIG_ONLY = {"host", "enforce_eager", "slurm", "ray"}  # a run's own server; clusters are a run's
FLAG_NAMES = {"vllm_args": "vllm_arg"}


def test_every_config_option_is_a_flag_with_the_config_default_and_help() -> None:
    flags = {parameter.name: parameter for parameter in _SHARED}
    declared = {
        **{name: field for name, field in EngineSection.model_fields.items() if name not in CONFIG_ONLY},
        **SamplingSection.model_fields,
        **{name: RunConfig.model_fields[name] for name in ("model", "seed", "early_stop", "speculate")},
    }
    for name, field in declared.items():
        flag = flags[FLAG_NAMES.get(name, name)]
        default = None if field.default_factory is not None else field.default
        assert flag.default == default, name
        assert field.description and flag.annotation.__metadata__[0].help == field.description, name
    assert set(flags) - {FLAG_NAMES.get(name, name) for name in declared} == {"endpoint", "api_key_env"}


def test_the_runtime_options_have_the_config_defaults() -> None:
    engine_defaults = {field.name: field.default for field in dataclasses.fields(EngineOptions)}
    for name, field in EngineSection.model_fields.items():
        if name not in ("vllm_args", "slurm"):
            assert engine_defaults[name] == field.default, name
    sampling_defaults = {field.name: field.default for field in dataclasses.fields(SamplingOptions)}
    for name, field in {**SamplingSection.model_fields, **RunConfig.model_fields}.items():
        if name in sampling_defaults:
            assert sampling_defaults[name] == field.default, name
    assert set(sampling_defaults) == set(SamplingSection.model_fields) | {"seed", "early_stop", "speculate"}
    assert (
        inspect.signature(EngineOptions).parameters["model"].default
        == RunConfig.model_fields["model"].default
    )
