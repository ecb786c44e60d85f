"""Train one role (Generator or Extender) of a macro-iteration and merge it for serving.

`runs/<name>/models/iter_<k>/<role>/` holds `adapter/` (the LoRA adapter, with
`train_result.json`) and `merged/` (base + adapter, with the base's tokenizer and chat template,
which vLLM serves as the role in iteration k + 1). Iteration k > 1 continues from iteration
k - 1's adapter, on iteration k's rows or (`train.rows: all`) on those of iterations 1..k, which
are written into one table beside the adapter (`train_data/`). Everything is written into
`.<role>.partial/` and renamed into place at the end, so the role folder exists only when
complete; a killed training starts again from scratch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from selflengthen.builders.folder import StepFolder
from selflengthen.engine.launch import die_with_parent, on_gpu
from selflengthen.engine.precision import cpu_flags, cpu_kind, training_bf16
from selflengthen.errors import SelflengthenError
from selflengthen.steps import EXT_SFT, GEN_SFT
from selflengthen.tables import write_table
from selflengthen.train.failures import failed_process, run_teeing_stderr

ROLES = ("generator", "extender")
#: The SFT dataset each role learns from.
ROLE_DATASETS = {"generator": GEN_SFT, "extender": EXT_SFT}


@dataclass(frozen=True)
class TrainedRole:
    folder: Path

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @property
    def merged(self) -> Path:
        return self.folder / "merged"

    def finished(self) -> bool:
        return self.folder.is_dir()

    def result(self) -> dict[str, Any]:
        return json.loads((self.adapter / "train_result.json").read_text())


def trained_role(run_dir: Path, iteration: int, role: str) -> TrainedRole:
    return TrainedRole(run_dir / "models" / f"iter_{iteration}" / role)


#: On each node of a Slurm allocation: accelerate's multi-node flags from Slurm's variables (the
#: first node is the main process).
_SLURM_NODE_FLAGS = (
    '--num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" '
    '--main_process_ip "${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}" '
    '--main_process_port "${MASTER_PORT:-29500}"'
)


@dataclass(frozen=True)
class Launch:
    """How the SFT process is started: plain Python, `accelerate launch` (the GPUs of this
    machine), or `srun-accelerate` (one `accelerate launch` per node of a Slurm allocation)."""

    launcher: str = "python"
    accelerate_config: Path | None = None
    accelerate_args: tuple[str, ...] = ()
    trust_remote_code: bool = False
    verbose: bool = False

    def command(self, arguments: list[str]) -> list[str]:
        script = ["-m", "selflengthen.train.sft", *arguments]
        if self.launcher == "python":
            return [sys.executable, *script]
        config = ["--config_file", str(self.accelerate_config)] if self.accelerate_config else []
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", *config, *self.accelerate_args]
        if self.launcher == "accelerate":
            return accelerate + script
        on_each_node = f"{shlex.join(accelerate)} {_SLURM_NODE_FLAGS} {shlex.join(script)}"
        return ["srun", "--ntasks-per-node=1", "bash", "-c", on_each_node]


def trained_iterations(iteration: int, rows: str) -> list[int]:
    """The iterations whose kept rows iteration `iteration` trains on (`train.rows`)."""
    return list(range(1, iteration + 1)) if rows == "all" else [iteration]


def joined_training_data(run_dir: Path, iteration: int, role: str, rows: str, output: Path) -> Path:
    """The folder of the role's training rows (the trainer reads one dataset): its SFT data of
    `iteration`, or those of every iteration `rows` names written together, oldest first, into
    `output`."""
    dataset = ROLE_DATASETS[role]
    folders = [run_dir / f"iter_{k}" / dataset / "data" for k in trained_iterations(iteration, rows)]
    for folder in folders:
        if not folder.is_dir():
            raise SelflengthenError(f"{folder}: no SFT data for the {role} (run build-sft first)")
    if len(folders) == 1:
        return folders[0]
    frame = pl.concat([StepFolder(folder.parent).read() for folder in folders], how="vertical")
    output.mkdir(parents=True, exist_ok=True)
    write_table(frame, output / "part-00000.parquet", overwrite=True)
    return output


def train_role(
    run_dir: Path,
    iteration: int,
    role: str,
    base_model: str,
    recipe: Path,
    launch: Launch,
    rows: str = "new",
) -> dict[str, Any]:
    """Train `role` on its SFT rows of `iteration` (`rows: new`) or of iterations 1..k (`rows:
    all`), or return the finished result."""
    target = trained_role(run_dir, iteration, role)
    if target.finished():
        return target.result()
    staging = TrainedRole(target.folder.with_name(f".{role}.partial"))
    shutil.rmtree(staging.folder, ignore_errors=True)
    staging.folder.mkdir(parents=True)
    dataset = joined_training_data(run_dir, iteration, role, rows, staging.folder / "train_data")
    effective = staging.folder / "recipe.yaml"
    settings, added = effective_recipe(recipe)
    if added:
        chosen = ", ".join(f"{key}: {str(value).lower()}" for key, value in added.items())
        why = f" ({cpu_kind(cpu_flags())} CPU)" if "bf16" in added and not on_gpu() else ""
        print(
            f"train {role}: {recipe.name} does not set {', '.join(added)}; using {chosen}{why}",
            file=sys.stderr,
        )
    effective.write_text(yaml.safe_dump(settings, sort_keys=False))
    arguments = [
        "--config", str(effective),
        "--model_name_or_path", base_model,
        "--dataset_name", str(dataset),
        "--output_dir", str(staging.adapter),
    ]  # fmt: skip
    if iteration > 1:
        previous = trained_role(run_dir, iteration - 1, role)
        if not previous.finished():
            raise SelflengthenError(f"{previous.folder}: iteration {iteration - 1}'s {role} is not trained")
        arguments += ["--previous_adapter", str(previous.adapter)]
    if launch.trust_remote_code:
        arguments.append("--trust_remote_code")
    log = staging.folder / "train.log"
    environment = os.environ | ({} if launch.verbose else {"TRANSFORMERS_VERBOSITY": "error"})
    started = time.monotonic()
    print(f"train {role} (iter {iteration}): log in {log}", file=sys.stderr, flush=True)
    with log.open("w") as stream:
        # stderr goes on to the terminal (it carries the trainer's progress bar) and into the log.
        # The trainer dies with us (a killed run must not leave it writing into the staging folder).
        exit_code, stderr_tail = run_teeing_stderr(
            launch.command(arguments), stream.fileno(), env=environment, preexec_fn=die_with_parent
        )
    if exit_code != 0:
        failed = failed_process(stderr_tail)
        raise SelflengthenError(
            f"training the {role} of iteration {iteration} failed ({failed or f'exit {exit_code}'}); "
            f"see {log} and the output above"
        )
    merge_adapter(base_model, staging.adapter, staging.merged, launch.trust_remote_code)
    result = staging.result() | {
        "seconds": round(time.monotonic() - started, 1),
        "trained_on_iterations": trained_iterations(iteration, rows),
    }
    (staging.adapter / "train_result.json").write_text(json.dumps(result, indent=2))
    staging.folder.rename(target.folder)
    return result


def effective_recipe(recipe: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings the trainer gets (saved as the role's `recipe.yaml`), and which of them were
    added: the recipe as written, plus the device keys it leaves out: `bf16` (autocast) on a GPU
    and on a CPU that computes bf16 in hardware, not on one where it is emulated
    (`training_bf16`); `use_cpu` without a GPU. Nothing else is filled in: the recipe a user
    reads is the one that runs."""
    settings = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    gpu = on_gpu()
    device = {"bf16": training_bf16(gpu), "use_cpu": not gpu}
    added = {key: value for key, value in device.items() if key not in settings}
    return settings | added, added


def merge_adapter(base_model: str, adapter: Path, output: Path, trust_remote_code: bool = False) -> None:
    """Save base + adapter as one model (in the base's dtype) with the base's tokenizer files.

    The merge is done in float32 so that small LoRA updates are not rounded away before the
    final cast."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code).dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.to(dtype).save_pretrained(output, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code).save_pretrained(output)
