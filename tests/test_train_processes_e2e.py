"""Training in more than one process on this CPU, for real (DDP over gloo, 2 processes):

- a role trained by `train --launcher accelerate` with recipes/accelerate/cpu-ddp.yaml, and by
  `train --launcher srun-accelerate` in a Slurm job of 2 "nodes" on this machine
  (`tests/slurm_cluster.py`), against one process with the same global batch (2 rows per
  optimizer step: 1 row in each of 2 processes, or 2 accumulated rows in one), on the same 8
  rows: the same optimizer steps over the same rows, a final loss within 5%, and the role
  written, merged and renamed into place once;
- one rank killed in the middle: one line naming it, nothing left running, the rerun trains;
- the loop (`selflengthen run`, the CPU recipe) training both roles in 2 processes, iteration 2
  serving and continuing iteration 1's adapters.

The first comparison (2 processes on one machine, about 45 s) is in the default test run; the
others are marked `cluster` (run with `-m cluster`; Slurm needs root and Debian's `slurm-wlm`
and `munge`).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from selflengthen.builders.folder import finish_step, step_folder, word_summary
from selflengthen.builders.sft_data import SFT_SCHEMA
from selflengthen.steps import GEN_SFT
from tests.slurm_cluster import local_slurm

pytestmark = [pytest.mark.e2e]

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-cpu" / "sft.yaml"
RUN_RECIPE = ROOT / "recipes" / "smollm2-cpu" / "run.yaml"
CPU_DDP = ROOT / "recipes" / "accelerate" / "cpu-ddp.yaml"
TEXTS = Path(__file__).resolve().parent / "data" / "relevance_pairs.jsonl"
STEPS = 4


def _sft_rows(run_dir: Path) -> None:
    """8 Generator rows (instruction -> a human-written text, cut to its first 150 words)."""
    pairs = [json.loads(line) for line in TEXTS.read_text().splitlines()]
    rows = []
    for index in range(8):
        pair = pairs[index % len(pairs)]
        words = pair["text"].split()[20 * (index // len(pairs)) :][:150]
        messages = [
            {"role": "user", "content": pair["instruction"]},
            {"role": "assistant", "content": " ".join(words)},
        ]
        rows.append({"id": f"r{index}", "iteration": 1, "messages": messages})
    frame = pl.DataFrame(rows, schema=SFT_SCHEMA)
    stats = {"step": "build-sft", "iteration": 1, "rows_out": frame.height, "words": word_summary([150] * 8)}
    finish_step(step_folder(run_dir, 1, GEN_SFT), frame, stats)


def _train(
    run_dir: Path, recipe: dict, *launch: str, environment: dict[str, str] | None = None, inside: tuple = ()
) -> dict:
    """`selflengthen train` of the Generator on the 8 rows (`inside`: a command it runs under)."""
    _sft_rows(run_dir)
    path = run_dir.parent / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert SCRIPT
    command = [
        *inside,
        SCRIPT,
        "train",
        "--run-dir",
        str(run_dir),
        "--recipe",
        str(path),
        "--role",
        "generator",
    ]
    command += launch
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "models/iter_1/generator/adapter/train_result.json").read_text())


def _assert_trained_once(run_dir: Path) -> str:
    """The role is in place once (no staging folder left), merged, with its adapter; its log."""
    models = run_dir / "models" / "iter_1"
    assert sorted(path.name for path in models.iterdir()) == ["generator"]
    role = models / "generator"
    assert (role / "merged" / "config.json").is_file()
    assert (role / "adapter" / "adapter_model.safetensors").is_file()
    log = (role / "train.log").read_text()
    # 2 processes of 1 row each: the 4 steps went through all 8 rows (1 process of 1 row: half).
    assert float(re.findall(r"'epoch': '([0-9.]+)'", log)[-1]) == 1.0, log
    return log


def _assert_like_one_process(result: dict, one: dict) -> None:
    assert result["global_step"] == one["global_step"] == STEPS
    assert len(result["losses"]) == len(one["losses"]) == STEPS  # the loss logged once per step, not per rank
    assert result["training_loss"] == pytest.approx(one["training_loss"], rel=0.05)
    assert result["num_tokens"] == one["num_tokens"] > 0  # tokens of both ranks counted, once
    assert len(result["step_seconds"]) == STEPS


BASE_RECIPE = yaml.safe_load(RECIPE.read_text()) | {"max_steps": STEPS, "per_device_train_batch_size": 1}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The single-process baseline: 2 accumulated rows per optimizer step."""
    return _train(tmp_path_factory.mktemp("one") / "run", BASE_RECIPE | {"gradient_accumulation_steps": 2})


def test_two_processes_train_a_role_like_one_process_with_the_same_global_batch(
    tmp_path: Path, one_process: dict
) -> None:
    two = _train(
        tmp_path / "run", BASE_RECIPE, "--launcher", "accelerate", "--accelerate-config", str(CPU_DDP)
    )
    print(f"final loss: 2 processes {two['training_loss']:.4f}, 1 process {one_process['training_loss']:.4f}")
    _assert_like_one_process(two, one_process)
    log = _assert_trained_once(tmp_path / "run")
    assert log.count("'train_runtime'") == 1, log  # one process reported the run


