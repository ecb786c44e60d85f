"""Preflight: what a run's later steps need is checked before its first request, and each
problem is one line naming the key, file or package."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from selflengthen.config import TrainSection, flag_name
from selflengthen.config_engine import EngineSection, SlurmSection
from selflengthen.engine.models import resolve_model
from selflengthen.errors import SelflengthenError
from selflengthen.train.preflight import check_disk, check_engine, check_training, model_bytes

DEEPSPEED_INSTALLED = importlib.util.find_spec("deepspeed") is not None
BITSANDBYTES_INSTALLED = importlib.util.find_spec("bitsandbytes") is not None


def _train(
    tmp_path: Path, accelerate: str | None, *arguments: str, launcher: str = "accelerate"
) -> TrainSection:
    config = None
    if accelerate is not None:
        config = tmp_path / "accelerate.yaml"
        config.write_text(accelerate)
    return TrainSection(
        recipe=tmp_path / "sft.yaml",
        launcher=launcher,
        accelerate_config=config,
        accelerate_args=list(arguments),
    )


def test_a_deepspeed_config_without_deepspeed_is_named(tmp_path: Path) -> None:
    train = _train(tmp_path, "distributed_type: DEEPSPEED\nuse_cpu: true\n")
    if DEEPSPEED_INSTALLED:
        check_training(train, {}, gpus=0)
        return
    message = r"accelerate.yaml \(DeepSpeed\) needs deepspeed, which is not installed: pip install deepspeed$"
    with pytest.raises(SelflengthenError, match=r"^train.accelerate_config: .*" + message):
        check_training(train, {}, gpus=0)


def test_the_shipped_zero3_config_needs_deepspeed_exactly_when_it_is_missing(tmp_path: Path) -> None:
    zero3 = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "zero3.yaml"
    train = TrainSection(recipe=tmp_path / "sft.yaml", launcher="srun-accelerate", accelerate_config=zero3)
    if DEEPSPEED_INSTALLED:
        check_training(train, {}, gpus=0)  # srun: the nodes' GPUs are not this machine's
    else:
        with pytest.raises(SelflengthenError, match="needs deepspeed"):
            check_training(train, {}, gpus=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "No such file or directory"),
        ("distributed_type: [unclosed", "not a YAML accelerate config"),
        ("- a list\n", "not a mapping of accelerate settings"),
    ],
)
def test_a_broken_accelerate_config_is_named(tmp_path: Path, text: str | None, message: str) -> None:
    train = _train(tmp_path, text if text is not None else "")
    if text is None:
        train.accelerate_config.unlink()  # type: ignore[union-attr]
    with pytest.raises(SelflengthenError, match=rf"^train.accelerate_config: .*accelerate.yaml: {message}"):
        check_training(train, {}, gpus=0)


def test_more_training_processes_than_gpus_is_refused_with_the_flag_named(tmp_path: Path) -> None:
    train = _train(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 2\n", "--num_processes", "8")
    with pytest.raises(SelflengthenError, match=r"^train.accelerate_args: 8 training processes .* 4 GPU"):
        check_training(train, {}, gpus=4)
    flags = {"accelerate_args": "--accelerate-arg"}
    with pytest.raises(SelflengthenError, match=r"^--accelerate-arg: 8 training processes"):
        check_training(train, {}, 4, lambda key: flags.get(key, flag_name(key)))
    check_training(train, {}, gpus=8)
    check_training(_train(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 2\n"), {}, gpus=2)
    on_cpu = _train(tmp_path, "distributed_type: MULTI_GPU\nuse_cpu: true\n", "--num_processes=8")
    check_training(on_cpu, {}, gpus=0)  # CPU processes need no GPU
    with pytest.raises(SelflengthenError, match="--num_processes: not a number: 'many'"):
        check_training(_train(tmp_path, "distributed_type: MULTI_GPU\n", "--num_processes=many"), {}, gpus=8)


@pytest.mark.parametrize("key", ["load_in_4bit", "load_in_8bit"])
def test_a_quantizing_recipe_without_bitsandbytes_is_named(tmp_path: Path, key: str) -> None:
    train = _train(tmp_path, None, launcher="python")
    check_training(train, {key: False}, gpus=1)
    if BITSANDBYTES_INSTALLED:
        check_training(train, {key: True}, gpus=1)
        return
    with pytest.raises(SelflengthenError, match=rf"^.*sft.yaml: {key} needs bitsandbytes"):
        check_training(train, {key: True}, gpus=1)


def test_vllm_parallelism_needs_that_many_gpus() -> None:
    with pytest.raises(SelflengthenError, match=r"^engine.tensor_parallel_size × engine.data_parallel_size: "
                       r"2 × 4 = 8 GPUs per server, but 4 are visible$"):  # fmt: skip
        check_engine(EngineSection(tensor_parallel_size=2, data_parallel_size=4), gpus=4)
    check_engine(EngineSection(tensor_parallel_size=2, data_parallel_size=4), gpus=8)
    check_engine(EngineSection(), gpus=0)  # one CPU server
    slurm = SlurmSection(partition="gpu", gpus_per_task=8)
    check_engine(EngineSection(tensor_parallel_size=8, slurm=slurm), gpus=0)  # the job has its own


def test_disk_room_for_the_merged_models(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_disk(tmp_path / "not" / "yet" / "made", free // 2, "two merged models")
    with pytest.raises(
        SelflengthenError, match=r"^run_dir: .*made: [\d.]+ GiB free, but two merged models need"
    ):
        check_disk(tmp_path / "not" / "yet" / "made", free + 2**40, "two merged models")
    assert not (tmp_path / "not").exists()


def test_the_model_size_is_its_weight_files() -> None:
    model = resolve_model("smollm2-135m")
    size = model_bytes(model)
    weights = sum(path.stat().st_size for path in Path(model.source).glob("*.safetensors"))
    assert size == weights and size > 100 * 2**20
