from pathlib import Path

import pytest
import yaml

from selflengthen.errors import SelflengthenError
from selflengthen.train.roles import effective_recipe
from selflengthen.train.sft import check_recipe, parser

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
    steps, bf16 on the CPU) are not the paper's: a shipped recipe names each of these itself."""
    settings = yaml.safe_load(recipe.read_text())
    relied_on = {
        "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "learning_rate", "lr_scheduler_type",
        "warmup_steps", "num_train_epochs", "per_device_train_batch_size", "max_length", "bf16",
        "save_strategy", "report_to", "seed", "dtype",
    }  # fmt: skip
    assert relied_on <= set(settings), sorted(relied_on - set(settings))
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
