"""Filters as configuration: the ordered list of datatrove filters every generated answer must
pass (the run config's `filters:`, a step command's `--filters`).

An entry is a filter's name, or a mapping of one name to its keyword arguments:

    filters:
      - ending
      - repetition: {ngram: 8}
      - datatrove.pipeline.filters:FineWebQualityFilter: {line_punct_thr: 0.05}

A name is one of ours (`FILTERS`: its module plus one line here registers a new one) or any
importable datatrove `BaseFilter` as `module:Class`. Early stop follows the list: a filter that
can decide on a prefix offers a watch (`selflengthen.filters.prefix.watch_of`); any other filter
judges the finished text only.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datatrove.pipeline.filters.base_filter import BaseFilter

from selflengthen.filters.character_loop import CharacterLoopFilter
from selflengthen.filters.ending import EndingFilter
from selflengthen.filters.length import LengthFilter
from selflengthen.filters.meta_comment import MetaCommentFilter
from selflengthen.filters.repetition import RepetitionFilter

#: Our filters of a text alone, by the name a config gives them.
FILTERS: dict[str, type[BaseFilter]] = {
    "ending": EndingFilter,
    "repetition": RepetitionFilter,
    "character-loop": CharacterLoopFilter,
    "meta-comment": MetaCommentFilter,
    "length": LengthFilter,
}
#: What every answer must pass unless a config says otherwise (the order they are checked in).
DEFAULT_FILTERS: tuple[str, ...] = ("ending", "repetition", "character-loop", "meta-comment")


class FilterConfigError(ValueError):
    """A `filters:` entry that cannot become a filter (the message names the entry)."""


@dataclass(frozen=True)
class FilterEntry:
    """One configured filter: its name (ours, or `module:Class`) and keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> BaseFilter:
        """The filter; a bad name or argument is a `FilterConfigError` saying what is wrong."""
        kind = FILTERS.get(self.name) or _imported(self.name)
        try:
            made = kind(**self.kwargs)
        except (TypeError, ValueError) as error:
            raise FilterConfigError(str(error)) from None
        if not isinstance(made, BaseFilter):
            raise FilterConfigError("not a datatrove BaseFilter")
        return made

    def describe(self) -> dict[str, Any]:
        """The entry as stats.json and the dataset card name it."""
        return {"filter": self.name, **self.kwargs}


def _imported(name: str) -> type[BaseFilter]:
    module_name, colon, class_name = name.partition(":")
    if not colon or not module_name or not class_name:
        raise FilterConfigError(f"unknown filter (ours: {', '.join(FILTERS)}; any other as module:Class)")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        raise FilterConfigError(f"cannot import {module_name} ({error})") from None
    except AttributeError:
        raise FilterConfigError(f"{module_name} has no {class_name}") from None
    if not (isinstance(found, type) and issubclass(found, BaseFilter)):
        raise FilterConfigError("not a datatrove BaseFilter")
    return found


def parse_entries(value: Any) -> list[FilterEntry]:
    """The entries of a `filters:` list (see the module docstring), each checked by building
    its filter; a problem is a `FilterConfigError` naming the entry by position."""
    if not isinstance(value, list) or not value:
        raise FilterConfigError("expected a non-empty list of filters (names, or name: {arguments})")
    entries = []
    for position, item in enumerate(value, start=1):
        if isinstance(item, str):
            entry = FilterEntry(item)
        elif isinstance(item, dict) and len(item) == 1:
            ((name, kwargs),) = item.items()
            if kwargs is not None and not isinstance(kwargs, dict):
                raise FilterConfigError(f"entry {position} ({name}): its arguments must be a mapping")
            entry = FilterEntry(str(name), dict(kwargs or {}))
        else:
            raise FilterConfigError(
                f"entry {position}: expected a name or a mapping of one name to arguments"
            )
        try:
            entry.build()
        except FilterConfigError as error:
            raise FilterConfigError(f"entry {position} ({entry.name}): {error}") from None
        entries.append(entry)
    return entries


def default_entries() -> list[FilterEntry]:
    return [FilterEntry(name) for name in DEFAULT_FILTERS]


def as_config(entries: Sequence[FilterEntry]) -> list[str | dict[str, dict[str, Any]]]:
    """Entries written back the way a config writes them."""
    return [entry.name if not entry.kwargs else {entry.name: entry.kwargs} for entry in entries]
