"""Shared test settings: hypothesis profiles sized for CI's two cores, and the reference run."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.e2e_runs import ReferenceRun, kill_leftover_runs, make_reference_run, make_steps_run

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceRun]:
    """The README's main job, served in float32, disturbed four times in iteration 1 and then
    finished; made once and shared by the e2e modules that read a finished run (see
    tests/e2e_runs.py)."""
    try:
        yield make_reference_run(tmp_path_factory.mktemp("reference") / "run")
    finally:
        kill_leftover_runs()


@pytest.fixture(scope="session")
def steps_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Iteration 1 of the reference run made by the step commands alone, undisturbed, early stop
    off (see tests/e2e_runs.py); compared with the reference run by the generation and
    reliability e2e modules."""
    return make_steps_run(tmp_path_factory.mktemp("steps") / "run")
