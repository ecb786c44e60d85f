"""One LoRA SFT run with TRL's `SFTTrainer`: `python -m selflengthen.train.sft --config recipe.yaml`.

The recipe is the YAML that TRL's own parser reads (`ScriptArguments`, `SFTConfig` and
`ModelConfig` keys, so `trl sft --config recipe.yaml` runs it too). On top of TRL's keys this
entry point takes `--previous_adapter DIR`: continue training that LoRA adapter (the previous
macro-iteration's) on the base model instead of starting a new one. It runs as is under
`accelerate launch` (multi-GPU, DeepSpeed ZeRO-3). The main process writes `train_result.json`
(final loss, steps, the loss log) beside the saved adapter.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from selflengthen.errors import SelflengthenError


@dataclass
class ContinuationArguments:
    previous_adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter to continue training (the previous iteration's)."}
    )


_ARGUMENT_TYPES = (ScriptArguments, SFTConfig, ModelConfig, ContinuationArguments)
#: Keys the loop sets for each role; a recipe may leave them out.
LOOP_KEYS = ("model_name_or_path", "dataset_name", "output_dir", "previous_adapter")


def parser() -> TrlParser:
    return TrlParser(_ARGUMENT_TYPES)


def check_recipe(path: Path) -> None:
    """Fail before any work when the recipe is not a YAML mapping of keys TRL's parser knows
    (values are checked by TRL when training starts)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SelflengthenError(f"{path}: cannot be read as YAML ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise SelflengthenError(f"{path}: a training recipe must be a YAML mapping of TRL arguments")
    known = {item.name for kind in _ARGUMENT_TYPES for item in dataclasses.fields(kind)} | {"env"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SelflengthenError(f"{path}: {unknown[0]}: not an argument of TRL's SFT script")
    if data.get("use_peft") is not True:
        raise SelflengthenError(
            f"{path}: use_peft: must be true (each role is trained as a LoRA adapter, which is merged "
            "for serving and continued in the next iteration)"
        )


def main(argv: list[str] | None = None) -> None:
    script, training, model_args, continuation = parser().parse_args_and_config(argv)

    import torch
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training.trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=training.trust_remote_code
    )
    peft_config = None
    if continuation.previous_adapter:
        model = PeftModel.from_pretrained(model, continuation.previous_adapter, is_trainable=True)
    else:
        peft_config = get_peft_config(model_args)
    dataset = load_dataset(script.dataset_name, name=script.dataset_config)
    train_split = dataset[script.dataset_train_split].select_columns(["messages"])
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=train_split,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = trainer.train()
    trainer.save_model(training.output_dir)
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        summary = {
            "training_loss": result.training_loss,
            "global_step": result.global_step,
            "losses": losses,
            "rows": len(train_split),
            "continued_from": continuation.previous_adapter,
        }
        Path(training.output_dir, "train_result.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
