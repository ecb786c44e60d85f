"""`selflengthen report` (selflengthen/report/): the numbers the page shows against the run's
stats.json files, the highlight of what the Extender inserted, rejected attempts with what the
filter found, and a partly finished run."""

import gzip
import json
import re
from pathlib import Path

import pytest
from datatrove.pipeline.inference.types import InferenceResult
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.builders.checks import ResponseChecks
from selflengthen.builders.tally import REJECTED_EXAMPLES, Tally
from selflengthen.errors import SelflengthenError
from selflengthen.filters.registry import default_entries
from selflengthen.report import write_report
from selflengthen.report.collect import FUNNEL, collect_run
from selflengthen.report.highlight import CONTINUED, EXPANDED, KEPT, extension_segments
from tests.run_fixture import make_run


def _stats(run_dir: Path, iteration: int, folder: str) -> dict:
    return json.loads((run_dir / f"iter_{iteration}" / folder / "stats.json").read_text())


def _update_stats(run_dir: Path, iteration: int, folder: str, **values: object) -> None:
    path = run_dir / f"iter_{iteration}" / folder / "stats.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | values))


def _write_rollouts(run_dir: Path, iteration: int, folder: str, documents: list[dict]) -> None:
    rollouts = run_dir / f"iter_{iteration}" / folder / "_work" / "rollouts"
    rollouts.mkdir(parents=True, exist_ok=True)
    with gzip.open(rollouts / "00000_chunk_0.jsonl.gz", "wt", encoding="utf-8") as stream:
        stream.writelines(json.dumps(document) + "\n" for document in documents)


def test_the_funnel_and_the_drop_reasons_are_the_counts_of_each_steps_stats(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    _update_stats(run_dir, 1, "initial", samples_requested=7, samples_accepted=5)
    _update_stats(run_dir, 1, "extended", rows_grown=2)
    report = collect_run(run_dir)
    for iteration in report["iterations"]:
        k = iteration["iteration"]
        expected = [_stats(run_dir, k, folder).get(key) for _, folder, key in FUNNEL]
        assert [stage["count"] for stage in iteration["funnel"]] == expected
        initial = _stats(run_dir, k, "initial")
        reasons = iteration["reasons"]["generate"]
        assert reasons["rejected_attempts"] == initial["rejected_attempts"]
        assert reasons["stopped_early"] == initial["stopped_early"]
        assert reasons["dropped_by_sampler"] == initial["dropped_by_sampler"]
        assert iteration["reasons"]["extend"]["failed_rows"] == _stats(run_dir, k, "extended")["failed_rows"]
    assert [stage["count"] for stage in report["iterations"][0]["funnel"]] == [2, 7, 5, 2, 2, 2]
    page = (write_report(run_dir)).read_text()
    funnel = page[page.index("<h3>Iteration 1</h3>") : page.index("<h3>Iteration 2</h3>")]
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"number\">([0-9,]+)</td>", funnel)
    assert [(label, int(count)) for label, count in rows[:6]] == [
        (label, count) for (label, _, _), count in zip(FUNNEL, [2, 7, 5, 2, 2, 2], strict=True)
    ]
    assert '<td>rejected attempts</td><td>finish_reason: length</td><td class="number">3</td>' in funnel
    assert "2 requests, 412 tokens generated" in funnel  # stopped early, with the tokens spent


