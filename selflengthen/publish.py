"""`selflengthen publish`: each finished macro-iteration of a run becomes one version of a dataset
repository (and, with `--models`, of a Generator and an Extender model repository).

Version `iter-<k>` of the dataset holds iterations 1..k: every iteration adds its own shards
(`data/<config>/iter-<k>-<n>.parquet`), so earlier files are never rewritten; the card, the run
config, the step stats and the histograms are refreshed in the same commit, and that commit is
tagged `iter-<k>`. A tag that exists is never moved: publishing it again is refused. Versions
are published in order (iter-k needs iter-(k-1)). Every check runs before the first upload.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml
from huggingface_hub import HfApi

from selflengthen.atomic import write_json_atomic, write_text_atomic
from selflengthen.cards.common import base_model_info, model_repo_id
from selflengthen.cards.dataset import dataset_card
from selflengthen.cards.histogram import length_histogram
from selflengthen.cards.model import model_card
from selflengthen.config import RunConfig
from selflengthen.errors import SelflengthenError
from selflengthen.hub import Destination, DryRunFolder, HubRepo, check_repo_id, hub_token
from selflengthen.run_folder import RunFolder, response_words
from selflengthen.steps import FINAL_FOLDERS, INSTRUCTIONS, ITERATION_FOLDERS
from selflengthen.train.roles import ROLES

#: Adapter files that are not published: the card replaces PEFT's README, and the pickled
#: training arguments could carry credentials (e.g. `hub_token`).
_ADAPTER_SKIP = {"README.md", "training_args.bin", "train_result.json"}


@dataclass(frozen=True)
class PublishRequest:
    run_dir: Path
    repo_id: str
    iteration: int | None = None  # None: every finished iteration not yet published
    private: bool = False
    models: bool = False
    merged: bool = False
    force: bool = False
    dry_run_out: Path | None = None
    license_id: str | None = None


@dataclass
class Version:
    destination: Destination
    iteration: int
    files: dict[str, Path]
    message: str

    @property
    def tag(self) -> str:
        return f"iter-{self.iteration}"


def published_config(config: RunConfig) -> str:
    """The run config as published: local paths reduced to file names (the recipe is published
    as `train_recipe.yaml` beside it). (A config holds no secrets: see `secret_flag_problem`.)"""
    data = config.model_dump(mode="json")
    data["run_dir"] = None
    data["train"]["recipe"] = "train_recipe.yaml"
    for section, key in (("train", "accelerate_config"), ("self_instruct", "seeds")):
        if data[section][key]:
            data[section][key] = Path(data[section][key]).name
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


#: A path to one of the run's trained models, however the run folder was named when it was
#: written (absolute, relative to another working folder, `runs/<name>`...).
_RUN_MODEL_PATH = re.compile(
    r"(?<![\w<>/.-])(?:[^\s\"'<>]*/)?(models/iter_\d+/(?:generator|extender)/(?:merged|adapter))"
)


def portable(text: str, run_dir: Path) -> str:
    """`text` with the run folder's local path written as `<run>`, so that published stats and
    rows name models by their place in the run: the folder as given and resolved, and any path
    that ends in one of the run's model folders."""
    for prefix in sorted({str(run_dir.resolve()), str(run_dir)}, key=len, reverse=True):
        text = text.replace(prefix + "/", "<run>/")
    return _RUN_MODEL_PATH.sub(r"<run>/\1", text)


def _portable_copy(source: Path, run_dir: Path, target: Path) -> Path:
    """A copy of a stats/result JSON file or a parquet shard (its `model` column) with
    `portable` paths."""
    if source.suffix == ".parquet":
        frame = pl.read_parquet(source)
        if "model" in frame.columns:
            frame = frame.with_columns(pl.col("model").map_elements(lambda model: portable(model, run_dir)))
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(target)
    else:
        text = source.read_text(encoding="utf-8")
        if source.name == "stats.json":  # the shard checksums describe the local files only
            stats = json.loads(text)
            stats.pop("shards", None)
            text = json.dumps(stats, ensure_ascii=False, indent=2)
        write_text_atomic(portable(text, run_dir), target)
    return target


def _missing_steps(run: RunFolder, iteration: int) -> list[str]:
    missing = [config for config in ITERATION_FOLDERS if not run.folder(config, iteration).finished()]
    return missing + [f"train {role}" for role in ROLES if not run.role(iteration, role).finished()]


