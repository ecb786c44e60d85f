"""Training one role in 2 processes on this CPU (`train --launcher accelerate` with
recipes/accelerate/cpu-ddp.yaml: DDP over gloo) against one process with the same global batch
(2 rows per optimizer step: 1 row in each of 2 processes, or 2 accumulated rows in one), on the
same 8 rows of SFT data: the same number of optimizer steps, a final loss within 5%, and the
role written, merged and renamed into place once. Marked `cluster` (run with `-m cluster`)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from selflengthen.builders.folder import finish_step, step_folder, word_summary
from selflengthen.builders.sft_data import SFT_SCHEMA
from selflengthen.steps import GEN_SFT

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-cpu" / "sft.yaml"
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


def _train(run_dir: Path, recipe: dict, *launch: str) -> dict:
    _sft_rows(run_dir)
    path = run_dir.parent / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert SCRIPT
    command = [SCRIPT, "train", "--run-dir", str(run_dir), "--recipe", str(path), "--role", "generator"]
    command += launch
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "models/iter_1/generator/adapter/train_result.json").read_text())


def test_two_processes_train_a_role_like_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    recipe = yaml.safe_load(RECIPE.read_text()) | {"max_steps": STEPS, "per_device_train_batch_size": 1}
    ddp = ("--launcher", "accelerate", "--accelerate-config", str(CPU_DDP))
    two = _train(tmp_path / "two" / "run", recipe, *ddp)
    one = _train(tmp_path / "one" / "run", recipe | {"gradient_accumulation_steps": 2})
    print(f"final loss: 2 processes {two['training_loss']:.4f}, 1 process {one['training_loss']:.4f}")
    assert two["global_step"] == one["global_step"] == STEPS
    assert len(two["losses"]) == len(one["losses"]) == STEPS  # the loss logged once per step, not per rank
    assert two["training_loss"] == pytest.approx(one["training_loss"], rel=0.05)
    models = tmp_path / "two" / "run" / "models" / "iter_1"
    assert sorted(path.name for path in models.iterdir()) == ["generator"]  # no staging folder left
    role = models / "generator"
    assert (role / "merged" / "config.json").is_file()
    assert (role / "adapter" / "adapter_model.safetensors").is_file()
    log = (role / "train.log").read_text()
    assert log.count("'train_runtime'") == 1, log  # one process reported the run
    # 2 processes of 1 row each: the 4 steps went through all 8 rows (1 process of 1 row: half).
    assert float(re.findall(r"'epoch': '([0-9.]+)'", log)[-1]) == 1.0, log
