"""On the real engine: a `generate` whose every request vLLM refuses (a prompt longer than the
context) is a one-line error and is not recorded as finished; the rerun with a context that
holds it makes the step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))


def generate(run: Path, instructions: Path, context: int) -> subprocess.CompletedProcess[str]:
    assert SCRIPT
    command = [SCRIPT, "generate", "--run-dir", str(run), "--instructions", str(instructions),
               "--samples-per-instruction", "1", "--max-retries", "1", "--max-tokens", "64",
               "--max-model-len", str(context), "--seed", "3"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_a_step_whose_every_request_is_refused_is_not_finished_and_reruns(tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.jsonl"
    long_instruction = "Summarise these notes in one line: " + "tea leaves " * 2500  # > 4096 tokens
    instructions.write_text(json.dumps({"instruction": long_instruction}) + "\n")
    run = tmp_path / "run"
    refused = generate(run, instructions, 4096)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (
        lines[-1].startswith("selflengthen: error: ")
        and "all 1 requests failed (context_length:" in lines[-1]
    )
    folder = run / "iter_1" / "initial"
    assert not (folder / "stats.json").exists()
    assert "context_length" in json.loads((folder / "_work" / "logs" / "request_errors.json").read_text())
    made = generate(run, instructions, 8192)
    assert made.returncode == 0, made.stderr[-2000:]
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["rows_in"] == 1 and stats["requests"] >= 1 and stats["request_errors"] == {}