def select_iterations(run: RunFolder, iteration: int | None) -> list[int]:
    finished = run.finished_iterations()
    if not finished:
        raise SelflengthenError(
            f"{run.root}: no finished iteration to publish (iteration 1 lacks: "
            f"{', '.join(_missing_steps(run, 1))}); run `selflengthen run` first"
        )
    if iteration is None:
        return finished
    if not 1 <= iteration <= run.config.iterations:
        raise SelflengthenError(f"--iteration {iteration}: the run has iterations 1..{run.config.iterations}")
    if iteration not in finished:
        raise SelflengthenError(
            f"--iteration {iteration}: not finished in {run.root} "
            f"(missing: {', '.join(_missing_steps(run, iteration)) or f'iteration {iteration - 1}'})"
        )
    return [iteration]


def _check_versions(destination: Destination, wanted: list[int], explicit: bool, force: bool) -> list[int]:
    """The iterations of `wanted` to publish to `destination`: never one whose tag exists
    (an error when asked for explicitly, skipped otherwise), in order after the published ones."""
    tags = destination.tags()
    files = destination.files() if destination.repo_type == "dataset" else set()
    todo = []
    for iteration in wanted:
        tag = f"iter-{iteration}"
        if tag in tags:
            if explicit:
                raise SelflengthenError(
                    f"{destination.repo_id}: {tag} is already published and a published version is "
                    "never moved or overwritten (publish the run under another repo id)"
                )
            continue
        if iteration > 1 and f"iter-{iteration - 1}" not in tags and iteration - 1 not in todo:
            raise SelflengthenError(
                f"{destination.repo_id}: iter-{iteration - 1} is not published yet; versions go in "
                f"order (publish --iteration {iteration - 1} first, or leave out --iteration)"
            )
        leftover = sorted(path for path in files if re.match(rf"data/[^/]+/iter-{iteration}-", path))
        if leftover and not force:
            raise SelflengthenError(
                f"{destination.repo_id}: files of iteration {iteration} are on main without the tag "
                f"{tag} (an interrupted publish?), e.g. {leftover[0]}; --force publishes them again"
            )
        todo.append(iteration)
    return todo


def _dataset_files(
    run: RunFolder, repo_id: str, version: int, staging: Path, license_id: str
) -> dict[str, Path]:
    config = run.config
    last = version == config.iterations
    extra = run.extra_iteration() if last else None
    iterations = list(range(1, version + 1)) + ([extra] if extra else [])
    finals = run.final_configs() if last else []
    sources: dict[str, Path] = {}  # data and stats, published with portable paths
    for iteration in [version] + ([extra] if extra else []):
        for name in ITERATION_FOLDERS:
            if not run.folder(name, iteration).finished():
                continue  # the extra iteration has instructions and initial answers only
            for index, shard in enumerate(run.shards(name, iteration)):
                sources[f"data/{name}/iter-{iteration}-{index:05d}.parquet"] = shard
            sources[f"stats/iter-{iteration}/{name}.json"] = run.folder(name, iteration).stats
    for role in ROLES:
        sources[f"stats/iter-{version}/train-{role}.json"] = (
            run.role(version, role).adapter / "train_result.json"
        )
    for name in finals:
        for index, shard in enumerate(run.shards(name)):
            sources[f"data/{name}/{index:05d}.parquet"] = shard
        sources[f"stats/{name}.json"] = run.folder(name).stats
    files = {path: _portable_copy(source, run.root, staging / path) for path, source in sources.items()}
    histograms = {}
    for name in ITERATION_FOLDERS + FINAL_FOLDERS:
        if name in FINAL_FOLDERS and name not in finals:
            continue
        path = f"plots/words-{name}.png"
        unit = "instruction" if name == INSTRUCTIONS else "answer"
        length_histogram(
            _words_by_iteration(run, name, iterations), f"{name}: words per row", staging / path, unit
        )
        files[path] = staging / path
        histograms[name] = path
    write_text_atomic(published_config(config), staging / "run" / "config.yaml")
    files["run/config.yaml"] = staging / "run" / "config.yaml"
    files["run/train_recipe.yaml"] = run.root / "train_recipe.yaml"
    card = dataset_card(run, repo_id, version, iterations, finals, histograms, license_id)
    write_text_atomic(str(card), staging / "README.md")
    files["README.md"] = staging / "README.md"
    return files


