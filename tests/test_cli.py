"""The `selflengthen` command as a user runs it: a real subprocess of the installed script."""

import json
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "corpus.jsonl"
SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "the selflengthen console script is not installed next to this Python"
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_each_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "filter" in result.stdout and "Apply the quality filters" in result.stdout
    assert "sample" in result.stdout and "Length-weighted sampling" in result.stdout
    assert run("--version").stdout.strip().startswith("selflengthen ")


def test_filter_then_sample_the_example_corpus(tmp_path: Path) -> None:
    kept, dropped, sampled = tmp_path / "kept.parquet", tmp_path / "dropped.jsonl", tmp_path / "sampled.csv"
    result = run(
        "filter",
        EXAMPLES,
        kept,
        "--filters",
        "ending,repetition,character-loop,meta-comment,length",
        "--min-words",
        "10",
        "--dropped",
        dropped,
    )
    assert result.returncode == 0, result.stderr
    assert "kept 5 of 13 rows" in result.stdout
    assert pl.read_parquet(kept)["id"].to_list() == ["en-essay", "en-guide", "zh-essay", "zh-story", "mixed"]
    reasons = {row["id"]: row["drop_reason"] for row in map(json.loads, dropped.read_text().splitlines())}
    assert reasons["en-cut"] == reasons["zh-cut"] == "🔚 Ending: bad_ending"
    assert reasons["zh-loop"].startswith("🔁 Repetition: repeated_ngram: 山间的溪水")
    assert reasons["en-meta"] == "🗨 Meta-comment: meta_comment: here is the revised version"
    assert reasons["en-runaway"] == f"🌀 Character loop: character_loop: {'z' * 24}…"
    assert reasons["en-short"] == "📏 Length: too_short"

    result = run("sample", kept, sampled, "--length-column", "text", "--seed", "0")
    assert result.returncode == 0, result.stderr
    first = pl.read_csv(sampled)
    assert 0 < first.height <= 5
    assert (
        run("sample", kept, sampled, "--length-column", "text", "--seed", "0", "--overwrite").returncode == 0
    )
    assert pl.read_csv(sampled).equals(first)


def _bad_inputs(tmp: Path) -> list[tuple[list[str | Path], str]]:
    (tmp / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp / "empty.jsonl").write_text("")
    (tmp / "broken.jsonl").write_text('{"text": "a"\n')
    (tmp / "notes.txt").write_text("hello")
    out = tmp / "out.jsonl"
    return [
        (["filter", tmp / "absent.jsonl", out], "absent.jsonl: no such file"),
        (["filter", tmp / "notes.txt", out], "notes.txt: unsupported file type '.txt'"),
        (
            ["filter", tmp / "latin1.jsonl", out],
            "latin1.jsonl: not UTF-8 text (bad byte at offset 13, line 1)",
        ),
        (["filter", tmp / "empty.jsonl", out], "empty.jsonl: the file is empty"),
        (["filter", tmp / "broken.jsonl", out], "broken.jsonl: line 1: cannot be read as jsonl"),
        (["filter", EXAMPLES, out, "--text-column", "body"], "corpus.jsonl: no column 'body'"),
        (["filter", EXAMPLES, out, "--filters", "ending,spelling"], "--filters: unknown filter ['spelling']"),
        (["filter", EXAMPLES, out, "--filters", "length"], "--filters length needs --min-words"),
        (["filter", EXAMPLES, out, "--filters", "growth"], "--filters growth needs --source-column"),
        (
            ["filter", EXAMPLES, out, "--filters", "length", "--min-words", "9", "--max-words", "3"],
            "min_words (9)",
        ),
        (["filter", EXAMPLES, out, "--ngram", "0"], "ngram must be a positive integer"),
        (
            ["filter", EXAMPLES, out, "--filters", "growth", "--source-column", "initial"],
            "no column 'initial'",
        ),
        (["filter", EXAMPLES, tmp / "existing.jsonl"], "existing.jsonl: already exists (pass --overwrite"),
        (["sample", EXAMPLES, out, "--length-column", "words"], "corpus.jsonl: no column 'words'"),
        (["sample", EXAMPLES, tmp / "out.xlsx"], "out.xlsx: unsupported file type '.xlsx'"),
    ]


def one_line_errors(cases: list[tuple[list[str | Path], str]]) -> None:
    """Each case exits 2 with one line holding its message (the cases run side by side)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run(*case[0]), cases))
    for (args, message), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("selflengthen: error: "), (args, result.stderr)
        assert message in lines[0], (args, lines[0])
        assert "Traceback" not in result.stderr


def test_bad_input_gives_one_line_exit_2_and_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "existing.jsonl").write_text('{"keep": "me"}\n')
    cases = _bad_inputs(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    one_line_errors(cases)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "filter", tmp_path / "absent.jsonl", tmp_path / "out.jsonl")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "no such file" in result.stderr


def _bad_generation_inputs(tmp: Path, busy_port: int) -> list[tuple[list[str | Path], str]]:
    (tmp / "no_column.jsonl").write_text('{"prompt": "Write."}\n')
    (tmp / "blank.jsonl").write_text('{"instruction": "  "}\n')
    (tmp / "latin1.csv").write_bytes("instruction\ncaf\xe9\n".encode("latin-1"))
    (tmp / "empty.parquet").write_bytes(b"")
    (tmp / "weightless").mkdir()
    (tmp / "weightless" / "config.json").write_text("{}")
    good = tmp / "good.jsonl"
    good.write_text('{"instruction": "Write a story."}\n')
    run = ["--run-dir", tmp / "run"]
    return [
        (["generate", *run], "iter_1/instructions: step not finished"),
        (["extend", *run], "iter_1/initial: step not finished"),
        (["generate", *run, "--instructions", tmp / "absent.jsonl"], "absent.jsonl: no such file"),
        (["generate", *run, "--instructions", tmp / "no_column.jsonl"], "no column 'instruction'"),
        (["generate", *run, "--instructions", tmp / "blank.jsonl"], "1 row(s) with an empty 'instruction'"),
        (["generate", *run, "--instructions", tmp / "latin1.csv"], "latin1.csv: not UTF-8"),
        (["generate", *run, "--instructions", tmp / "empty.parquet"], "empty.parquet: cannot be read as"),
        (["self-instruct", *run, "--seeds", tmp / "no_column.jsonl"], "no column 'instruction'"),
        (["self-instruct", *run, "--count", "0"], "--count: Input should be greater than or equal to 1"),
        (["generate", *run, "--instructions", good, "--model", "qwen2"], "'qwen2': not an embedded model"),
        (["generate", *run, "--instructions", good, "--model", tmp / "weightless"], "has no weights"),
        (["generate", *run, "--instructions", good, "--port", str(busy_port)], "is already in use"),
        (["generate", *run, "--instructions", good, "--max-tokens", "0"], "--max-tokens: Input should be"),
        (["generate", *run, "--instructions", good, "--top-p", "1.5"], "than or equal to 1 (got 1.5)"),
        (["extend", *run, "--rounds", "0"], "--rounds: Input should be greater than or equal to 1"),
        (["generate", *run, "--instructions", good, "--endpoint", "http://x", "--api-key-env", "NO_SUCH_VAR"],
         "NO_SUCH_VAR is not set"),
    ]  # fmt: skip


def test_bad_generation_input_gives_one_line_exit_2_and_touches_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = _bad_generation_inputs(tmp_path, busy.getsockname()[1])
        before = sorted(str(path) for path in tmp_path.rglob("*"))
        one_line_errors(cases)
        assert sorted(str(path) for path in tmp_path.rglob("*")) == before
