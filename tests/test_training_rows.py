"""Which kept rows each role trains on at iteration k (`train.rows`), read from a run folder
written by the loop's own writers."""

from pathlib import Path

import polars as pl
import pytest
import yaml

from selflengthen.config import load_config
from selflengthen.errors import SelflengthenError
from selflengthen.train.roles import ROLE_DATASETS, ROLES, joined_training_data, trained_iterations
from tests.run_fixture import make_run

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [("new", {1: [1], 2: [2], 3: [3]}), ("all", {1: [1], 2: [1, 2], 3: [1, 2, 3]})],
)
def test_each_iteration_trains_on_its_rows_or_on_every_earlier_iterations_too(
    tmp_path: Path, rows: str, expected: dict[int, list[int]]
) -> None:
    run_dir = make_run(tmp_path, iterations=3, trained=0, final=False)
    for iteration in (1, 2, 3):
        assert trained_iterations(iteration, rows) == expected[iteration]
        for role in ROLES:
            folder = joined_training_data(run_dir, iteration, role, rows, tmp_path / f"{role}-{iteration}")
            trained = pl.read_parquet(folder / "*.parquet")
            sources = [
                pl.read_parquet(run_dir / f"iter_{k}" / ROLE_DATASETS[role] / "data" / "*.parquet")
                for k in expected[iteration]
            ]
            # every row of those iterations, once, in iteration order, with the role's messages
            assert trained.equals(pl.concat(sources))
            assert sorted(set(trained["iteration"])) == expected[iteration]


def test_a_missing_iteration_of_sft_data_is_named_before_training(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=2, trained=0, final=False)
    missing = run_dir / "iter_1" / "ext_sft" / "data"
    for shard in missing.iterdir():
        shard.unlink()
    missing.rmdir()
    with pytest.raises(SelflengthenError, match=r"iter_1/ext_sft/data: no SFT data for the extender"):
        joined_training_data(run_dir, 2, "extender", "all", tmp_path / "joined")
    assert joined_training_data(run_dir, 2, "extender", "new", tmp_path / "joined").parent.name == "ext_sft"


def test_the_lengthening_recipe_is_read_as_written() -> None:
    config = load_config(RECIPES / "smollm2-lengthen" / "run.yaml")
    written = yaml.safe_load((RECIPES / "smollm2-lengthen" / "run.yaml").read_text())
    assert config.train.rows == written["train"]["rows"] == "all"
    assert config.self_instruct.count == written["self_instruct"]["count"] == 96
    assert config.generate.samples_per_instruction == 1
    assert yaml.safe_load(config.train.recipe.read_text())["num_train_epochs"] == 1


def test_the_paper_rule_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "sft.yaml").write_text("use_peft: true\n")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"name": "x", "train": {"recipe": "sft.yaml"}}))
    assert load_config(tmp_path / "run.yaml").train.rows == "new"
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"name": "x", "train": {"recipe": "sft.yaml", "rows": "some"}})
    )
    with pytest.raises(SelflengthenError, match=r"train.rows"):
        load_config(tmp_path / "run.yaml")


def test_the_train_command_offers_the_run_configs_choices_and_default() -> None:
    from selflengthen.cli_steps import TrainingRows
    from selflengthen.config import TrainSection

    assert [choice.value for choice in TrainingRows] == ["new", "all"]
    assert TrainingRows.new.value == TrainSection.model_fields["rows"].default
