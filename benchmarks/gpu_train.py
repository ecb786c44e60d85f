"""LoRA SFT speed of the paper's recipe on a GPU: tokens/s, peak GPU memory and MFU per sequence
length, through the entry point the loop runs (`python -m selflengthen.train.sft`).

No weights can travel to a GPU machine without a package registry, so the model is built here
with random weights from Qwen2-7B-Instruct's published configuration (`QWEN2_7B_INSTRUCT`;
speed does not depend on the weights' values) and saved once; the tokenizer is the embedded
model's (only the token ids' count matters). For each length L, `--steps` rows of at least L
tokens are trained one row per optimizer step (the recipe's `max_length` set to L cuts them to
exactly L), with the recipe as written otherwise (`recipes/qwen2/sft.yaml`: bf16, LoRA r 8 on
all linear layers, gradient checkpointing; `--trainer-arg` changes one key). The first
`--warmup` steps are not timed.

MFU counts the FLOPs LoRA training needs, without gradient checkpointing's recomputation: per
token 4 × the matrix weights (forward, and the gradient of each layer's input; the frozen
weights get no gradient) plus causal attention, 3 × 2·L·d per layer (forward and a backward of
twice its cost); over the chip's dense bf16 peak (`--peak-tflops`, H100/H200 SXM datasheet:
989). `hfu` adds the forward pass that gradient checkpointing recomputes. `--zero3` runs under
`accelerate launch` with `recipes/accelerate/zero3.yaml` (one process: DeepSpeed's code path,
not its scaling).

    python benchmarks/gpu_train.py [--lengths 4096,8192,16384] [--steps 8] [--zero3]
    python benchmarks/gpu_train.py --tiny      # dry run on the CPU: a 2-layer model, 128/256 tokens

Prints one line per run and writes `--out` (JSON) with every figure and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent

#: Qwen/Qwen2-7B-Instruct's config.json (the model architecture the paper trains).
QWEN2_7B_INSTRUCT: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
#: A model small enough for a CPU dry run of the same path.
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
_WORDS = [
    *("river", "stone", "light", "measure", "harbor", "quiet", "engine", "winter", "garden", "signal"),
    *("orbit", "paper", "method", "lantern", "forest", "copper", "window", "market", "thread", "valley"),
    *("ladder", "mirror", "season", "bridge", "candle", "compass", "meadow", "silver", "anchor", "canvas"),
]


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cpu_name() -> str:
    """lscpu's model name (not `cpu_server.cpu_name`: that module imports the engine's stack, which a
    GPU machine without a package registry does not have)."""
    listed = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    named = [line.partition(":")[2].strip() for line in listed.splitlines() if line.startswith("Model name:")]
    return named[0] if named else platform.processor() or "unknown CPU"


def build_model(folder: Path, architecture: dict[str, Any], tokenizer_dir: Path) -> int:
    """Save a randomly initialised Qwen2 model of `architecture` with the tokenizer; returns its
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = {"vocab_size": len(tokenizer)} | architecture | {"use_cache": False}
    config = Qwen2Config(**settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return parameters


def write_rows(folder: Path, tokenizer_dir: Path, length: int, rows: int) -> None:
    """`rows` chat rows of at least `length` tokens each (as the trainer will tokenize them), as a
    parquet train split."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chooser = random.Random(length)
    table = []
    for index in range(rows):
        words = length
        while True:
            text = " ".join(chooser.choice(_WORDS) for _ in range(words))
            messages = [
                {"role": "user", "content": f"Write a long essay, number {index}."},
                {"role": "assistant", "content": text},
            ]
            if len(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]) > length:
                break
            words *= 2
        table.append({"messages": messages})
    folder.mkdir(parents=True)
    Dataset.from_list(table).to_parquet(str(folder / "train-00000.parquet"))


def matrix_weights(architecture: dict[str, Any], vocab_size: int) -> int:
    """Weights of the matrix products per token: the layers' projections and the output head."""
    d = architecture["hidden_size"]
    head = d // architecture["num_attention_heads"]
    kv = architecture["num_key_value_heads"] * head
    layer = d * d + 2 * d * kv + d * d + 3 * d * architecture["intermediate_size"]
    return architecture["num_hidden_layers"] * layer + d * vocab_size


def flops_per_step(
    architecture: dict[str, Any], vocab_size: int, length: int, checkpointing: bool
) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one LoRA training step on one sequence of `length`; the
    hardware recomputes the forward pass under gradient checkpointing."""
    weights = matrix_weights(architecture, vocab_size)
    attention_forward = 2 * length * length * architecture["hidden_size"] * architecture["num_hidden_layers"]
    model = 4 * weights * length + 3 * attention_forward
    recomputed = 2 * weights * length + attention_forward if checkpointing else 0
    return float(model), float(model + recomputed)


def gradient_checkpointing(recipe: Path, trainer_args: list[str]) -> bool:
    """Whether the run checkpoints: the recipe's setting, or the last `--trainer-arg` that sets it."""
    setting = bool(yaml.safe_load(recipe.read_text(encoding="utf-8")).get("gradient_checkpointing", False))
    for argument in trainer_args:
        key, _, value = argument.partition("=")
        if key == "--gradient_checkpointing":
            setting = value.lower() in ("", "true", "1", "yes")
    return setting


def train(
    model: Path, rows: Path, output: Path, length: int, steps: int, options: argparse.Namespace, cpu: bool
) -> tuple[dict[str, Any], float]:
    arguments = [
        "-m", "selflengthen.train.sft", "--config", str(options.recipe),
        "--model_name_or_path", str(model), "--dataset_name", str(rows), "--output_dir", str(output),
        "--max_length", str(length), "--max_steps", str(steps), "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--logging_steps", "1", *options.trainer_arg,
    ]  # fmt: skip
    if cpu:
        arguments += ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]
    launcher = [sys.executable]
    if options.zero3:
        launcher += [
            "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate/zero3.yaml"),
            "--num_processes", "1",
        ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = os.environ | {"TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": path}
    started = time.monotonic()
    finished = subprocess.run(launcher + arguments, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        failure = f"training at {length} tokens failed (exit {finished.returncode})"
        raise SystemExit(f"{failure}:\n{finished.stderr[-3000:]}")
    return json.loads((output / "train_result.json").read_text()), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,8192,16384", help="comma-separated sequence lengths")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per length (one row each)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes/qwen2/sft.yaml")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the chip's dense bf16 peak")
    parser.add_argument("--zero3", action="store_true", help="train under accelerate + DeepSpeed ZeRO-3")
    parser.add_argument(
        "--trainer-arg",
        action="append",
        default=[],
        help="one more trainer flag (repeatable), e.g. --trainer-arg=--bf16=false",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: a 2-layer model, 128/256 tokens")
    parser.add_argument("--work", type=Path, help="scratch folder for the model (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("gpu_train.json"))
    options = parser.parse_args()
    if options.steps <= options.warmup:
        parser.error("--steps must be greater than --warmup")
    if options.tokenizer is None:
        from selflengthen.engine.models import resolve_model

        options.tokenizer = Path(resolve_model("smollm2-135m").source)
    architecture = TINY if options.tiny else QWEN2_7B_INSTRUCT
    lengths = [128, 256] if options.tiny else [int(value) for value in options.lengths.split(",")]
    gpu = gpu_name()
    if gpu is None and not options.tiny:
        raise SystemExit("no GPU: run with --tiny for the CPU dry run")
    work = Path(tempfile.mkdtemp(prefix="gpu_train-", dir=options.work))
    try:
        started = time.monotonic()
        parameters = build_model(work / "model", architecture, options.tokenizer)
        vocab_size = json.loads((work / "model/config.json").read_text())["vocab_size"]
        built = time.monotonic() - started
        print(f"model: {parameters / 1e9:.2f} B parameters, built and saved in {built:.0f} s", flush=True)
        report: dict[str, Any] = {
            "gpu": gpu, "cpu": cpu_name(), "architecture": architecture, "parameters": parameters,
            "recipe": str(options.recipe.relative_to(REPO)), "trainer_args": options.trainer_arg,
            "zero3": options.zero3, "peak_tflops": options.peak_tflops, "runs": [],
        }  # fmt: skip
        checkpointing = gradient_checkpointing(options.recipe, options.trainer_arg)
        for length in lengths:
            name = f"{length}{'-zero3' if options.zero3 else ''}"
            write_rows(work / f"rows-{length}", options.tokenizer, length, options.steps)
            result, wall = train(
                work / "model", work / f"rows-{length}", work / f"out-{name}", length, options.steps,
                options, cpu=gpu is None,
            )  # fmt: skip
            timed = result["step_seconds"][options.warmup :]
            seconds = sum(timed) / len(timed)
            model_flops, hardware_flops = flops_per_step(architecture, vocab_size, length, checkpointing)
            peak = options.peak_tflops * 1e12 if gpu else None  # the peak is the GPU's
            run = {
                "length": length, "steps": result["global_step"],
                "tokens_seen": result["num_tokens"], "step_seconds": result["step_seconds"],
                "tokens_per_second": round(length / seconds, 1),
                "peak_memory_gib": round((result["peak_accelerator_memory"] or 0) / 2**30, 2),
                "mfu": round(model_flops / seconds / peak, 4) if peak else None,
                "hfu": round(hardware_flops / seconds / peak, 4) if peak else None,
                "final_loss": result["losses"][-1] if result["losses"] else None,
                "wall_seconds": round(wall, 1),
            }  # fmt: skip
            report["runs"].append(run)
            utilisation = f"MFU {run['mfu']:.1%}  HFU {run['hfu']:.1%}" if peak else "MFU n/a (CPU)"
            print(
                f"{name:>12}: {run['tokens_per_second']:>9,.0f} tokens/s  {seconds:.3f} s/step  "
                f"peak {run['peak_memory_gib']} GiB  {utilisation}  "
                f"({run['steps']} steps, {wall:.0f} s with the load)",
                flush=True,
            )
            options.out.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{gpu or report['cpu']}: written {options.out}")


if __name__ == "__main__":
    main()
