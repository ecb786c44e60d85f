"""The Slurm paths, up to the cluster: datatrove writes the job array's pickled pipeline and
sbatch script before it calls `sbatch`, which this machine does not have."""

import os
import shutil
import subprocess
from functools import partial
from pathlib import Path

import dill
import pytest
from datatrove.data import Document

from selflengthen.builders.inference import shard_documents, slurm_executor
from selflengthen.config import load_config
from selflengthen.engine.options import SlurmOptions
from selflengthen.train.roles import Launch

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def collect(data, rank, world_size):  # a stand-in last step; the pipeline's first step is ours
    return data


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real Slurm would get the job")
def test_job_array_script_and_pickled_pipeline(tmp_path: Path) -> None:
    documents = [Document(text=f"instruction {n}", id=f"i1-{n:05d}") for n in range(10)]
    options = SlurmOptions(partition="gpu", tasks=3, gpus_per_task=8, sbatch_args=(("account", "lab"),))
    executor = slurm_executor([partial(shard_documents, documents), collect], options, tmp_path, "initial")
    with pytest.raises(FileNotFoundError):  # datatrove runs `sbatch` after writing the files
        executor.run()
    script = (tmp_path / "logs" / "launch_script.slurm").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus=8",
        "#SBATCH --array=0-2",
        "#SBATCH --account=lab",
        "#SBATCH --job-name=selflengthen-initial",
        "launch_pickled_pipeline",
    ):
        assert line in script
    with (tmp_path / "logs" / "executor.pik").open("rb") as handle:
        pickled = dill.load(handle)
    shards = [[doc.id for doc in pickled.pipeline[0](None, rank, 3)] for rank in range(3)]
    assert sorted(doc for shard in shards for doc in shard) == [doc.id for doc in documents]
    assert shards[1] == ["i1-00001", "i1-00004", "i1-00007"]


def test_slurm_recipe_turns_into_executor_options() -> None:
    config = load_config(RECIPES / "slurm" / "run.yaml")
    options = config.engine.options(config.model)
    assert options.slurm is not None and options.slurm.tasks == 8 and options.slurm.gpus_per_task == 8
    assert config.train.launcher == "srun-accelerate"


def test_srun_accelerate_runs_one_launch_per_node() -> None:
    launch = Launch("srun-accelerate", Path("zero3.yaml"), ("--num_processes", "16"))
    command = launch.command(["--config", "sft yaml", "--output_dir", "out"])
    assert command[:4] == ["srun", "--ntasks-per-node=1", "bash", "-c"]
    script = command[4]
    assert '--machine_rank "$SLURM_NODEID"' in script and "--config_file zero3.yaml" in script
    assert script.endswith("-m selflengthen.train.sft --config 'sft yaml' --output_dir out")
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0  # valid shell
    environment = os.environ | {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "MASTER_ADDR": "node-a"}
    echoed = subprocess.run(
        ["bash", "-c", "set -- ; echo " + script.split(" -m accelerate.commands.launch ", 1)[1]],
        capture_output=True, text=True, env=environment,
    ).stdout  # fmt: skip
    assert "--num_machines 2 --machine_rank 1 --main_process_ip node-a --main_process_port 29500" in echoed
    assert Launch().command(["--x"])[1:] == ["-m", "selflengthen.train.sft", "--x"]
