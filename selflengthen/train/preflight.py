"""Everything a run will need hours from now, checked before its first request.

A run generates for hours before it first trains, so a missing DeepSpeed, a broken accelerate
config, a quantizing recipe without bitsandbytes, more GPUs asked for than there are, or a disk
too small for the merged models would otherwise fail only after that work. Each problem is one
line that names the key, file or package and says how to fix it.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from selflengthen.config import RunConfig, TrainSection
from selflengthen.config_engine import EngineSection
from selflengthen.engine.models import ResolvedModel, resolve_model
from selflengthen.errors import SelflengthenError
from selflengthen.strict_yaml import DuplicateKeyError, load_yaml

#: accelerate's distributed types that run one process per GPU.
_GPU_DISTRIBUTED_TYPES = {"MULTI_GPU", "DEEPSPEED", "FSDP"}
#: Weight files whose sizes estimate a merged model's size on disk.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
#: Room left beside the merged models (tokenizer files, adapters, logs, the next step's data).
_DISK_MARGIN = 1.1


def visible_gpus() -> int:
    """How many CUDA devices this process sees (after CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_package(package: str, needed_by: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise SelflengthenError(f"{needed_by} needs {package}, which is not installed: pip install {package}")


#: How a problem names a `train` setting: the run config's key (`train.accelerate_config`) or
#: the step command's flag (`--accelerate-config`).
Namer = Callable[[str], str]


def config_key(field: str) -> str:
    return f"train.{field}"


def accelerate_settings(train: TrainSection, name: Namer = config_key) -> dict[str, Any]:
    """The accelerate config file as a mapping ({} when the section names none)."""
    path = train.accelerate_config
    if path is None:
        return {}
    key = name("accelerate_config")
    try:
        settings = load_yaml(Path(path).read_text(encoding="utf-8"))
    except DuplicateKeyError as error:
        raise SelflengthenError(f"{key}: {path}: {error.problem}") from None
    except OSError as error:
        raise SelflengthenError(f"{key}: {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise SelflengthenError(
            f"{key}: {path}: not a YAML accelerate config ({type(error).__name__})"
        ) from None
    if not isinstance(settings, dict):
        raise SelflengthenError(f"{key}: {path}: not a mapping of accelerate settings")
    return settings


def launch_processes(train: TrainSection, settings: dict[str, Any], name: Namer = config_key) -> int:
    """`--num_processes` of `train.accelerate_args` (the last one wins, as in argparse), else
    the config file's `num_processes`, else 1."""
    count: object = settings.get("num_processes", 1)
    arguments = train.accelerate_args
    for index, argument in enumerate(arguments):
        if argument == "--num_processes" and index + 1 < len(arguments):
            count = arguments[index + 1]
        elif argument.startswith("--num_processes="):
            count = argument.split("=", 1)[1]
    try:
        return int(str(count))
    except ValueError:
        raise SelflengthenError(
            f"{name('accelerate_args')}: --num_processes: not a number: {count!r}"
        ) from None


def check_training(train: TrainSection, recipe: dict[str, Any], gpus: int, name: Namer = config_key) -> None:
    """The launcher, its config, the packages the recipe and config need, and processes vs GPUs."""
    if recipe.get("load_in_4bit") or recipe.get("load_in_8bit"):
        key = "load_in_4bit" if recipe.get("load_in_4bit") else "load_in_8bit"
        require_package("bitsandbytes", f"{train.recipe}: {key}")
    if train.launcher == "python":
        return
    require_package("accelerate", f"{name('launcher')}: {train.launcher}")
    settings = accelerate_settings(train, name)
    distributed = str(settings.get("distributed_type", "NO")).upper()
    if distributed == "DEEPSPEED" or "deepspeed_config" in settings:
        require_package("deepspeed", f"{name('accelerate_config')}: {train.accelerate_config} (DeepSpeed)")
    processes = launch_processes(train, settings, name)
    on_cpu = settings.get("use_cpu") is True or recipe.get("use_cpu") is True
    local_gpus = train.launcher == "accelerate" and distributed in _GPU_DISTRIBUTED_TYPES and not on_cpu
    if local_gpus and processes > gpus:
        raise SelflengthenError(
            f"{name('accelerate_args')}: {processes} training processes (num_processes, "
            f"{distributed}), but {gpus} GPU(s) are visible; lower --num_processes or check "
            "CUDA_VISIBLE_DEVICES"
        )


def check_engine(engine: EngineSection, gpus: int) -> None:
    """A local vLLM server needs tensor_parallel_size × data_parallel_size GPUs (Slurm and Ray
    tasks get their own: not checked here)."""
    wanted = engine.tensor_parallel_size * engine.data_parallel_size
    if not engine.on_cluster and wanted > 1 and wanted > gpus:
        raise SelflengthenError(
            f"engine.tensor_parallel_size × engine.data_parallel_size: {engine.tensor_parallel_size} × "
            f"{engine.data_parallel_size} = {wanted} GPUs per server, but {gpus} are visible"
        )


def model_bytes(model: ResolvedModel) -> int | None:
    """The size of the model's weight files, or None when they are not on this machine."""
    folder = Path(model.source)
    if model.kind == "hub":
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(model.source, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.suffix in _WEIGHT_SUFFIXES)


def check_disk(folder: Path, needed: int, what: str) -> None:
    """`needed` bytes must be free where `folder` is (or would be created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise SelflengthenError(
            f"run_dir: {folder}: {free / 2**30:.1f} GiB free, but {what} need about "
            f"{needed / 2**30:.1f} GiB; free some space or choose another run_dir"
        )


def preflight(config: RunConfig, recipe: dict[str, Any]) -> None:
    """Every check of what the run's later steps need (see the module docstring); `recipe` is
    the training recipe's settings, as `check_recipe` read them."""
    gpus = visible_gpus()
    check_engine(config.engine, gpus)
    check_training(config.train, recipe, gpus)
    size = model_bytes(resolve_model(config.model, prepare=False))
    if size:
        # Each iteration writes a merged Generator and Extender, in the base model's dtype.
        check_disk(config.folder, int(2 * size * _DISK_MARGIN), "one iteration's two merged models")
