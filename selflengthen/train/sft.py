"""One LoRA SFT run with TRL's `SFTTrainer`: `python -m selflengthen.train.sft --config recipe.yaml`.

The recipe is the YAML that TRL's own parser reads (`ScriptArguments`, `SFTConfig` and
`ModelConfig` keys, so `trl sft --config recipe.yaml` runs it too). On top of TRL's keys this
entry point takes `--previous_adapter DIR`: continue training that LoRA adapter (the previous
macro-iteration's) on the base model instead of starting a new one. The model is loaded as
TRL's script loads it (`load_model`: dtype, attention, `model_init_kwargs`, 4/8-bit
quantization), and a recipe key this entry point cannot honour is refused by `check_recipe`
before any work. It runs as is under
`accelerate launch` (multi-GPU, DeepSpeed ZeRO-3). The main process writes `train_result.json`
(final loss, steps, the loss log, seconds per optimizer step, tokens seen, peak accelerator
memory) beside the saved adapter.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from selflengthen.errors import SelflengthenError
from selflengthen.strict_yaml import DuplicateKeyError, load_yaml


@dataclass
class ContinuationArguments:
    previous_adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter to continue training (the previous iteration's)."}
    )


_ARGUMENT_TYPES = (ScriptArguments, SFTConfig, ModelConfig, ContinuationArguments)
#: Keys the loop sets for each role (its values would replace the recipe's).
LOOP_KEYS = ("model_name_or_path", "dataset_name", "output_dir", "previous_adapter")
#: Keys of TRL's script that this entry point cannot honour, with the only value it can, and why.
_FIXED_KEYS: dict[str, tuple[object, str]] = {
    "eval_strategy": ("no", "each role's SFT data has a train split only"),
    "dataset_test_split": ("test", "each role's SFT data has a train split only"),
    "dataset_train_split": ("train", "the loop writes each role's SFT data as its train split"),
    "dataset_config": (None, "the loop writes each role's SFT data without a config name"),
    "dataset_streaming": (False, "the SFT data is a local parquet folder, read whole"),
    "resume_from_checkpoint": (None, "a killed training starts again from scratch"),
    "ignore_bias_buffers": (False, "TRL's SFT script does not use it either"),
}


def parser() -> TrlParser:
    return TrlParser(_ARGUMENT_TYPES)


def check_recipe(path: Path) -> dict[str, Any]:
    """Fail before any work when the recipe is not a YAML mapping of keys TRL's parser knows,
    sets a key the loop sets itself, or asks for what this entry point cannot do (values are
    otherwise checked by TRL when training starts). Returns the recipe's settings."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as error:
        raise SelflengthenError(f"{path}: {error.problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SelflengthenError(f"{path}: cannot be read as YAML ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise SelflengthenError(f"{path}: a training recipe must be a YAML mapping of TRL arguments")
    known = {item.name for kind in _ARGUMENT_TYPES for item in dataclasses.fields(kind)} | {"env"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SelflengthenError(f"{path}: {unknown[0]}: not an argument of TRL's SFT script")
    for key in LOOP_KEYS:
        if key in data:
            raise SelflengthenError(f"{path}: {key}: selflengthen sets it for each role; remove it")
    for key, (value, why) in _FIXED_KEYS.items():
        if key in data and data[key] != value:
            raise SelflengthenError(f"{path}: {key}: only {value!r} is supported ({why})")
    if data.get("use_peft") is not True:
        raise SelflengthenError(
            f"{path}: use_peft: must be true (each role is trained as a LoRA adapter, which is merged "
            "for serving and continued in the next iteration)"
        )
    return data


def load_model(model_args: ModelConfig, training: SFTConfig, previous_adapter: str | None = None) -> Any:
    """The model to train, loaded as TRL's `trl sft` script loads it: `ModelConfig`'s revision,
    attention implementation and dtype, `SFTConfig.model_init_kwargs` over them, and the
    quantization `load_in_4bit`/`load_in_8bit` ask for (through TRL's own helpers). With
    `previous_adapter`, that LoRA adapter is put on the model, trainable; otherwise the trainer
    adds a new one from the recipe's LoRA keys."""
    from peft import PeftModel
    from trl import get_quantization_config
    from trl.trainer.utils import create_model_from_path

    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": training.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    kwargs |= training.model_init_kwargs or {}
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        if "quantization_config" in kwargs:
            raise SelflengthenError(
                "model_init_kwargs.quantization_config: set quantization either there or with "
                "load_in_4bit/load_in_8bit, not both"
            )
        kwargs["quantization_config"] = quantization
    if training.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # as TRL does: each process holds its own copy or shard
    model = create_model_from_path(model_args.model_name_or_path, **kwargs)
    if previous_adapter:
        model = PeftModel.from_pretrained(model, previous_adapter, is_trainable=True)
    return model


class StepClock(TrainerCallback):
    """Wall seconds of each optimizer step (the accelerator is synchronised at each step's end,
    so a step's time is its own), for the tokens/s a user sees in `train_result.json` and that
    `benchmarks/gpu_train.py` turns into MFU."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self._last = 0.0

    @staticmethod
    def _now() -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = self._now()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self._now()
        self.step_seconds.append(round(now - self._last, 4))
        self._last = now


def peak_accelerator_memory() -> int | None:
    """Bytes of accelerator memory this process held at most (None without CUDA)."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> None:
    script, training, model_args, continuation = parser().parse_args_and_config(argv)

    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    model = load_model(model_args, training, continuation.previous_adapter)
    training.model_init_kwargs = None  # used by load_model; the trainer gets the model itself
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training.trust_remote_code,
    )
    peft_config = None if continuation.previous_adapter else get_peft_config(model_args)
    dataset = load_dataset(script.dataset_name, name=script.dataset_config)
    train_split = dataset[script.dataset_train_split].select_columns(["messages"])
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=train_split,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock := StepClock()],
    )
    result = trainer.train()
    trainer.save_model(training.output_dir)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
        summary = {
            "training_loss": result.training_loss,
            "global_step": result.global_step,
            "losses": losses,
            "rows": len(train_split),
            "continued_from": continuation.previous_adapter,
            "step_seconds": clock.step_seconds,
            "num_tokens": tokens[-1] if tokens else None,
            "peak_accelerator_memory": peak_accelerator_memory(),
        }
        Path(training.output_dir, "train_result.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