def test_words_growth_and_losses_come_from_the_rows_and_the_trained_roles(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    first = collect_run(run_dir)["iterations"][0]
    assert first["words"] == {"initial": [150, 160], "extended": [320, 330]}
    assert first["growth"] == [round(320 / 150, 3), round(330 / 160, 3)]
    assert first["losses"] == {"generator": [1.6, 1.5, 1.4], "extender": [1.6, 1.5, 1.4]}


def test_the_extenders_stages_are_highlighted_where_stage_two_began() -> None:
    initial = "one two three four five six seven eight nine ten"
    extended = "one two three added words here four five six more stage two text"
    continued_at = extended.index("more")
    assert extension_segments(initial, extended, continued_at) == [
        (KEPT, "one two three "),
        (EXPANDED, "added words here "),
        (KEPT, "four five six "),
        (CONTINUED, "more stage two text"),
    ]
    # Without the recorded start: everything after the last run of kept words is stage 2's.
    assert extension_segments(initial, extended)[-1] == (CONTINUED, "more stage two text")
    # A paraphrase keeps no run of 3 words: all of it is new.
    assert {kind for kind, _ in extension_segments(initial, "uno dos tres cuatro")} == {CONTINUED}


@given(st.text(), st.text(), st.integers(min_value=-1, max_value=200) | st.none())
def test_the_highlights_segments_give_the_extended_text_back(
    initial: str, extended: str, at: int | None
) -> None:
    segments = extension_segments(initial, extended, at)
    assert "".join(text for _, text in segments) == extended
    assert all(text for _, text in segments)


def test_rejected_attempts_are_kept_with_the_reason_and_what_the_filter_found() -> None:
    looping = "It was a good day. " + "the cat sat on the mat " * 12 + "The end."
    verdict = ResponseChecks(default_entries()).verdict(
        InferenceResult(text=looping, finish_reason="stop", usage={})
    )
    assert verdict is not None and verdict[0] == "🔁 Repetition: repeated_ngram"
    assert verdict[1] and verdict[1].rstrip("…") in looping  # the place it found
    tally, attempt = Tally(), Tally()
    for n in range(REJECTED_EXAMPLES + 1):
        attempt.reject(verdict[0], f"{n} {looping}", verdict[1])
    tally.merge(attempt)
    tally.merge(attempt)
    assert tally.rejections[verdict[0]] == 2 * (REJECTED_EXAMPLES + 1)
    examples = tally.as_dict()["rejected_examples"]
    assert [example["text"].split()[0] for example in examples] == [str(n) for n in range(REJECTED_EXAMPLES)]


def test_the_sample_browser_reads_the_steps_rollouts(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1)
    kept = json.loads((run_dir / "iter_1" / "extended" / "stats.json").read_text())
    assert kept["rows_out"] == 2
    _write_rollouts(
        run_dir,
        1,
        "extended",
        [
            {"id": "i1-0-0", "text": "w0 w1", "metadata": {"instruction": "I", "rollout_results": [
                {"continued_at": 3, "failure": None, "tally": {}}]}},
            {"id": "i1-9-0", "text": "short answer", "metadata": {"instruction": "J", "rollout_results": [
                {"failure": "too_little_growth", "extended_response": None,
                 "tally": {"rejections": {"not_longer": 2}, "rejected_examples": [
                     {"reason": "🔚 Ending: bad_ending", "detail": None, "text": "cut off mid"}]}}]}},
        ],
    )  # fmt: skip
    _write_rollouts(
        run_dir,
        1,
        "initial",
        [{"id": "i1-1", "text": "Write about K.", "metadata": {"rollout_results": [
            {"samples": [], "tally": {"rejected_examples": [{
                "reason": "🔁 Repetition: repeated_ngram", "detail": "la la la", "text": "la la la!"}]}}]}}],
    )  # fmt: skip
    samples = collect_run(run_dir)["samples"]
    statuses = [(row["step"], row["status"]) for row in samples]
    assert statuses == [
        ("extend", "kept"),
        ("extend", "kept"),
        ("extend", "too_little_growth"),
        ("extend", "rejected: 🔚 Ending: bad_ending"),
        ("generate", "rejected: 🔁 Repetition: repeated_ngram"),
    ]
    first = samples[0]
    assert first["id"] == "i1-0-0" and "".join(text for _, text in first["segments"]).startswith("x0")
    assert first["segments"][-1][0] == CONTINUED  # stage 2 began at character 3 of its text
    assert samples[2]["rejections"] == {"not_longer": 2} and samples[2]["initial"] == "short answer"
    assert samples[4]["detail"] == "la la la" and samples[4]["initial"] is None
    assert samples[4]["instruction"] == "Write about K."  # generate's document is its instruction


def test_a_partly_finished_run_shows_what_exists_and_marks_the_rest_not_yet_run(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, iterations=1, trained=0, final=False)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 1", "iterations: 3"))
    (run_dir / "iter_1" / "extended" / "stats.json").unlink()  # extend was killed mid-step
    report = collect_run(run_dir)
    (iteration,) = report["iterations"]
    assert [stage["count"] for stage in iteration["funnel"]][-2:] == [None, None]
    assert iteration["finished"] == {"instructions": True, "initial": True, "extended": False}
    assert iteration["words"] == {"initial": [150, 160]} and iteration["losses"] == {}
    page = write_report(run_dir, tmp_path / "page.html").read_text()
    assert page.count("not yet run") >= 2 + 1  # the two extend stages, the evaluation
    assert "1 iteration(s) with data of 3 planned; iterations 2, 3: not yet run." in page


def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SelflengthenError, match="not a run folder"):
        write_report(tmp_path)
    with pytest.raises(SelflengthenError, match="no such run folder"):
        write_report(tmp_path / "absent")
