"""Prompt templates (English and Chinese) and the seed instructions, shipped as package data."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from string import Template

from selflengthen.text import token_spans

#: The languages our templates are written in; a text in another language is prompted in English.
LANGUAGES = ("en", "zh")
#: A text is Chinese when at least this share of its words are CJK characters.
CHINESE_SHARE = 0.3
#: Other scripts, each with the language a text mostly written in it is labelled with: the
#: script's most-written language, a guess from the script alone (as `en` is for any text in
#: Latin letters). Japanese, whose kanji count as CJK words, is labelled `zh`.
SCRIPT_LANGUAGES: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("ar", ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
    ("he", ((0x0590, 0x05FF), (0xFB1D, 0xFB4F))),
    ("ru", ((0x0400, 0x052F),)),
    ("el", ((0x0370, 0x03FF), (0x1F00, 0x1FFF))),
    ("hi", ((0x0900, 0x097F),)),
    ("th", ((0x0E00, 0x0E7F),)),
    ("ko", ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))),
)
#: A text is in a script's language when that script writes at least this share of its letters.
SCRIPT_SHARE = 0.5


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up a good share of the words; else the language of another
    script (`SCRIPT_LANGUAGES`) that writes at least half the letters (an Arabic instruction is
    `ar`, not `en`); else 'en'."""
    is_cjk = token_spans(text).is_cjk
    if len(is_cjk) and is_cjk.sum() >= CHINESE_SHARE * len(is_cjk):
        return "zh"
    if text.isascii():
        return "en"
    letters = [ord(char) for char in text if char.isalpha()]
    for language, ranges in SCRIPT_LANGUAGES:
        written = sum(1 for code in letters if any(low <= code <= high for low, high in ranges))
        if letters and written >= SCRIPT_SHARE * len(letters):
            return language
    return "en"


def prompt_language(language: str) -> str:
    """The language of the templates a text in `language` is prompted with."""
    return language if language in LANGUAGES else "en"


@cache
def template(language: str, name: str) -> Template:
    """The prompt template `name` (self_instruct, judge, extend) for `language`."""
    path = resources.files(__package__).joinpath(prompt_language(language), f"{name}.txt")
    return Template(path.read_text(encoding="utf-8").strip())


@cache
def variants(language: str, name: str) -> tuple[Template, ...]:
    """The templates of a file that holds one variant per line (e.g. length_about)."""
    path = resources.files(__package__).joinpath(prompt_language(language), f"{name}.txt")
    return tuple(
        Template(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    )


@cache
def judge_yes_words(language: str) -> tuple[str, ...]:
    """Answers of the judge that mean yes, lower-cased."""
    path = resources.files(__package__).joinpath(prompt_language(language), "judge_yes.txt")
    text = path.read_text(encoding="utf-8")
    return tuple(line.strip().lower() for line in text.splitlines() if line.strip())


def shipped_seeds() -> list[dict[str, str]]:
    """Our own seed instructions, English then Chinese (rows with `id` and `instruction`)."""
    rows = []
    for language in LANGUAGES:
        path = resources.files(__package__).joinpath("seeds", f"{language}.jsonl")
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows
