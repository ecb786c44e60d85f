"""Which models `selflengthen eval` evaluates, and with which judge, from its arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from selflengthen.engine.models import ResolvedModel, resolve_model
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.errors import SelflengthenError
from selflengthen.eval.run import Contender, Judge, check_label
from selflengthen.run_folder import RunFolder
from selflengthen.train.roles import trained_role


def _label_for(spec: str) -> str:
    return Path(spec).name if Path(spec).exists() else spec.replace("/", "--")


def run_generators(run_dir: Path) -> list[Contender]:
    """A run's base model (`base`) and the Generator trained in each finished iteration k
    (`iter-k`, the model that iteration k + 1 uses)."""
    run = RunFolder.open(run_dir)
    contenders = [Contender("base", resolve_model(run.config.model, prepare=False))]
    for iteration in range(1, run.config.iterations + 1):
        role = trained_role(run.root, iteration, "generator")
        if role.finished():
            contenders.append(Contender(f"iter-{iteration}", resolve_model(str(role.merged))))
    if len(contenders) == 1:
        raise SelflengthenError(f"--compare {run_dir}: no iteration has a trained Generator yet")
    return contenders


def contenders_for(
    specs: list[str], default: ResolvedModel, compare: Path | None, has_other_sources: bool
) -> list[Contender]:
    """`LABEL=SPEC` or `SPEC` for each positional model; without any (and without --compare or
    --responses), the --model option."""
    contenders = []
    for spec in specs:
        label, _, model = spec.rpartition("=")
        model_spec = model or spec
        resolved = default if default.kind == "endpoint" else resolve_model(model_spec, prepare=False)
        contenders.append(Contender(check_label(label or _label_for(model_spec)), resolved))
    if compare is not None:
        contenders += run_generators(compare)
    if not contenders and not has_other_sources:
        contenders.append(Contender(check_label(_label_for(default.spec)), default))
    return contenders


def judge_for(
    spec: str | None,
    served_name: str,
    api_key_env: str | None,
    retries: int,
    max_tokens: int,
    engine: EngineOptions,
    sampling: SamplingOptions,
) -> Judge | None:
    """A judge we serve (a model spec) or one at an OpenAI-compatible URL; replies of at most
    `max_tokens`, sampled like the answers (so that a retry, with its own seed, can differ)."""
    if spec is None:
        return None
    judge_sampling = dataclasses.replace(sampling, max_tokens=max_tokens)
    if spec.startswith(("http://", "https://")):
        endpoint = EngineOptions(
            model=served_name, endpoint=spec, api_key_env=api_key_env, concurrency=engine.concurrency
        )
        return Judge(ResolvedModel(served_name, served_name, "endpoint"), endpoint, judge_sampling, retries)
    return Judge(
        resolve_model(spec, prepare=False),
        dataclasses.replace(engine, endpoint=None),
        judge_sampling,
        retries,
    )
