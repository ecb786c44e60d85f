"""The report of the reference run (`report.html`, written by `selflengthen run` when it ends) in
a real headless browser, Debian's chromium (installed by `.ci/run` and `make install`): it loads
with no console message, its script renders the sample browser, and a screenshot shows the
funnel's bars and an extension's highlighted continuation."""

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e_runs import ReferenceRun

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
#: Colours the page draws (on white): the funnel's bars, stage 2's highlight.
FUNNEL_BAR, CONTINUATION = (102, 170, 209), (184, 230, 201)


def _chromium(page: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is not installed: apt-get install chromium (.ci/run and make install do)"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    result = subprocess.run(
        [*command, *arguments, page.as_uri()], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_the_runs_report_opens_in_chromium_and_shows_the_funnel_and_a_highlighted_extension(
    reference_run: ReferenceRun, tmp_path: Path
) -> None:
    page = reference_run.run_dir / "report.html"
    assert f"report: {page}" in reference_run.output
    assert page.stat().st_size <= 5 * 2**20
    loaded = _chromium(page, "--dump-dom")
    assert [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line] == []  # no log, no error
    dom = loaded.stdout
    assert dom.count('<span class="bar"') >= 6 * 2  # both iterations' funnels
    assert "rows match; the first" in dom  # the script ran
    opened = dom[dom.index('<details class="sample"') :]
    assert opened.startswith('<details class="sample" data-status="kept" open="">')
    assert '<mark class="continued">' in opened[: opened.index("</details>")]
    shot = tmp_path / "report.png"
    _chromium(page, f"--screenshot={shot}", "--window-size=1200,16000", "--hide-scrollbars")
    with Image.open(shot) as image:
        colours = Counter(image.convert("RGB").get_flattened_data())
    assert colours[FUNNEL_BAR] > 1000 and colours[CONTINUATION] > 1000
