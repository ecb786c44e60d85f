"""The run configuration: a YAML file <-> a typed, validated object.

Every key is checked before any work starts: an unknown key, a value of the wrong type or a
missing required value is a one-line error naming the key and the file. Paths inside the file
(seeds, the TRL recipe, the accelerate config) are relative to the file's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from selflengthen.config_engine import (
    ConfigSection,
    EngineSection,
    LaxPath,
    Positive,
    Probability,
    SamplingSection,
)
from selflengthen.engine.models import DEFAULT_MODEL
from selflengthen.engine.options import (
    SamplingOptions,
    context_problem,
)
from selflengthen.errors import SelflengthenError
from selflengthen.filters.registry import DEFAULT_FILTERS, FilterConfigError, FilterEntry, parse_entries
from selflengthen.strict_yaml import DuplicateKeyError, load_yaml


class SelfInstructSection(ConfigSection):
    """`model`: who writes the new instructions, the base model or the iteration's Generator
    (which saves a server start per iteration: the Generator is served for `generate` anyway)."""

    model: Literal["base", "generator"] = "base"
    count: Positive = 5000
    max_retries: Positive = 10
    seed_language: Literal["all", "en", "zh"] = "all"
    seeds: LaxPath | None = None
    max_tokens: Positive | None = None


class GenerateSection(ConfigSection):
    samples_per_instruction: Positive = 2
    max_retries: Positive = 20
    max_tokens: Positive | None = None


class ExtendSection(ConfigSection):
    rounds: Positive = 3
    max_retries: Positive = 3
    min_ratio: Annotated[float, Field(gt=0)] = 1.2
    force_growth: bool = False
    #: `OnTopicFilter`'s max_ratio on the kept extensions (null: not applied).
    on_topic: Annotated[float, Field(gt=0)] | None = None
    max_tokens: Positive | None = None


class SftDataSection(ConfigSection):
    line_drop_probability: Annotated[float, Field(ge=0, lt=1)] = 0.2


class TrainSection(ConfigSection):
    """`recipe` is a YAML file that TRL's own parser reads (`trl sft --config` takes it too)."""

    recipe: LaxPath
    #: Which kept rows iteration k trains each role on, continuing from iteration k-1's
    #: adapter either way: `new`, iteration k's rows only (the paper); `all`, the rows of
    #: iterations 1..k, so that one iteration's few rows cannot steer the next role alone.
    rows: Literal["new", "all"] = "new"
    launcher: Literal["python", "accelerate", "srun-accelerate"] = "python"
    accelerate_config: LaxPath | None = None
    accelerate_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _accelerate_needs_config(self) -> TrainSection:
        if self.launcher == "python" and (self.accelerate_config is not None or self.accelerate_args):
            raise ValueError(
                "accelerate_config and accelerate_args need launcher: accelerate or srun-accelerate"
            )
        return self


class CollectSection(ConfigSection):
    extra_instructions: Annotated[int, Field(ge=0)] = 0


class LengthControlSection(ConfigSection):
    min_words: Positive = 2000
    max_words: Positive = 8000
    round_to: Positive = 1000
    coarse_round_to: Positive = 2000
    coarse_probability: Probability = 0.2
    weights: dict[Literal["about", "range", "above", "below"], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"about": 0.4, "range": 0.25, "above": 0.1, "below": 0.25}
    )

    @model_validator(mode="after")
    def _check(self) -> LengthControlSection:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        if self.min_words < max(self.round_to, self.coarse_round_to):
            raise ValueError(
                "min_words must be at least round_to and coarse_round_to (bounds start at one unit)"
            )
        if sum(self.weights.values()) <= 0:
            raise ValueError("weights: at least one constraint type needs a weight above 0")
        return self


