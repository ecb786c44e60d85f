from pathlib import Path

import pytest
import yaml

from selflengthen.config import RunConfig, identity_differences, load_config, parse_config
from selflengthen.errors import SelflengthenError
from selflengthen.filters.registry import DEFAULT_FILTERS
from selflengthen.train.sft import check_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RUN_CONFIGS = sorted(RECIPES.glob("*/run.yaml"))


def write_config(folder: Path, data: dict) -> Path:
    (folder / "sft.yaml").write_text("learning_rate: 1.0e-4\nuse_peft: true\n")
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "train": {"recipe": "sft.yaml"}} | data))
    return path


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda path: path.parent.name)
def test_shipped_recipes_load_and_their_trl_yaml_is_known_to_trl(path: Path) -> None:
    config = load_config(path)
    assert config.train.recipe.is_file() and config.train.recipe.is_absolute()
    check_recipe(config.train.recipe)
    if config.train.accelerate_config is not None:
        assert (
            yaml.safe_load(config.train.accelerate_config.read_text())["deepspeed_config"]["zero_stage"] == 3
        )


def test_shipped_recipes_cover_three_models() -> None:
    assert {path.parent.name for path in RUN_CONFIGS} == {
        "qwen2",
        "llama3",
        "smollm2-cpu",
        "smollm2-lengthen",
        "slurm",
    }
    for script in ("qwen2.sh", "llama3.sh", "smollm2-cpu.sh", "smollm2-lengthen.sh"):
        assert (RECIPES / script).is_file()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"extend": {"roundz": 3}}, "extend.roundz: unknown key"),
        ({"extend": {"rounds": "3"}}, "extend.rounds: Input should be a valid integer (got '3')"),
        ({"self_instruct": {"count": 0}}, "self_instruct.count: Input should be greater than or equal to 1"),
        ({"iterations": 2.5}, "iterations: Input should be a valid integer"),
        ({"engine": {"endpoint": "http://x"}}, "engine.endpoint: unknown key"),
        (
            {"self_instruct": {"seed_language": "fr"}},
            "self_instruct.seed_language: Input should be 'all', 'en'",
        ),
        ({"length_control": {"min_words": 9000}}, "length_control: Value error, min_words (9000) is above"),
        ({"length_control": {"weights": {"roughly": 1.0}}}, "length_control.weights.roughly.[key]"),
        ({"train": {"recipe": "missing.yaml"}}, "train.recipe: no such file"),
        (
            {"filters": ["ending", "nope"]},
            "filters: Value error, entry 2 (nope): unknown filter (ours: ending,",
        ),
        (
            {"filters": [{"repetition": {"ngram": 0}}]},
            "entry 1 (repetition): ngram must be a positive integer",
        ),
        ({"filters": [{"repetition": {"bogus": 1}}]}, "unexpected keyword argument 'bogus'"),
        ({"filters": [{"repetition": 8}]}, "entry 1 (repetition): its arguments must be a mapping"),
        ({"filters": [{"ending": None, "repetition": None}]}, "entry 1: expected a name or a mapping of one"),
        ({"filters": ["os.path:join"]}, "entry 1 (os.path:join): not a datatrove BaseFilter"),
        ({"filters": ["no_such_module_x:Filter"]}, "cannot import no_such_module_x"),
        (
            {"filters": ["datatrove.pipeline.filters:NoSuchFilter"]},
            "datatrove.pipeline.filters has no NoSuchFilter",
        ),
        ({"filters": []}, "filters: Value error, expected a non-empty list of filters"),
        ({"filters": "ending"}, "filters: Input should be a valid list"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, data: dict, expected: str) -> None:
    path = write_config(tmp_path, data)
    with pytest.raises(SelflengthenError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_missing_required_values_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SelflengthenError, match=r"train: Field required"):
        parse_config({"name": "x"}, "run.yaml")
    with pytest.raises(SelflengthenError, match=r"run.yaml: a run config must be a YAML mapping"):
        parse_config(["name"], "run.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SelflengthenError, match=r"bad.yaml: not valid YAML \(line 2\)"):
        load_config(bad)
    with pytest.raises(SelflengthenError, match=r"nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    config = load_config(
        path,
        [
            "engine.data_parallel_size=4",
            "train.launcher=accelerate",
            "train.accelerate_args=[--num_processes, '4']",
        ],
    )
    assert config.engine.data_parallel_size == 4
    assert config.train.accelerate_args == ["--num_processes", "4"]
    with pytest.raises(SelflengthenError, match=r"engine.concurrency: Input should be a valid integer"):
        load_config(path, ["engine.concurrency=many"])
    with pytest.raises(
        SelflengthenError, match=r"train: Value error, accelerate_config and accelerate_args need"
    ):
        load_config(path, ["train.accelerate_args=[--num_processes, '4']"])
    with pytest.raises(SelflengthenError, match=r"--set 'engine': expected KEY=VALUE"):
        load_config(path, ["engine"])


def test_identity_ignores_how_the_run_is_served_but_not_what_it_makes(tmp_path: Path) -> None:
    base = load_config(write_config(tmp_path, {}))
    served = base.model_copy(
        update={
            "iterations": 5,
            "early_stop": False,
            "engine": base.engine.model_copy(update={"concurrency": 8}),
        }
    )
    assert identity_differences(base, served) == []
    assert base.sampling_options().early_stop and not served.sampling_options().early_stop
    changed = base.model_copy(update={"extend": base.extend.model_copy(update={"rounds": 1}), "seed": 3})
    assert identity_differences(base, changed) == ["seed", "extend.rounds"]


def test_defaults_are_the_papers() -> None:
    config = RunConfig.model_validate({"name": "x", "train": {"recipe": "r.yaml"}})
    assert (config.iterations, config.self_instruct.count, config.generate.samples_per_instruction) == (
        3,
        5000,
        2,
    )
    assert (config.extend.rounds, config.extend.min_ratio, config.sft_data.line_drop_probability) == (
        3,
        1.2,
        0.2,
    )
    sampling = config.sampling_options()
    # The paper's decoding, but answers that fit the default context (4096) beside their prompt.
    assert sampling.max_tokens < config.engine.max_model_len == 4096
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens) == (
        0.7,
        0.8,
        20,
        1000,
    )
    assert config.folder == Path("runs/x")
    assert config.length_control.weights == {"about": 0.4, "range": 0.25, "above": 0.1, "below": 0.25}


