from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from selflengthen.engine.models import resolve_model
from selflengthen.errors import SelflengthenError
from selflengthen.train.roles import effective_recipe
from selflengthen.train.sft import check_recipe, load_model, parser

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_the_recipe_runs_as_written_plus_only_the_device_keys_it_leaves_out(tmp_path: Path) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("use_peft: true\nlearning_rate: 5.0e-4\nmax_steps: 3\nbf16: false\n")
    settings, added = effective_recipe(recipe)
    assert added == {"use_cpu": True}  # no GPU here; bf16 is the recipe's
    assert settings == {
        "use_peft": True,
        "learning_rate": 5.0e-4,
        "max_steps": 3,
        "bf16": False,
        "use_cpu": True,
    }


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*/sft.yaml")), ids=lambda path: path.parent.name)
def test_every_shipped_recipe_states_the_settings_it_relies_on(recipe: Path) -> None:
    """TRL's defaults (lr 2e-5, 3 epochs, max_length 1024, linear schedule, checkpoints every 500
    steps) are not the paper's: a shipped recipe names each of these itself. `bf16` is named by
    the GPU recipes; the CPU recipes leave it to the machine (`effective_recipe`)."""
    settings = yaml.safe_load(recipe.read_text())
    relied_on = {
        "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "learning_rate", "lr_scheduler_type",
        "warmup_steps", "num_train_epochs", "per_device_train_batch_size", "max_length",
        "save_strategy", "report_to", "seed", "dtype",
    }  # fmt: skip
    assert relied_on <= set(settings), sorted(relied_on - set(settings))
    assert ("bf16" in settings) != bool(settings.get("use_cpu")), (
        "bf16: the GPU recipes' to name, the CPU's not"
    )
    check_recipe(recipe)


def test_a_recipe_that_does_not_train_a_lora_adapter_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("learning_rate: 1.0e-4\n")
    with pytest.raises(SelflengthenError, match=r"^.*sft.yaml: use_peft: must be true"):
        check_recipe(recipe)


def test_trl_parses_the_cpu_recipe_as_the_loop_runs_it(tmp_path: Path) -> None:
    effective = tmp_path / "recipe.yaml"
    effective.write_text(yaml.safe_dump(effective_recipe(RECIPES / "smollm2-cpu" / "sft.yaml")[0]))
    script, training, model, continuation = parser().parse_args_and_config(
        ["--config", str(effective), "--model_name_or_path", "base", "--dataset_name", "data",
         "--output_dir", str(tmp_path / "out"), "--previous_adapter", "prev"]
    )  # fmt: skip
    assert (training.learning_rate, training.max_steps, training.max_length) == (2.0e-4, 3, 2048)
    assert (
        model.use_peft and model.lora_target_modules == ["all-linear"]
    ) or model.lora_target_modules == "all-linear"
    assert script.dataset_name == "data" and continuation.previous_adapter == "prev"


def _parsed(tmp_path: Path, recipe: str) -> tuple:
    path = tmp_path / "sft.yaml"
    path.write_text(recipe)
    check_recipe(path)
    _, training, model_args, _ = parser().parse_args_and_config(
        ["--config", str(path), "--model_name_or_path", resolve_model("smollm2-135m").source,
         "--dataset_name", "data", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    )  # fmt: skip
    return model_args, training


def test_the_model_is_loaded_as_trl_loads_it(tmp_path: Path) -> None:
    model_args, training = _parsed(
        tmp_path,
        "use_peft: true\ndtype: bfloat16\nattn_implementation: eager\n"
        "model_init_kwargs: {use_cache: false}\n",
    )
    model = load_model(model_args, training)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert model.config.use_cache is False


def test_continuing_puts_the_previous_adapter_on_the_model_trainable(tmp_path: Path) -> None:
    model_args, training = _parsed(tmp_path, "use_peft: true\ndtype: float32\n")
    adapter = tmp_path / "adapter"
    first = get_peft_model(load_model(model_args, training), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, weight in first.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.5)  # a trained adapter: B is no longer zero
    first.save_pretrained(adapter)
    continued = load_model(model_args, training, str(adapter))
    trainable = {name: weight for name, weight in continued.named_parameters() if weight.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert all(bool((weight == 0.5).all()) for name, weight in trainable.items() if "lora_B" in name)


def test_quantization_in_the_recipe_is_not_dropped(tmp_path: Path) -> None:
    """`load_in_4bit` reaches transformers as a quantization config: without bitsandbytes (as
    here) loading fails, instead of training in full precision."""
    model_args, training = _parsed(tmp_path, "use_peft: true\nload_in_4bit: true\n")
    with pytest.raises((ImportError, ValueError, RuntimeError), match=r"(?i)bitsandbytes"):
        load_model(model_args, training)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("output_dir: out", "output_dir: selflengthen sets it for each role"),
        ("model_name_or_path: Qwen/Qwen2-7B-Instruct", "model_name_or_path: selflengthen sets it"),
        ("eval_strategy: steps", "eval_strategy: only 'no' is supported"),
        ("resume_from_checkpoint: out/checkpoint-10", "resume_from_checkpoint: only None is supported"),
        ("dataset_streaming: true", "dataset_streaming: only False is supported"),
    ],
)
def test_a_recipe_key_that_cannot_be_honoured_is_refused(tmp_path: Path, line: str, message: str) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"use_peft: true\n{line}\n")
    with pytest.raises(SelflengthenError, match=f"sft.yaml: {message}"):
        check_recipe(recipe)
    recipe.write_text("use_peft: true\neval_strategy: 'no'\n")  # the value it can honour is fine
    check_recipe(recipe)
