import random
import re
from pathlib import Path

import polars as pl
import pytest
from datasets import load_dataset
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.builders.collect import run_collect
from selflengthen.builders.extend import EXTENDED_SCHEMA
from selflengthen.builders.folder import finish_step, step_folder
from selflengthen.builders.generate import INITIAL_SCHEMA
from selflengthen.builders.length_control import constrained_instruction, constraint_for, final_frame
from selflengthen.builders.sft_data import drop_lines, run_build_sft
from selflengthen.config import LengthControlSection
from selflengthen.errors import SelflengthenError
from selflengthen.length_scores import length_following_score, target_interval
from selflengthen.loop import parse_iterations
from selflengthen.prompts import variants
from selflengthen.text import count_words


def initial_row(row_id: str, iteration: int, response: str, instruction: str | None = None) -> dict:
    return {
        "id": row_id, "iteration": iteration, "instruction_id": row_id.rsplit("-s", 1)[0],
        "instruction": instruction or f"Write about {row_id}.", "language": "en", "response": response,
        "words": count_words(response), "finish_reason": "stop", "attempts": 1, "model": "m",
        "sampling": "{}",
    }  # fmt: skip


def extended_row(initial: dict, extended: str) -> dict:
    return {
        "id": initial["id"], "iteration": initial["iteration"], "instruction_id": initial["instruction_id"],
        "instruction": initial["instruction"], "language": initial["language"],
        "initial_response": initial["response"], "initial_words": initial["words"],
        "extended_response": extended, "extended_words": count_words(extended), "rounds": 1, "attempts": 1,
        "finish_reason": "stop", "model": "m", "sampling": "{}",
    }  # fmt: skip


def write_iteration(run_dir: Path, iteration: int, rows: list[tuple[str, ...]]) -> None:
    """`rows`: (id, initial response, extended response[, instruction])."""
    initial = [initial_row(row[0], iteration, row[1], *row[3:]) for row in rows]
    extended = [extended_row(first, row[2]) for first, row in zip(initial, rows, strict=True)]
    finish_step(step_folder(run_dir, iteration, "initial"), pl.DataFrame(initial, schema=INITIAL_SCHEMA), {})
    finish_step(
        step_folder(run_dir, iteration, "extended"), pl.DataFrame(extended, schema=EXTENDED_SCHEMA), {}
    )


@given(st.lists(st.text(alphabet="ab \n", max_size=12), min_size=1, max_size=30), st.floats(0, 0.99))
def test_drop_lines_keeps_lines_in_order_with_their_breaks(lines: list[str], probability: float) -> None:
    text = "\n".join(line.replace("\n", "") for line in lines)
    if not text.strip():
        return
    kept = drop_lines(text, probability, random.Random(1))
    source = text.splitlines()
    assert kept.strip() and all(line in source for line in kept.splitlines())
    assert "\n\n\n" not in kept
    positions, start = [], 0
    for line in kept.splitlines():  # a subsequence of the source lines
        start = source.index(line, start) + 1
        positions.append(start)
    assert positions == sorted(positions)


def test_drop_lines_rate_is_about_the_probability() -> None:
    text = "\n".join(f"line {n}" for n in range(10_000))
    kept = drop_lines(text, 0.2, random.Random(0)).splitlines()
    assert 0.78 < len(kept) / 10_000 < 0.82
    assert drop_lines(text, 0.0, random.Random(0)) == text
    paragraphs = "\n\n".join(f"paragraph {n}" for n in range(50))
    assert "\n\n\n" not in drop_lines(paragraphs, 0.5, random.Random(0))


def test_build_sft_writes_two_trl_conversational_datasets(tmp_path: Path) -> None:
    draft = "First line.\nSecond line.\n\nThird paragraph."
    write_iteration(tmp_path, 1, [("i1-00000-s0", draft, "A much longer answer. " * 20)])
    extended = step_folder(tmp_path, 1, "extended").read()
    stats = run_build_sft(tmp_path, 1, extended, 0.2, seed=0)
    assert stats["gen_sft"]["rows_out"] == stats["ext_sft"]["rows_out"] == 1
    gen = load_dataset(str(tmp_path / "iter_1" / "gen_sft"), split="train")
    ext = load_dataset(str(tmp_path / "iter_1" / "ext_sft"), split="train")
    assert gen[0]["messages"] == [
        {"role": "user", "content": "Write about i1-00000-s0."},
        {"role": "assistant", "content": "A much longer answer. " * 20},
    ]
    prompt = ext[0]["messages"][0]["content"]
    assert (
        "Write about i1-00000-s0." in prompt
        and ext[0]["messages"][1]["content"] == gen[0]["messages"][1]["content"]
    )
    assert any(line in prompt for line in draft.splitlines() if line)
    again = run_build_sft(tmp_path, 1, extended, 0.2, seed=0)  # finished: read back, not rebuilt
    assert again == stats


def test_collect_deduplicates_and_labels_origins(tmp_path: Path) -> None:
    write_iteration(
        tmp_path, 1, [("i1-00000-s0", "short one", "long one"), ("i1-00001-s0", "other", "other long")]
    )
    # iteration 2 repeats an instruction and its short answer: that pair is kept once
    write_iteration(tmp_path, 2, [("i2-00000-s0", "short one", "long two", "Write about i1-00000-s0.")])
    stats = run_collect(tmp_path, iterations=2, extra=False)
    long = pl.read_parquet(tmp_path / "long" / "data" / "*.parquet")
    assert stats["rows_in"] == 6 and stats["duplicates_dropped"] == 1 and long.height == 5
    assert set(long["origin"]) == {"initial", "extended"}
    assert long.filter(pl.col("response") == "short one")["iteration"].to_list() == [1]
    assert long["id"].n_unique() == long.height


SETTINGS = LengthControlSection(min_words=2000, max_words=8000, round_to=1000, coarse_round_to=2000)


SMALL = LengthControlSection(min_words=200, max_words=2000, round_to=100, coarse_round_to=200)


@given(st.sampled_from([SETTINGS, SMALL]), st.integers(0, 10_000), st.integers(0, 10_000))
def test_every_constraint_is_followed_fully_under_the_eval_score(
    settings: LengthControlSection, offset: int, seed: int
) -> None:
    """Scored with `eval`'s own functions: each answer scores 100 on its constraint, and
    low_words..high_words is the interval eval scores (302 words were once "around 400")."""
    words = settings.min_words + offset % (settings.max_words - settings.min_words + 1)
    constraint = constraint_for(words, settings, random.Random(seed))
    kind, written = constraint["constraint_type"], constraint["target_words"]
    low, high = constraint["low_words"], constraint["high_words"]
    numbers = [low, high] if kind == "range" else written
    assert length_following_score(words, *target_interval(kind, numbers)) == 100.0
    assert (low, high) == tuple(round(bound) for bound in target_interval(kind, numbers))
    assert low <= words <= high and low < high
    if kind == "above":
        assert written < words and written % settings.round_to == 0
    if kind == "below":
        assert words < written and written % settings.round_to == 0
    if kind == "range":
        assert written is None and low < words < high


@pytest.mark.parametrize(("words", "unit"), [(302, 200), (390, 200), (250, 200)])
def test_a_unit_that_cannot_be_followed_falls_back_to_the_fine_one(words: int, unit: int) -> None:
    settings = LengthControlSection(
        min_words=200, max_words=2000, round_to=100, coarse_round_to=unit, coarse_probability=1.0,
        weights={"about": 1.0, "range": 0.0, "above": 0.0, "below": 0.0},
    )  # fmt: skip
    constraint = constraint_for(words, settings, random.Random(0))
    assert constraint["constraint_type"] == "about"
    assert constraint["low_words"] <= words <= constraint["high_words"]


def test_constraint_mix_and_rounding_follow_the_settings() -> None:
    rng = random.Random(0)
    draws = [constraint_for(4321, SETTINGS, rng) for _ in range(20_000)]
    share = {kind: sum(d["constraint_type"] == kind for d in draws) / len(draws) for kind in SETTINGS.weights}
    for kind, weight in SETTINGS.weights.items():
        assert abs(share[kind] - weight) < 0.02
    abouts = [d["target_words"] for d in draws if d["constraint_type"] == "about"]
    assert abs(sum(t == 4000 for t in abouts) / len(abouts) - 1.0) < 0.01  # 4321 rounds to 4000 either way
    draws = [constraint_for(5200, SETTINGS, rng) for _ in range(20_000)]
    abouts = [d["target_words"] for d in draws if d["constraint_type"] == "about"]
    coarse = sum(t == 6000 for t in abouts) / len(abouts)
    assert abs(coarse - 0.2) < 0.02  # 5200 -> 5000 by thousands, 6000 by two thousands


# "More than" and "less than" in each language; the reference implementation's Chinese templates
# swapped them. (不少于 "not less than" means more; 不超过 "not more than" means less.)
MORE = {"en": r"(?<!no )more than|longer than|at least|over", "zh": r"多于|(?<!不)超过|不少于"}
LESS = {"en": r"less than|shorter than|under|no more than|fewer than", "zh": r"(?<!不)少于|不超过|以内"}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_templates_say_what_the_constraint_means(language: str) -> None:
    for chosen in variants(language, "length_above"):
        text = chosen.template
        assert re.search(MORE[language], text) and not re.search(LESS[language], text) and "$low" in text
    for chosen in variants(language, "length_below"):
        text = chosen.template
        assert re.search(LESS[language], text) and not re.search(MORE[language], text) and "$high" in text
    for name in ("length_about", "length_range", "length_above", "length_below"):
        assert len(variants(language, name)) >= 3
        assert all("$instruction" in chosen.template for chosen in variants(language, name))


def test_constrained_instruction_keeps_the_instruction_intact() -> None:
    constraint = {"constraint_type": "below", "target_words": 3000, "low_words": 1500, "high_words": 3000}
    for seed in range(10):
        text = constrained_instruction("Write a story about tea", "en", constraint, random.Random(seed))
        assert "Write a story about tea." in text and "3000" in text
        text = constrained_instruction("写一篇关于茶的故事", "zh", constraint, random.Random(seed))
        assert "写一篇关于茶的故事。" in text and "3000字" in text


def test_final_frame_keeps_the_length_window_and_writes_messages() -> None:
    long = pl.DataFrame(
        {
            "id": ["a", "b", "c"], "iteration": [1, 1, 2], "origin": ["initial", "extended", "extended"],
            "instruction_id": ["a", "b", "c"], "instruction": ["Do a.", "Do b.", "做c。"],
            "language": ["en", "en", "zh"], "response": ["x", "y", "z"], "words": [1500, 2500, 8000],
        }
    )  # fmt: skip
    final = final_frame(long, SETTINGS, seed=0)
    assert final["id"].to_list() == ["b", "c"]
    row = final.row(0, named=True)
    assert row["messages"] == [
        {"role": "user", "content": row["instruction"]},
        {"role": "assistant", "content": "y"},
    ]
    assert row["original_instruction"] == "Do b." and row["instruction"] != "Do b."


def test_parse_iterations() -> None:
    assert parse_iterations(None, 3) == range(1, 4)
    assert parse_iterations("2", 3) == range(2, 3)
    assert parse_iterations("2-3", 3) == range(2, 4)
    for bad in ("0", "4", "3-2", "x", "1-9"):
        with pytest.raises(SelflengthenError, match="--iterations"):
            parse_iterations(bad, 3)


def test_collect_includes_the_final_generators_extra_answers(tmp_path: Path) -> None:
    write_iteration(tmp_path, 1, [("i1-00000-s0", "short", "long")])
    extra = [initial_row("i2-00000-s0", 2, "an answer of the final generator")]
    finish_step(step_folder(tmp_path, 2, "initial"), pl.DataFrame(extra, schema=INITIAL_SCHEMA), {})
    stats = run_collect(tmp_path, iterations=1, extra=True)
    assert stats["sources"] == {"iter_1/initial": 1, "iter_1/extended": 1, "iter_2/initial": 1}
    assert stats["rows_by_origin"] == {"extended": 1, "final_generator": 1, "initial": 1}