@pytest.mark.cluster
def test_two_slurm_nodes_train_a_role_like_one_process(tmp_path: Path, one_process: dict) -> None:
    """`srun-accelerate` in a job of 2 nodes: one `accelerate launch` per node, machine rank and
    node count from Slurm's variables, the main address 127.0.0.1 (`MASTER_ADDR`)."""
    with local_slurm(tmp_path / "slurm", nodes=2) as environment:
        result = _train(
            tmp_path / "run",
            BASE_RECIPE,
            "--launcher", "srun-accelerate", "--accelerate-config", str(CPU_DDP),
            environment=environment,
            inside=("salloc", "--nodes", "2", "--quiet"),
        )  # fmt: skip
    print(f"final loss: 2 nodes {result['training_loss']:.4f}, 1 process {one_process['training_loss']:.4f}")
    _assert_like_one_process(result, one_process)
    log = _assert_trained_once(tmp_path / "run")
    assert log.count("'train_runtime'") == 2, log  # each node's main process reported its part


def _rank_processes(run_dir: Path) -> dict[int, int]:
    """pid of each training process of `run_dir`'s launch, by global rank."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode()
            environment = (proc / "environ").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if "selflengthen.train.sft" in command and str(run_dir) in command:
            rank = [item.partition("=")[2] for item in environment if item.startswith("RANK=")]
            if rank:
                ranks[int(rank[0])] = int(proc.name)
    return ranks


@pytest.mark.cluster
def test_a_killed_rank_fails_the_role_with_one_line_naming_it_and_the_rerun_trains_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _sft_rows(run_dir)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(RECIPE.read_text()) | {"max_steps": 12}))
    assert SCRIPT
    command = [SCRIPT, "train", "--run-dir", str(run_dir), "--recipe", str(path), "--role", "generator"]
    command += ["--launcher", "accelerate", "--accelerate-config", str(CPU_DDP)]
    log = run_dir / "models/iter_1/.generator.partial/train.log"
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (log.is_file() and "'loss'" in log.read_text()):  # a step has been taken
        assert launch.poll() is None and time.monotonic() < deadline, "no step before the deadline"
        time.sleep(0.5)
    ranks = _rank_processes(run_dir)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = launch.communicate(timeout=120)
    assert launch.returncode != 0
    assert stderr.splitlines()[-1] == (
        "selflengthen: error: training the generator of iteration 1 failed (rank 1 (local rank 1 on "
        f"localhost) was killed by SIGKILL); see {log} and the output above"
    )
    assert _rank_processes(run_dir) == {}  # rank 0 and the launcher are gone too
    assert "ChildFailedError" in log.read_text()  # the launcher's report is in the log
    assert not (run_dir / "models/iter_1/generator").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads((run_dir / "models/iter_1/generator/adapter/train_result.json").read_text())
    assert result["global_step"] == 12
    assert sorted(path.name for path in (run_dir / "models/iter_1").iterdir()) == ["generator"]


@pytest.mark.cluster
def test_the_loop_trains_both_roles_in_two_processes_and_serves_them_in_the_next_iteration(
    tmp_path: Path,
) -> None:
    """`selflengthen run` of the CPU recipe with `train.launcher: accelerate` and cpu-ddp.yaml."""
    run_dir = tmp_path / "run"
    assert SCRIPT
    command = [SCRIPT, "run", "--config", str(RUN_RECIPE), "--set", f"run_dir={run_dir}"]
    command += ["--set", "train.launcher=accelerate", "--set", f"train.accelerate_config={CPU_DDP}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    for iteration in (1, 2):
        models = run_dir / "models" / f"iter_{iteration}"
        assert sorted(path.name for path in models.iterdir()) == ["extender", "generator"]
        for role in ("generator", "extender"):
            trained = json.loads((models / role / "adapter" / "train_result.json").read_text())
            previous = None if iteration == 1 else str(run_dir / "models" / "iter_1" / role / "adapter")
            assert trained["continued_from"] == previous
            assert trained["global_step"] == 3
            log = (models / role / "train.log").read_text()
            assert log.count("'train_runtime'") == 1, log
            # 2 processes of 1 row each: 2 rows per step (1 process: 1).
            epochs = trained["global_step"] / -(-trained["rows"] // 2)
            assert float(re.findall(r"'epoch': '([0-9.]+)'", log)[-1]) == pytest.approx(epochs, abs=0.01), log
    for step, role in (("initial", "generator"), ("extended", "extender")):
        served = pl.read_parquet(run_dir / "iter_2" / step / "data").get_column("model").unique().to_list()
        assert served == [str(run_dir / "models" / "iter_1" / role / "merged")]