def _words_by_iteration(run: RunFolder, name: str, iterations: list[int]) -> dict[str, list[int]]:
    if name in FINAL_FOLDERS:
        frame = run.read(name)
        frame = frame.with_columns(response_words(name, frame).alias("_words"))
        return {
            f"iteration {iteration}": frame.filter(pl.col("iteration") == iteration)["_words"].to_list()
            for iteration in sorted(frame["iteration"].unique())
        }
    return {
        f"iteration {iteration}": response_words(name, run.read(name, iteration)).to_list()
        for iteration in iterations
        if run.folder(name, iteration).finished()
    }


def _model_files(
    run: RunFolder, request: PublishRequest, role: str, iteration: int, staging: Path, license_id: str
) -> dict[str, Path]:
    trained = run.role(iteration, role)
    repo_id = model_repo_id(request.repo_id, role)
    folder = staging / role
    files = {  # the adapter, at the root
        path.name: path
        for path in sorted(trained.adapter.iterdir())
        if path.is_file() and path.name not in _ADAPTER_SKIP
    }
    adapter_config = json.loads((trained.adapter / "adapter_config.json").read_text())
    base = base_model_info(run.config.model)
    adapter_config["base_model_name_or_path"] = base.hub_id or base.short_name  # not a local path
    write_json_atomic(adapter_config, folder / "adapter_config.json")
    files["adapter_config.json"] = folder / "adapter_config.json"
    files["train_result.json"] = _portable_copy(
        trained.adapter / "train_result.json", run.root, folder / "train_result.json"
    )
    files["training_recipe.yaml"] = trained.folder / "recipe.yaml"
    if request.merged:
        files |= {f"merged/{path.name}": path for path in sorted(trained.merged.iterdir()) if path.is_file()}
    card = model_card(run, repo_id, request.repo_id, iteration, role, request.merged, license_id)
    write_text_atomic(str(card), folder / "README.md")
    files["README.md"] = folder / "README.md"
    return files


def _destinations(request: PublishRequest) -> tuple[Destination, dict[str, Destination]]:
    model_ids = {role: model_repo_id(request.repo_id, role) for role in ROLES} if request.models else {}
    for repo_id in model_ids.values():
        check_repo_id(repo_id, "--repo (with --models, ORG/NAME-generator and -extender)")
    if request.dry_run_out is not None:
        out = request.dry_run_out
        return DryRunFolder(out, request.repo_id, "dataset"), {
            role: DryRunFolder(out, repo_id, "model") for role, repo_id in model_ids.items()
        }
    api = HfApi(token=hub_token())
    return HubRepo(api, request.repo_id, "dataset", request.private), {
        role: HubRepo(api, repo_id, "model", request.private) for role, repo_id in model_ids.items()
    }


def publish(request: PublishRequest) -> list[Version]:
    """Check everything, then commit and tag each new version; returns what was published."""
    check_repo_id(request.repo_id)
    if request.merged and not request.models:
        raise SelflengthenError("--merged: only with --models")
    run = RunFolder.open(request.run_dir)
    wanted = select_iterations(run, request.iteration)
    dataset, models = _destinations(request)
    explicit = request.iteration is not None
    todo = {"dataset": _check_versions(dataset, wanted, explicit, request.force)}
    todo |= {
        role: _check_versions(destination, wanted, explicit, request.force)
        for role, destination in models.items()
    }
    if not any(todo.values()):
        raise SelflengthenError(
            f"{request.repo_id}: iterations {', '.join(map(str, wanted))} are all published already; "
            "nothing to do"
        )
    base = base_model_info(run.config.model)
    license_id = request.license_id or base.license or "unknown"
    published = []
    with tempfile.TemporaryDirectory(prefix="selflengthen-publish-") as scratch:
        versions = []
        for iteration in wanted:
            staging = Path(scratch) / f"iter-{iteration}"
            message = f"selflengthen: {run.config.name}, iteration {iteration}"
            if iteration in todo["dataset"]:
                files = _dataset_files(run, request.repo_id, iteration, staging / "dataset", license_id)
                versions.append(Version(dataset, iteration, files, message))
            for role, destination in models.items():
                if iteration in todo[role]:
                    files = _model_files(run, request, role, iteration, staging, license_id)
                    versions.append(Version(destination, iteration, files, f"{message} ({role})"))
        for version in versions:
            revision = version.destination.commit(version.files, version.message)
            version.destination.tag(version.tag, revision, version.message)
            published.append(version)
            print(
                f"{version.tag}: {len(version.files)} files -> {version.destination.describe()}", flush=True
            )
    return published
