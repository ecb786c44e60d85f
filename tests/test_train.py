from pathlib import Path

import yaml

from selflengthen.train.roles import PAPER_TRAINING, effective_recipe
from selflengthen.train.sft import parser

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_recipe_keys_win_over_the_papers_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("learning_rate: 5.0e-4\nmax_steps: 3\n")
    effective = effective_recipe(recipe)
    assert effective["learning_rate"] == 5.0e-4 and effective["max_steps"] == 3
    assert effective["num_train_epochs"] == 4 and effective["lora_target_modules"] == "all-linear"
    assert effective["bf16"] is False and effective["use_cpu"] is True  # no GPU here
    assert set(PAPER_TRAINING) <= set(effective)


def test_trl_parses_the_cpu_recipe_as_the_loop_runs_it(tmp_path: Path) -> None:
    effective = tmp_path / "recipe.yaml"
    effective.write_text(yaml.safe_dump(effective_recipe(RECIPES / "smollm2-cpu" / "sft.yaml")))
    script, training, model, continuation = parser().parse_args_and_config(
        ["--config", str(effective), "--model_name_or_path", "base", "--dataset_name", "data",
         "--output_dir", str(tmp_path / "out"), "--previous_adapter", "prev"]
    )  # fmt: skip
    assert (training.learning_rate, training.max_steps, training.max_length) == (2.0e-4, 3, 2048)
    assert (
        model.use_peft and model.lora_target_modules == ["all-linear"]
    ) or model.lora_target_modules == "all-linear"
    assert script.dataset_name == "data" and continuation.previous_adapter == "prev"
