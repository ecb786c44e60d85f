"""Generation on a cluster gives the same step output as on this machine: through a real
single-node Slurm cluster (`tests/slurm_cluster.py`) and a real Ray runtime, both on 127.0.0.1,
each step split into 2 tasks that each serve the model themselves.

Not in the default test run (~5 minutes on 2 cores; Slurm needs root and Debian's `slurm-wlm`
and `munge`): `sudo apt-get install slurm-wlm munge`, then `.venv/bin/python -m pytest -m cluster`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from selflengthen.builders.generate import GenerateSettings, run_generate
from selflengthen.config import GenerateSection
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions, RayOptions, SamplingOptions, SlurmOptions
from selflengthen.engine.shared_server import free_port
from tests.slurm_cluster import PARTITION, local_slurm, missing_binaries

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

INSTRUCTIONS = pl.DataFrame(
    {
        "id": ["c-0", "c-1", "c-2"],
        "instruction": [
            "Write a short essay about why lighthouses were painted in stripes.",
            "Describe a walk through a market in the early morning.",
            "Explain how bread rises, for a curious child.",
        ],
    }
)


def _generate(
    run_dir: Path, slurm: SlurmOptions | None = None, ray: RayOptions | None = None
) -> pl.DataFrame:
    model = resolve_model("smollm2-135m")
    # float32: the same seed gives the same text however the requests are batched.
    engine = EngineOptions(
        model=model.spec, max_model_len=2048, vllm_args=("--dtype", "float32"), slurm=slurm, ray=ray
    )
    sampling = SamplingOptions(max_tokens=1000, seed=0)
    run_generate(
        run_dir,
        1,
        INSTRUCTIONS,
        engine,
        model,
        GenerateSettings(GenerateSection(samples_per_instruction=1, max_retries=2), sampling),
    )
    return pl.read_parquet(run_dir / "iter_1" / "initial" / "data").sort("id")


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    rows = _generate(tmp_path_factory.mktemp("local"))
    assert rows.height > 0
    return rows


def _completed_tasks(run_dir: Path) -> list[str]:
    return sorted(
        path.name for path in (run_dir / "iter_1" / "initial" / "_work" / "logs" / "completions").iterdir()
    )


def test_generate_through_slurm_equals_the_local_run(local_rows: pl.DataFrame, tmp_path: Path) -> None:
    if missing := missing_binaries():
        pytest.fail(f"needs Slurm and munge ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    options = SlurmOptions(
        partition=PARTITION, tasks=2, gpus_per_task=0, cpus_per_task=1, mem_per_cpu_gb=9, poll_seconds=2
    )
    with local_slurm(tmp_path / "cluster") as environment, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", environment["SLURM_CONF"])
        rows = _generate(tmp_path / "run", slurm=options)
    assert _completed_tasks(tmp_path / "run") == ["00000", "00001"]
    assert (
        "#SBATCH --array=0-1" in (tmp_path / "run/iter_1/initial/_work/logs/launch_script.slurm").read_text()
    )
    assert rows.equals(local_rows), "the Slurm job's rows differ from the local run's"


@pytest.fixture
def ray_head(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray head node on 127.0.0.1, in its own process group and temp folder (a short path:
    Ray's socket paths must fit 107 bytes); the group is killed afterwards. Token
    authentication is off for this private test cluster, in the head and in this process
    (otherwise a token left in ~/.ray by an earlier Ray would decide)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp = Path(tempfile.mkdtemp(prefix="sl-ray-"))
    port = free_port("127.0.0.1")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false", "--num-cpus=2",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_generate_through_ray_equals_the_local_run(
    local_rows: pl.DataFrame, ray_head: str, tmp_path: Path
) -> None:
    options = RayOptions(address=ray_head, tasks=2, gpus_per_task=0, cpus_per_task=1, mem_per_cpu_gb=4)
    rows = _generate(tmp_path / "run", ray=options)
    assert _completed_tasks(tmp_path / "run") == ["00000", "00001"]
    assert rows.equals(local_rows), "the Ray tasks' rows differ from the local run's"
