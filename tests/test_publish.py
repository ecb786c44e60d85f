"""`selflengthen publish`: versions, cards and refusals, through `--dry-run --out` (offline)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard

from selflengthen.config import load_config
from selflengthen.errors import SelflengthenError
from selflengthen.hub import DryRunFolder
from selflengthen.publish import PublishRequest, portable, publish, published_config
from selflengthen.run_folder import RunFolder
from selflengthen.steps import FINAL_FOLDERS, ITERATION_FOLDERS
from tests.run_fixture import make_run

FAKE_TOKEN = "hf_publishTestTokenDoNotLeak0123456789"
CONFIGS = ITERATION_FOLDERS + FINAL_FOLDERS
SIZE_CATEGORIES = json.loads(
    (
        Path(__import__("datasets").__file__).parent / "utils" / "resources" / "size_categories.json"
    ).read_text()
)


def dry_run(run_dir: Path, out: Path, **fields: object) -> list:
    return publish(PublishRequest(run_dir, fields.pop("repo_id", "org/fixture"), dry_run_out=out, **fields))


def cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selflengthen.cli", *arguments],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
    )


def tree(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every version of the fixture run, with models and merged weights, via the CLI."""
    out = tmp_path_factory.mktemp("hub")
    env = os.environ | {"HF_TOKEN": FAKE_TOKEN, "OPENAI_API_KEY": FAKE_TOKEN + "x"}
    arguments = ["--repo", "org/fixture", "--models", "--merged", "--dry-run", "--out", str(out)]
    result = cli("publish", str(run_dir), *arguments, env=env)
    assert result.returncode == 0, result.stderr
    assert "iter-2" in result.stdout and "published 6 version(s) (dry run)" in result.stdout
    return out


def dataset_root(out: Path, repo: str = "org/fixture") -> Path:
    return out / "datasets" / repo


def load(out: Path, config: str):
    """`load_dataset` on an export, with a cache of its own (datasets' cache key for a local
    folder can collide between exports of the same name)."""
    return load_dataset(str(dataset_root(out)), config, split="train", cache_dir=str(out.parent / "ds-cache"))


def test_every_config_loads_with_the_rows_of_every_iteration(run_dir: Path, exported: Path) -> None:
    run = RunFolder(run_dir)
    for config in CONFIGS:
        loaded = load(exported, config)
        if config in FINAL_FOLDERS:
            expected = run.stats(config)["rows_out"]
        else:
            expected = sum(run.stats(config, k)["rows_out"] for k in (1, 2))
        assert loaded.num_rows == expected > 0, config
        assert sorted(set(loaded["iteration"])) == [1, 2], config
    final = load(exported, "final")
    assert {"messages", "constraint_type", "target_words"} <= set(final.column_names)


def test_each_version_is_tagged_with_its_own_files_and_earlier_files_are_never_rewritten(
    exported: Path,
) -> None:
    folder = DryRunFolder(exported, "org/fixture", "dataset")
    refs = json.loads(folder.refs.read_text())
    assert list(refs) == ["iter-1", "iter-2"]
    first, second = refs["iter-1"]["files"], refs["iter-2"]["files"]
    # the card, config and stats travel in the same commit as the data
    for files, k in ((first, 1), (second, 2)):
        assert {"README.md", "run/config.yaml", "run/train_recipe.yaml"} <= set(files)
        assert {f"data/{config}/iter-{k}-00000.parquet" for config in ITERATION_FOLDERS} <= set(files)
        assert {f"stats/iter-{k}/{config}.json" for config in ITERATION_FOLDERS} <= set(files)
    assert not any(path.startswith(("data/long", "data/final")) for path in first)
    assert {"data/long/00000.parquet", "data/final/00000.parquet"} <= set(second)
    assert not any("iter-1-" in path for path in second)  # iteration 1's shards are not re-sent
    on_main = tree(folder.root)
    for path, digest in first.items():
        if path.startswith("data/"):
            assert on_main[path] == digest