class RunConfig(ConfigSection):
    """One Self-Lengthen run: `iterations` macro-iterations, then collect and length control."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[\w.-]+$")]
    run_dir: LaxPath | None = None
    model: Annotated[
        str,
        Field(
            description="Model: the embedded default smollm2-135m, a local folder, or a Hub id (org/name). "
            "With --endpoint, the model name the endpoint serves."
        ),
    ] = DEFAULT_MODEL
    iterations: Positive = 3
    seed: Annotated[
        int, Field(description="Seed of every request's sampling, of retries and of the sampler.")
    ] = 0
    early_stop: Annotated[
        bool,
        Field(
            description="Stream each request and cancel it as soon as the filters' rejection of the "
            "finished text is certain (a repeated 13-gram, a meta-comment in the first lines). Never "
            "changes the kept rows; --no-early-stop sends plain requests (servers without streaming, "
            "comparisons)."
        ),
    ] = True
    speculate: Annotated[
        bool,
        Field(
            description="While the server has idle slots (a step's last rows), start a row's later "
            "attempts (extension attempts, answer retries) ahead of need and cancel those not "
            "needed. Never changes the kept rows; costs some tokens; --no-speculate runs each "
            "attempt only when it is needed."
        ),
    ] = True
    filters: Annotated[
        list[Any],
        Field(
            description="The filters every generated answer must pass, in order (generate and the "
            "Extender's texts): our names (ending, repetition, character-loop, meta-comment, length) or "
            "any datatrove BaseFilter as module:Class, each alone or as `name: {arguments}`."
        ),
    ] = Field(default_factory=lambda: list(DEFAULT_FILTERS))
    engine: EngineSection = EngineSection()
    sampling: SamplingSection = SamplingSection()
    self_instruct: SelfInstructSection = SelfInstructSection()
    generate: GenerateSection = GenerateSection()
    extend: ExtendSection = ExtendSection()
    sft_data: SftDataSection = SftDataSection()
    train: TrainSection
    collect: CollectSection = CollectSection()
    length_control: LengthControlSection = LengthControlSection()

    @field_validator("filters")
    @classmethod
    def _filters_build(cls, value: list[Any]) -> list[Any]:
        try:
            parse_entries(value)
        except FilterConfigError as error:
            raise ValueError(str(error)) from None
        return value

    @property
    def folder(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.name

    def filter_entries(self) -> list[FilterEntry]:
        return parse_entries(self.filters)

    def sampling_options(self, max_tokens: int | None = None) -> SamplingOptions:
        fields = self.sampling.model_dump()
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        return SamplingOptions(seed=self.seed, early_stop=self.early_stop, speculate=self.speculate, **fields)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


#: What may change between invocations on the same run folder: how many iterations to run, how
#: to serve the models, whether doomed generations are stopped early and attempts speculated
#: (neither changes the kept rows) and how to launch training (e.g. on a different number of GPUs). The
#: training recipe's path may change too (a moved checkout): its content is what is compared,
#: against the copy saved with the run (`loop.check_run_folder`).
_NOT_IDENTITY: dict[str, Any] = {
    "iterations": True,
    "early_stop": True,
    "speculate": True,
    "engine": True,
    "run_dir": True,
    "train": {"recipe", "launcher", "accelerate_config", "accelerate_args"},
}

_PATH_KEYS = (("self_instruct", "seeds"), ("train", "recipe"), ("train", "accelerate_config"))


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}"


Section = TypeVar("Section", bound=ConfigSection)


def flag_name(field: str) -> str:
    """The command-line flag of a config key: `min_words` -> `--min-words`."""
    return "--" + field.replace("_", "-")


def section_from_flags(
    kind: type[Section], values: dict[str, Any], flags: dict[str, str] | None = None
) -> Section:
    """A config section built from a step command's flags (`min_words` comes from
    `--min-words`), so that a step run alone is checked by the same rules as in a run config; a
    problem is one line naming the flag (`flags` names those not spelled like their field)."""
    try:
        return kind.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] != "value_error" and not isinstance(problem["input"], dict | list):
            message += f" (got {problem['input']!r})"
        names = {field: (flags or {}).get(field, flag_name(field)) for field in values}
        for field in sorted(values, key=len, reverse=True):  # coarse_round_to before round_to
            message = message.replace(field, names[field])
        where = f"{names.get(str(problem['loc'][0]), problem['loc'][0])}: " if problem["loc"] else ""
        raise SelflengthenError(f"{where}{message}") from None


def parse_config(data: Any, source: str) -> RunConfig:
    """Validate a mapping read from `source`; a problem is one line naming the key and the file."""
    if not isinstance(data, dict):
        raise SelflengthenError(f"{source}: a run config must be a YAML mapping of keys to values")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise SelflengthenError(f"{source}: {_describe(error.errors()[0])}") from None
    context = config.engine.max_model_len
    for key, max_tokens in (
        ("sampling.max_tokens", config.sampling.max_tokens),
        ("self_instruct.max_tokens", config.self_instruct.max_tokens),
        ("generate.max_tokens", config.generate.max_tokens),
        ("extend.max_tokens", config.extend.max_tokens),
    ):
        if max_tokens is not None and (problem := context_problem(max_tokens, context)):
            raise SelflengthenError(f"{source}: {key}: {problem} (engine.max_model_len)")
    return config


def apply_overrides(data: Any, overrides: list[str], source: str) -> Any:
    """`key.sub=value` settings (values read as YAML) laid over the file's mapping."""
    if not isinstance(data, dict):
        return data
    for override in overrides:
        key, equals, value = override.partition("=")
        if not equals or not key:
            raise SelflengthenError(f"--set {override!r}: expected KEY=VALUE, e.g. engine.concurrency=32")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SelflengthenError(f"--set {override!r}: {part} in {source} is not a mapping")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SelflengthenError(f"--set {override!r}: the value is not valid YAML") from None
    return data


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a run config (with `--set` overrides); relative paths in it are made
    absolute from its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SelflengthenError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SelflengthenError(f"{path}: cannot read it ({error})") from None
    try:
        data = load_yaml(text)
    except DuplicateKeyError as error:
        raise SelflengthenError(f"{path}: {error.problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SelflengthenError(f"{path}: not valid YAML{where}") from None
    data = apply_overrides(data, overrides or [], str(path))
    if isinstance(data, dict):
        for section, key in _PATH_KEYS:
            value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str):
                data[section][key] = (path.parent / value).resolve()
    config = parse_config(data, str(path))
    for section, key in _PATH_KEYS:
        value = getattr(getattr(config, section), key)
        if value is not None and not value.is_file():
            raise SelflengthenError(f"{path}: {section}.{key}: no such file {value}")
    return config


def identity_differences(saved: RunConfig, current: RunConfig) -> list[str]:
    """The keys (dotted) in which two configs describe different runs."""
    left = saved.model_dump(mode="json", exclude=_NOT_IDENTITY)
    right = current.model_dump(mode="json", exclude=_NOT_IDENTITY)
    differences = []
    for section in left:
        if isinstance(left[section], dict):
            differences += [
                f"{section}.{key}" for key in left[section] if left[section][key] != right[section].get(key)
            ]
        elif left[section] != right[section]:
            differences.append(section)
    return differences
