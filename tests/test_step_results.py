"""How a step judges its own results: refused requests counted by kind with a full example, a
step whose every request was refused never recorded as finished, and a finished step never
reported as made by settings other than its own, nor finished without a document the runner
dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from datatrove.data import Document

from selflengthen.builders.folder import finish_step, finished_stats, step_folder
from selflengthen.builders.inference import refuse_missing_documents, refuse_when_every_request_failed
from selflengthen.builders.step import GenerationStep, step_stats
from selflengthen.builders.tally import RESULTS_KEY, Tally, request_error_kind
from selflengthen.engine.models import ResolvedModel
from selflengthen.engine.options import EngineOptions, SamplingOptions
from selflengthen.errors import SelflengthenError

CONTEXT = (
    'Got BadRequestError from server: {"error":{"message":"This model\'s maximum context length is 4096 '
    'tokens. However, you requested 16414 tokens (30 in the messages, 16384 in the completion)."}}'
)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (CONTEXT, "context_length"),
        (
            'Got BadRequestError from server: {"error":{"message":"top_k must be -1 or at least 1"}}',
            "bad_request",
        ),
        ("Error http status 404: Not Found", "http_404"),
        ("something else", "other"),
    ],
)
def test_request_errors_get_short_stable_kinds(message: str, kind: str) -> None:
    assert request_error_kind(message) == kind


def documents(refused: int, answered: int) -> list[Document]:
    tally = Tally(requests=refused + answered)
    for _ in range(refused):
        tally.refused(CONTEXT)
    return [Document(text="x", id="d0", metadata={RESULTS_KEY: [{"tally": tally.as_dict()}]})]


def test_stats_count_refused_requests_by_kind_with_one_full_example(tmp_path: Path) -> None:
    done = documents(refused=3, answered=5)
    model = ResolvedModel("m", "m", "endpoint")
    frame = pl.DataFrame({"words": [10]})
    step = GenerationStep(
        "generate", step_folder(tmp_path, 1, "initial"), [], print, lambda _: (frame, {}), 1
    )
    engine = EngineOptions(model="m", endpoint="http://127.0.0.1:1/v1")
    stats = step_stats(step, 1, frame, done, engine, model, SamplingOptions(), 0.0)
    assert stats["rejected_attempts"] == {"request_error: context_length": 3}
    assert stats["request_errors"] == {"context_length": {"count": 3, "example": CONTEXT}}


def test_a_step_whose_every_request_was_refused_is_not_finished(tmp_path: Path) -> None:
    folder = step_folder(tmp_path, 1, "initial")
    for part in ("checkpoints", "rollouts", "logs/completions"):
        (folder.work / part).mkdir(parents=True)
    refuse_when_every_request_failed(folder, documents(refused=2, answered=1))  # bad samples: fine
    assert json.loads((folder.work / "logs" / "request_errors.json").read_text()) == {
        "context_length": CONTEXT
    }
    assert (folder.work / "checkpoints").exists()
    with pytest.raises(SelflengthenError, match=r"all 3 requests failed \(context_length: Got BadRequest"):
        refuse_when_every_request_failed(folder, documents(refused=3, answered=0))
    assert not folder.finished()
    assert not [
        part for part in ("checkpoints", "rollouts", "logs/completions") if (folder.work / part).exists()
    ]
    assert json.loads((folder.work / "logs" / "request_errors.json").read_text()) == {
        "context_length": CONTEXT
    }


def test_a_finished_step_with_other_settings_is_refused_not_reported(tmp_path: Path) -> None:
    folder = step_folder(tmp_path, 1, "initial")
    finish_step(
        folder,
        pl.DataFrame({"a": [1]}),
        {"rows_out": 1, "sampling": SamplingOptions(max_tokens=900).lineage()},
    )
    assert finished_stats(folder, SamplingOptions(max_tokens=900))["rows_out"] == 1
    assert (
        finished_stats(folder, SamplingOptions(max_tokens=900, early_stop=False)) is not None
    )  # not lineage
    with pytest.raises(
        SelflengthenError, match=r"finished earlier with other settings \(max_tokens 900 -> 1000\)"
    ):
        finished_stats(folder, SamplingOptions(max_tokens=1000))
    assert finished_stats(step_folder(tmp_path, 2, "initial"), SamplingOptions()) is None


def test_stats_say_how_the_server_was_used_and_in_what_precision(tmp_path: Path) -> None:
    """Mean requests in flight from the seconds the requests were open over the time the
    rollouts ran (a resumed step's pause left out), and the attempts started ahead of need with
    what those not needed cost, summed over the rollouts' tallies."""
    # Two rollouts running 1000-1012 s and 1008-1020 s, then a resumed one 5000-5004 s: 24 s busy.
    rollouts = [
        (30.0, 2, 1, 120, (1000.0, 1012.0)),
        (10.0, 1, 0, 0, (1008.0, 1020.0)),
        (8.0, 0, 0, 0, (5000.0, 5004.0)),
    ]
    tallies = []
    for seconds, started, requests, tokens, span in rollouts:
        tally = Tally(requests=2, completion_tokens=333, request_seconds=seconds)
        tally.speculated_attempts, tally.speculative_requests = started, requests
        tally.speculative_tokens = tokens
        tallies.append({"tally": tally.as_dict() | {"span": list(span)}})
    done = [Document(text="x", id="d0", metadata={RESULTS_KEY: tallies})]
    frame = pl.DataFrame({"words": [10]})
    step = GenerationStep("extend", step_folder(tmp_path, 1, "extended"), [], print, lambda _: (frame, {}), 1)
    ours = EngineOptions(model="m", endpoint="http://127.0.0.1:1/v1", server_pid=1, dtype="float32")
    theirs = EngineOptions(model="m", endpoint="http://127.0.0.1:1/v1")
    started = time.monotonic() - 20.0  # this invocation's 20 seconds
    model = ResolvedModel("m", "m", "local")
    stats = step_stats(step, 1, frame, done, ours, model, SamplingOptions(), started)
    assert stats["requests"] == 6 and stats["completion_tokens"] == 999  # the attempts used
    assert stats["speculative"] == {"attempts_started": 3, "requests": 1, "completion_tokens": 120}
    assert stats["requests_in_flight_mean"] == 2.0  # 48 request-seconds in 24 busy seconds
    assert 20.0 <= stats["seconds"] < 60  # this invocation's wall time, not the spans'
    assert stats["precision"] == {"dtype": "float32", "reason": "set by engine.dtype / --dtype"}
    assert stats["speculate"] is True
    endpoint = step_stats(
        step, 1, frame, done, theirs, ResolvedModel("m", "m", "endpoint"), SamplingOptions(), started
    )
    assert endpoint["precision"]["dtype"] == "auto"


def test_a_step_does_not_finish_without_a_document_the_runner_dropped(tmp_path: Path) -> None:
    """datatrove's runner drops a document whose record it could not write (it only counts it),
    and marks it done: the step must say so and not finish."""
    folder = step_folder(tmp_path / "run", 1, "extended")
    documents = [Document(text="t", id=f"d{index}") for index in range(3)]
    refuse_missing_documents(folder, documents, documents)  # all there: nothing to say
    with pytest.raises(SelflengthenError) as raised:
        refuse_missing_documents(folder, documents, documents[:1])
    assert str(raised.value) == (
        f"{folder.root}: 2 of 3 documents have no rollout record (first: d1; the runner could not finish "
        f"or save them: see {folder.work / 'logs'}); remove {folder.root} and rerun the step"
    )
    assert not folder.finished()