def test_the_dataset_card_parses_validates_and_states_what_stats_json_says(
    run_dir: Path, exported: Path
) -> None:
    run = RunFolder(run_dir)
    card = DatasetCard.load(dataset_root(exported) / "README.md")
    metadata = card.data.to_dict()
    assert DatasetCardData(**metadata).to_dict() == metadata
    assert metadata["language"] == ["en", "zh"]  # iteration 2 has a Chinese instruction
    assert metadata["task_categories"] == ["text-generation"]
    assert metadata["size_categories"][0] in SIZE_CATEGORIES
    assert {"self-lengthen", "synthetic", "long-form"} <= set(metadata["tags"])
    assert metadata["license"] == "apache-2.0"  # the embedded model's
    assert metadata["source_models"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert set(configs) == set(CONFIGS)
    text = card.text
    for config in ITERATION_FOLDERS:
        section = text.split(f"### `{config}`")[1].split("###")[0]
        for k in (1, 2):
            stats = run.stats(config, k)
            words = stats["words"]
            row = f"| {k} | {stats['rows_out']} | {words['mean']} | {words['median']} | {words['max']} |"
            assert row in section, (config, row)
        assert f"(plots/words-{config}.png)" in section
    for config in FINAL_FOLDERS:
        stats = run.stats(config)
        assert f"| 1–2 | {stats['rows_out']} | {stats['words']['mean']} |" in text
    for k in (1, 2):
        generate = run.stats("initial", k)
        for reason, count in generate["rejected_attempts"].items():
            assert f"| {k} | generate | attempt rejected | {reason} | {count} |" in text
        for reason, counts in generate["stopped_early"].items():
            assert (
                f"| {k} | generate | of which stopped early | {reason} ({counts['completion_tokens']} tokens "
                f"generated) | {counts['requests']} |" in text
            )
        assert (
            f"| {k} | generate | row dropped | length-weighted sampler | {generate['dropped_by_sampler']} |"
            in text
        )
        for reason, count in run.stats("extended", k)["failed_rows"].items():
            assert f"| {k} | extend | row dropped | {reason} | {count} |" in text
    assert 'load_dataset("org/fixture", "extended", split="train", revision="iter-2")' in text
    assert "The previous version of this dataset is `iter-1`." in text
    named = ", ".join(f"`{name}`" for name in run.config.filters)
    assert f"- Filters every generated answer passes, in order: {named}\n" in text
    for config in CONFIGS:
        png = dataset_root(exported) / "plots" / f"words-{config}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_published_stats_are_the_run_stats_with_portable_paths(run_dir: Path, exported: Path) -> None:
    for k in (1, 2):
        for config in ITERATION_FOLDERS:
            published = json.loads(
                (dataset_root(exported) / "stats" / f"iter-{k}" / f"{config}.json").read_text()
            )
            local = json.loads((run_dir / f"iter_{k}" / config / "stats.json").read_text())
            assert set(local.pop("shards")) == {"part-00000.parquet"}  # local files only: not published
            assert published == local
        result = json.loads(
            (dataset_root(exported) / "stats" / "iter-2" / "train-generator.json").read_text()
        )
        assert result["continued_from"] == "<run>/models/iter_1/generator/adapter"
    initial = load(exported, "initial")
    assert sorted(set(initial["model"])) == ["<run>/models/iter_1/generator/merged", "smollm2-135m"]


def test_model_versions_carry_the_adapter_a_card_and_no_local_path(run_dir: Path, exported: Path) -> None:
    for role, dataset_config in (("generator", "gen_sft"), ("extender", "ext_sft")):
        folder = DryRunFolder(exported, f"org/fixture-{role}", "model")
        assert list(json.loads(folder.refs.read_text())) == ["iter-1", "iter-2"]
        files = set(tree(folder.root))
        assert {"adapter_config.json", "adapter_model.safetensors", "train_result.json", "README.md"} <= files
        assert {"merged/config.json", "merged/model.safetensors"} <= files
        assert "training_args.bin" not in files  # a pickle that could hold credentials
        adapter = json.loads((folder.root / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        card = ModelCard.load(folder.root / "README.md")
        metadata = card.data.to_dict()
        assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert metadata["datasets"] == ["org/fixture"] and metadata["library_name"] == "peft"
        result = json.loads(
            (run_dir / "models" / "iter_2" / role / "adapter" / "train_result.json").read_text()
        )
        assert f"Final training loss: {round(result['training_loss'], 4)}" in card.text
        assert (
            f'load_dataset("org/fixture", "{dataset_config}", split="train", revision="iter-2")' in card.text
        )
        assert "Continues the adapter of iteration 1" in card.text
        # iteration 2 is the run's last: no iteration 3 uses it (the iter-1 card names iteration 2)
        assert "iteration 3" not in card.text and f"the run's last {role}" in card.text
        assert 'from_pretrained(f"org/fixture-' not in card.text
        assert (
            f'AutoPeftModelForCausalLM.from_pretrained("org/fixture-{role}", revision="iter-2")' in card.text
        )


def test_no_token_and_no_local_path_reaches_any_published_file(run_dir: Path, exported: Path) -> None:
    for path in exported.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert FAKE_TOKEN.encode() not in content, path
            if path.suffix in (".md", ".json", ".yaml"):
                assert str(run_dir.parent).encode() not in content, path


def test_publishing_a_published_iteration_is_refused_and_changes_nothing(
    run_dir: Path, exported: Path
) -> None:
    before = tree(exported)
    for extra in ([], ["--force"], ["--models"]):
        arguments = ["--repo", "org/fixture", "--iteration", "1", "--dry-run", "--out", str(exported), *extra]
        result = cli("publish", str(run_dir), *arguments)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "selflengthen: error: org/fixture: iter-1 is already published and a published version is never "
            "moved or overwritten (publish the run under another repo id)"
        ]
    result = cli("publish", str(run_dir), "--repo", "org/fixture", "--dry-run", "--out", str(exported))
    assert result.returncode == 2 and "all published already" in result.stderr
    assert tree(exported) == before


def test_versions_go_in_order_and_all_skips_the_published_ones(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SelflengthenError, match="iter-1 is not published yet"):
        dry_run(run_dir, tmp_path, iteration=2)
    assert not (tmp_path / "datasets").exists()
    assert [version.tag for version in dry_run(run_dir, tmp_path, iteration=1)] == ["iter-1"]
    published = dry_run(run_dir, tmp_path, models=True)
    # the dataset's iter-1 exists: only its iter-2, and both models' iter-1 and iter-2
    assert [(version.destination.repo_id, version.tag) for version in published] == [
        ("org/fixture-generator", "iter-1"),
        ("org/fixture-extender", "iter-1"),
        ("org/fixture", "iter-2"),
        ("org/fixture-generator", "iter-2"),
        ("org/fixture-extender", "iter-2"),
    ]


def test_an_interrupted_publish_needs_force_and_never_moves_a_tag(run_dir: Path, tmp_path: Path) -> None:
    dry_run(run_dir, tmp_path, iteration=1)
    # a commit of iteration 2's files whose tag was never created (killed between the two calls)
    folder = DryRunFolder(tmp_path, "org/fixture", "dataset")
    shard = run_dir / "iter_2" / "initial" / "data" / "part-00000.parquet"
    folder.commit({"data/initial/iter-2-00000.parquet": shard}, "interrupted")
    with pytest.raises(SelflengthenError, match="files of iteration 2 are on main without the tag iter-2"):
        dry_run(run_dir, tmp_path, iteration=2)
    assert [version.tag for version in dry_run(run_dir, tmp_path, iteration=2, force=True)] == ["iter-2"]
    assert list(json.loads(folder.refs.read_text())) == ["iter-1", "iter-2"]


def test_a_publish_killed_mid_copy_leaves_no_temporary_file_once_rerun(run_dir: Path, tmp_path: Path) -> None:
    """kill -9 runs no cleanup: what a killed publish left half-copied (the temporary files of
    its atomic writes) is gone after the rerun, which then matches a clean publish."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    dry_run(run_dir, clean, iteration=1)
    folder = DryRunFolder(killed, "org/fixture", "dataset")
    stray = [
        folder.root / "stats" / "iter-1" / ".train-generator.json.k1ll3d_9.tmp",
        folder.root / "data" / "initial" / ".iter-1-00000.parquet.abcdefgh.tmp",
        folder.refs.parent / ".fixture.json.zz_00000.tmp",
    ]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    kept = folder.root / "notes" / ".keep.tmp"  # not a name our writers give: not ours to delete
    kept.parent.mkdir(parents=True)
    kept.write_text("the user's")
    dry_run(run_dir, killed, iteration=1, force=True)
    assert not any(path.exists() for path in stray)
    kept.unlink()
    assert tree(killed / "datasets") == tree(clean / "datasets")


@pytest.mark.parametrize(
    ("make", "arguments", "message"),
    [
        (None, ["--repo", "no-slash"], "--repo: expected ORG/NAME, got 'no-slash'"),
        (None, ["--repo", "a/b/c"], "--repo: expected ORG/NAME, got 'a/b/c'"),
        (None, ["--repo", "org/bad name"], "--repo: 'org/bad name' is not a valid repo id"),
        (
            {"trained": 0, "final": False},
            ["--repo", "o/n"],
            "no finished iteration to publish (iteration 1 lacks: ",
        ),
        (
            {"trained": 1, "final": False},
            ["--repo", "o/n", "--iteration", "2"],
            "--iteration 2: not finished in",
        ),
        (None, ["--repo", "o/n", "--iteration", "3"], "--iteration 3: the run has iterations 1..2"),
        (None, ["--repo", "o/n", "--merged"], "--merged: only with --models"),
        (None, ["--repo", "o/n", "--iteration", "1", "--all"], "--iteration and --all: give one of them"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_written(
    tmp_path: Path, run_dir: Path, make: dict | None, arguments: list[str], message: str
) -> None:
    source = make_run(tmp_path / "partial", **make) if make else run_dir
    out = tmp_path / "out"
    result = cli("publish", str(source), *arguments, "--dry-run", "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selflengthen: error: ") and message in lines[0], lines
    assert not out.exists()


def test_not_a_run_folder_and_dry_run_without_out(tmp_path: Path) -> None:
    result = cli("publish", str(tmp_path), "--repo", "o/n", "--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "not a run folder (no config.yaml" in result.stderr
    result = cli("publish", str(tmp_path), "--repo", "o/n", "--dry-run")
    assert result.returncode == 2 and "--dry-run and --out go together" in result.stderr


def test_a_real_push_without_a_token_stops_before_any_network_call(run_dir: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    result = cli("publish", str(run_dir), "--repo", "org/fixture", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "selflengthen: error: no Hugging Face token: set HF_TOKEN or run `hf auth login` "
        "(or use --dry-run --out DIR)"
    ]


def test_the_published_config_has_no_local_paths(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1, engine={"vllm_args": ["--max-num-seqs", "8"]})
    text = published_config(load_config(run_dir / "config.yaml"))
    assert str(tmp_path) not in text
    data = yaml.safe_load(text)
    assert data["engine"]["vllm_args"] == ["--max-num-seqs", "8"]
    assert data["train"]["recipe"] == "train_recipe.yaml" and data["run_dir"] is None


def test_a_run_with_one_finished_iteration_publishes_just_that(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "r", iterations=2, trained=1, final=False)
    versions = dry_run(run_dir, tmp_path / "out")
    assert [version.tag for version in versions] == ["iter-1"]
    card = DatasetCard.load(dataset_root(tmp_path / "out") / "README.md")
    assert "This is the first version of this dataset." in card.text
    assert not re.search(r"^### `(long|final)`", card.text, re.MULTILINE)
    assert [entry["config_name"] for entry in card.data.to_dict()["configs"]] == list(ITERATION_FOLDERS)


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove", "extra"])
def test_a_damaged_shard_is_one_line_naming_it_and_nothing_is_published(tmp_path: Path, damage: str) -> None:
    """Each shard's size and SHA-256 are recorded when its step finishes and checked before a
    step or `publish` reads it: a damaged iteration-2 shard stops the whole publish, healthy
    iteration 1 included, before anything is written."""
    run_dir = make_run(tmp_path / "run")
    shard = run_dir / "iter_2" / "extended" / "data" / "part-00000.parquet"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        shard.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "remove":
        shard.unlink()
    else:
        (shard.parent / "part-00001.parquet").write_bytes(data)
    out = tmp_path / "out"
    result = cli("publish", str(run_dir), "--repo", "o/n", "--dry-run", "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    expected = {
        "truncate": "damaged",
        "flip": "damaged",
        "remove": "missing",
        "extra": "not written by the step",
    }
    assert str(shard.parent) in lines[0] and expected[damage] in lines[0]
    assert not out.exists()
    with pytest.raises(SelflengthenError, match=expected[damage]):
        RunFolder.open(run_dir).read("extended", 2)


def test_the_dataset_card_describes_every_column_of_every_config(exported: Path) -> None:
    card = DatasetCard.load(dataset_root(exported) / "README.md")
    described = set(re.findall(r"^\| `(\w+)` \| `", card.text, re.MULTILINE))
    for config in CONFIGS:
        assert set(load(exported, config).column_names) <= described, config


@pytest.mark.parametrize(
    "written",
    [
        "runs/smollm2-cpu/models/iter_1/generator/merged",  # relative, as `make demo` writes it
        "/somewhere/else/runs/x/models/iter_1/generator/merged",
        "./models/iter_1/generator/merged",
    ],
)
def test_portable_names_a_run_model_however_the_run_folder_was_named(written: str) -> None:
    assert portable(f'{{"model": "{written}"}}', Path("/not/the/run")) == (
        '{"model": "<run>/models/iter_1/generator/merged"}'
    )
    assert portable("smollm2-135m and <run>/models/iter_2/extender/adapter", Path("/r")) == (
        "smollm2-135m and <run>/models/iter_2/extender/adapter"
    )