def test_recipe_check_names_an_unknown_trl_key(tmp_path: Path) -> None:
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("use_peft: true\nlearning_rate: 1.0e-4\nwarmup_ratio: 0.1\n")
    with pytest.raises(
        SelflengthenError, match=r"sft.yaml: warmup_ratio: not an argument of TRL's SFT script"
    ):
        check_recipe(recipe)


def test_engine_ray_becomes_ray_options_and_excludes_slurm(tmp_path: Path) -> None:
    ray = {"address": "ray://head:10001", "tasks": 4, "gpus_per_task": 2, "cpus_per_task": 16}
    options = load_config(write_config(tmp_path, {"engine": {"ray": ray}})).engine.options("m")
    assert options.ray is not None and options.slurm is None and options.on_cluster
    assert (options.ray.address, options.ray.tasks, options.ray.gpus_per_task) == ("ray://head:10001", 4, 2)
    assert options.ray.mem_per_cpu_gb == 8.0
    both = {"engine": {"ray": ray, "slurm": {"partition": "gpu"}}}
    with pytest.raises(SelflengthenError, match=r"engine: .*slurm and ray are two ways to run generation"):
        load_config(write_config(tmp_path, both))
    with pytest.raises(
        SelflengthenError, match=r"engine.ray.tasks: Input should be greater than or equal to 1"
    ):
        load_config(write_config(tmp_path, {"engine": {"ray": {"tasks": 0}}}))


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """YAML lets the second block win silently; a run config must not lose the first."""
    (tmp_path / "sft.yaml").write_text("use_peft: true\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: x\ntrain:\n  recipe: sft.yaml\nextend:\n  rounds: 3\nsampling:\n  top_p: 0.8\n"
        "extend:\n  max_retries: 2\n"
    )
    with pytest.raises(SelflengthenError) as error:
        load_config(config)
    assert str(error.value) == f"{config}: key 'extend' appears twice (lines 4 and 8); keep one"
    config.write_text("name: x\ntrain:\n  recipe: sft.yaml\n  recipe: other.yaml\n")
    with pytest.raises(SelflengthenError, match=r"key 'recipe' appears twice \(lines 3 and 4\)"):
        load_config(config)
    (tmp_path / "sft.yaml").write_text("use_peft: true\nlearning_rate: 1.0e-4\nlearning_rate: 1.0e-3\n")
    with pytest.raises(SelflengthenError, match=r"sft.yaml: key 'learning_rate' appears twice \(lines 2 and"):
        check_recipe(tmp_path / "sft.yaml")


def test_merge_keys_may_still_override_what_they_merge(tmp_path: Path) -> None:
    (tmp_path / "sft.yaml").write_text("use_peft: true\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: x\ntrain: {recipe: sft.yaml}\ngenerate: &common {max_retries: 2}\n"
        "extend:\n  <<: *common\n  max_retries: 4\n"
    )
    loaded = load_config(config)
    assert (loaded.generate.max_retries, loaded.extend.max_retries) == (2, 4)


def test_filters_are_ours_by_name_or_any_datatrove_filter_by_import_path(tmp_path: Path) -> None:
    fineweb = "datatrove.pipeline.filters:FineWebQualityFilter"
    data = {
        "filters": ["ending", {"repetition": {"ngram": 8}}, {fineweb: {"line_punct_thr": 0.05}}, "length"]
    }
    config = load_config(write_config(tmp_path, data))
    entries = config.filter_entries()
    assert [entry.name for entry in entries] == ["ending", "repetition", fineweb, "length"]
    built = [entry.build() for entry in entries]
    assert built[1].ngram == 8 and built[2].line_punct_thr == 0.05
    assert type(built[2]).__module__.startswith("datatrove.") and type(built[3]).__name__ == "LengthFilter"
    assert parse_config(yaml.safe_load(config.to_yaml()), "again").filters == config.filters
    default = load_config(write_config(tmp_path, {}))
    assert default.filters == list(DEFAULT_FILTERS)
    assert identity_differences(default, config) == ["filters"]  # other filters make other rows
