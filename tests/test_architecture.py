"""The package's imports run one way (docs/ARCHITECTURE.md): each module or subpackage of
`selflengthen` imports only from its own layer or the layers below it."""

import ast
from pathlib import Path

import selflengthen

PACKAGE = Path(selflengthen.__file__).parent

#: From the bottom up; a unit is a top-level module or a subpackage.
LAYERS = [
    {"errors", "text", "strict_yaml", "steps", "length_scores", "tables", "atomic", "prompts", "folder_lock"},
    {"relevance"},
    {"filters"},
    {"engine"},
    {"config_engine", "config", "interrupts"},
    {"builders"},
    {"train"},
    {"run_folder", "run_summary", "hub", "cards", "report"},
    {"eval", "loop", "publish", "cli_corpus", "cli_engine", "cli_steps", "cli_generation"},
    {"cli"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def _imports() -> dict[str, set[str]]:
    """The units each unit imports (other than itself)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selflengthen."):
                imported = node.module.split(".")[1]
                if imported != unit:
                    found.setdefault(unit, set()).add(imported)
    return found


def test_every_unit_has_a_layer() -> None:
    units = {path.relative_to(PACKAGE).with_suffix("").parts[0] for path in PACKAGE.rglob("*.py")}
    assert units - {"__init__"} <= set(LAYER_OF), units - set(LAYER_OF) - {"__init__"}


def test_no_import_runs_back_up() -> None:
    upward = [
        f"{unit} (layer {LAYER_OF[unit]}) imports {imported} (layer {LAYER_OF[imported]})"
        for unit, imported_units in _imports().items()
        for imported in imported_units
        if LAYER_OF[imported] > LAYER_OF[unit]
    ]
    assert upward == []
