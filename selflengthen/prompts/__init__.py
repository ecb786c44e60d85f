"""Prompt templates (English and Chinese) and the seed instructions, shipped as package data."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from string import Template

from selflengthen.text import token_spans

LANGUAGES = ("en", "zh")
#: A text is Chinese when at least this share of its words are CJK characters.
CHINESE_SHARE = 0.3


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up a good share of the words, else 'en'."""
    is_cjk = token_spans(text).is_cjk
    return "zh" if len(is_cjk) and is_cjk.sum() >= CHINESE_SHARE * len(is_cjk) else "en"


@cache
def template(language: str, name: str) -> Template:
    """The prompt template `name` (self_instruct, judge, extend) in `language`."""
    text = resources.files(__package__).joinpath(language, f"{name}.txt").read_text(encoding="utf-8")
    return Template(text.strip())


@cache
def variants(language: str, name: str) -> tuple[Template, ...]:
    """The templates of a file that holds one variant per line (e.g. length_about)."""
    text = resources.files(__package__).joinpath(language, f"{name}.txt").read_text(encoding="utf-8")
    return tuple(Template(line.strip()) for line in text.splitlines() if line.strip())


@cache
def judge_yes_words(language: str) -> tuple[str, ...]:
    """Answers of the judge that mean yes, lower-cased."""
    text = resources.files(__package__).joinpath(language, "judge_yes.txt").read_text(encoding="utf-8")
    return tuple(line.strip().lower() for line in text.splitlines() if line.strip())


def shipped_seeds() -> list[dict[str, str]]:
    """Our own seed instructions, English then Chinese (rows with `id` and `instruction`)."""
    rows = []
    for language in LANGUAGES:
        path = resources.files(__package__).joinpath("seeds", f"{language}.jsonl")
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows
