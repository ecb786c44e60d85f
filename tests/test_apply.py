import json
from pathlib import Path

import datasets
import polars as pl
import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from selflengthen.filters import (
    EndingFilter,
    GrowthFilter,
    LengthFilter,
    MetaCommentFilter,
    RepetitionFilter,
    apply_filters,
)

REPEATED = "one two three four five six seven eight nine ten"
ROWS = [
    {"id": "ok-en", "text": "A complete answer about tea.", "initial": "tea"},
    {"id": "cut", "text": "An answer that stops in the", "initial": "x"},
    {"id": "repeat", "text": f"{REPEATED} and {REPEATED} again.", "initial": "x"},
    {"id": "meta", "text": "Here is the revised text.\nBody.", "initial": "x"},
    {"id": "ok-zh", "text": "这是一个完整的回应内容。", "initial": "短"},
    {"id": "none", "text": None, "initial": "x"},
    {"id": "short-growth", "text": "Too short.", "initial": "one two three four five"},
]
CHAIN = [EndingFilter, RepetitionFilter, MetaCommentFilter]


def make_chain() -> list:
    return [make() for make in CHAIN] + [GrowthFilter(source_key="initial", source_words_key=None)]


def expected_table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "filter": ["🔚 Ending", "🔚 Ending", "🔁 Repetition", "🗨 Meta-comment", "📈 Growth"],
            "reason": ["bad_ending", "missing_text", "repeated_ngram", "meta_comment", "too_little_growth"],
            "count": [1, 1, 1, 1, 1],
        }
    )


@pytest.mark.parametrize("kind", ["polars", "datasets"])
def test_apply_filters_keeps_rows_and_counts_reasons(kind: str) -> None:
    frame = pl.DataFrame(ROWS)
    data = frame if kind == "polars" else datasets.Dataset.from_polars(frame)
    report = apply_filters(data, make_chain())
    assert type(report.kept) is type(data)
    kept_ids = report.kept["id"].to_list() if kind == "polars" else report.kept["id"]
    assert kept_ids == ["ok-en", "ok-zh"]
    assert report.drop_reasons.sort("filter", "reason").equals(expected_table().sort("filter", "reason"))
    assert report.dropped_reasons[0] is None
    assert report.dropped_reasons[2] == f"🔁 Repetition: repeated_ngram: {REPEATED}"


def test_apply_filters_drops_once_in_pipeline_order() -> None:
    frame = pl.DataFrame({"text": ["cut off and " * 2 + "cut off and"]})  # repeated AND unfinished
    report = apply_filters(frame, [LengthFilter(min_words=100), EndingFilter()])
    assert report.drop_reasons.to_dicts() == [{"filter": "📏 Length", "reason": "too_short", "count": 1}]


def test_apply_filters_names_a_missing_column() -> None:
    with pytest.raises(ValueError, match="'body'"):
        apply_filters(pl.DataFrame({"text": ["a."]}), [EndingFilter()], text_column="body")
    with pytest.raises(TypeError, match="DataFrame"):
        apply_filters([{"text": "a."}], [EndingFilter()])  # type: ignore[arg-type]


def test_apply_filters_on_empty_table() -> None:
    report = apply_filters(pl.DataFrame({"text": []}, schema={"text": pl.String}), make_chain()[:3])
    assert report.kept.height == 0
    assert report.drop_reasons.height == 0


def test_filters_run_in_a_real_datatrove_pipeline(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    with (source / "docs.jsonl").open("w") as handle:
        for row in ROWS:
            if row["text"] is not None:
                handle.write(json.dumps(row) + "\n")
        handle.write(json.dumps({"id": "no-text-field", "initial": "x"}) + "\n")
    executor = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(source)),
            *make_chain(),
            JsonlWriter(str(tmp_path / "out"), output_filename="kept.jsonl", compression=None),
        ],
        logging_dir=str(tmp_path / "logs"),
        tasks=1,
    )
    executor.run()
    kept = [json.loads(line)["id"] for line in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
    assert kept == ["ok-en", "ok-zh"]
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    counters = {step["name"].split(": ", 1)[1]: step["stats"] for step in stats}  # "🔻 - FILTER: 🔚 Ending"
    assert counters["🔚 Ending"]["dropped_bad_ending"] == 1
    assert counters["🔁 Repetition"]["dropped_repeated_ngram"] == 1  # one stat per kind, not per n-gram
    assert counters["📈 Growth"]["dropped_too_little_growth"] == 1
