"""A step's progress bar: documents done, output tokens per second, requests in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from selflengthen.builders.speculation import RequestMeter
from selflengthen.builders.tally import (
    Tally,
)


class StepProgress:
    """A progress bar over documents (with ETA), output tokens per second, measured from the
    start of the first rollout (so that a server's start-up does not count), and the requests
    in flight (`meter`, which the rollouts' tallies count into: `tally()`)."""

    def __init__(self, total: int, description: str, concurrency: int) -> None:
        self.total, self.description = total, description
        self.meter = RequestMeter(concurrency)
        self.bar: tqdm | None = None  # shown from the first finished document on
        self.first_started = float("inf")
        self.tokens = 0
        self.stopped_early = 0

    def tally(self) -> Tally:
        """A rollout's tally, its requests counted in flight."""
        return Tally(meter=self.meter)

    def document_done(self, tally: Tally) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.description, unit="doc", dynamic_ncols=True)
        self.first_started = min(self.first_started, tally.started)
        self.tokens += tally.completion_tokens
        self.stopped_early += tally.stopped_early.total()
        elapsed = max(time.monotonic() - self.first_started, 1e-6)
        postfix = f"{self.tokens / elapsed:.0f} tok/s, {self.meter.in_flight} in flight"
        if self.stopped_early:
            postfix += f", {self.stopped_early} stopped early"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(1)
        if self.bar.n == 1:
            self.bar.refresh()  # tqdm skips an update this soon after the bar appeared


def rollout_tally(progress: StepProgress | None) -> Tally:
    """A rollout's tally: counted in the step's requests in flight when it has a progress."""
    return progress.tally() if progress is not None else Tally()


@contextmanager
def progress_context(total: int, description: str, concurrency: int) -> Iterator[dict[str, StepProgress]]:
    progress = StepProgress(total, description, concurrency)
    try:
        yield {"progress": progress}
    finally:
        if progress.bar is not None:
            progress.bar.close()
