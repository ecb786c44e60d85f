"""`selflengthen report`: one self-contained HTML page that shows what each iteration of a run
made, dropped and grew (`collect.py` reads the run, `page.py` draws the page)."""

from __future__ import annotations

from pathlib import Path

from selflengthen.atomic import write_text_atomic
from selflengthen.errors import SelflengthenError
from selflengthen.report.collect import DEFAULT_SAMPLES, collect_run
from selflengthen.report.page import render_page

__all__ = ["DEFAULT_SAMPLES", "write_report"]


def write_report(run_dir: Path, out: Path | None = None, samples: int = DEFAULT_SAMPLES) -> Path:
    """Write the page of `run_dir` to `out` (default: `<run_dir>/report.html`), replacing an
    earlier one only once the new one is complete; returns its path."""
    if not run_dir.is_dir():
        raise SelflengthenError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file() and not any(run_dir.glob("iter_*")):
        raise SelflengthenError(f"{run_dir}: not a run folder (no config.yaml and no iter_<k>/ folders)")
    target = out or run_dir / "report.html"
    write_text_atomic(render_page(collect_run(run_dir, samples)), target)
    return target
