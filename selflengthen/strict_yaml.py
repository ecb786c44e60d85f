"""YAML as a config reader should read it: a key written twice in one mapping is an error.

YAML parsers let the second occurrence win silently (the first block of settings vanishes), which
for a run config or a training recipe means a run that costs GPU-days does something its file
does not plainly say. Merge keys (`<<: *defaults`) keep their meaning: a key given explicitly
beside a merge overrides the merged one, as YAML intends.
"""

from __future__ import annotations

from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice; `lines` are the 1-based lines of both occurrences."""

    def __init__(self, key: Any, lines: tuple[int, int]) -> None:
        where = f"lines {lines[0]} and {lines[1]}" if lines[0] != lines[1] else f"line {lines[0]}"
        super().__init__(problem=f"key {key!r} appears twice ({where}); keep one")
        self.key, self.lines = key, lines


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, (seen[key], line))
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader refuses it with its own message
                break
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing a key written twice in one mapping (`DuplicateKeyError`)."""
    return yaml.load(text, Loader=_StrictLoader)
