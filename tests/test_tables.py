"""Files we write: atomic, and with the mode the user's umask gives any new file."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from selflengthen.errors import SelflengthenError
from selflengthen.tables import read_table

WRITE_EVERY_KIND = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
import polars as pl
from selflengthen.atomic import copy_file_atomic, write_json_atomic
from selflengthen.tables import write_table
out = Path(sys.argv[1])
write_table(pl.DataFrame({"a": [1]}), out / "kept.parquet")
write_table(pl.DataFrame({"a": [1]}), out / "kept.jsonl")
write_json_atomic({"a": 1}, out / "stats.json")
copy_file_atomic(out / "stats.json", out / "README.md")
"""


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """A new process, because the umask is process-wide and read once when tables is imported."""
    subprocess.run([sys.executable, "-c", WRITE_EVERY_KIND, str(tmp_path), f"{umask:o}"], check=True)
    written = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert written == dict.fromkeys(["kept.parquet", "kept.jsonl", "stats.json", "README.md"], mode)


TEXT_CASES = [
    # (file content, what reading it gives: the rows, or the one-line error after the file's name)
    (b'\xef\xbb\xbf{"instruction": "Write."}\n', [{"instruction": "Write."}]),  # a BOM is dropped
    (b'\xef\xbb\xbfinstruction\nWrite.\n', [{"instruction": "Write."}]),  # (as CSV)
    (b'{"a": "\\ud83d\\ude00 a pair is one character"}\n', [{"a": "😀 a pair is one character"}]),
    (b'{"a": "an escaped backslash: \\\\ud800"}\n', [{"a": "an escaped backslash: \\ud800"}]),
    (b'{"a": "x"}\n{"a": "y", "b": ["ok", {"c": "\\udc00"}]}\n',
     "line 2, field 'b.1.c': a lone UTF-16 surrogate (\\udc00), which is no character"),
    (b'{"a": "ok"}\n{"a": "\\u0000"}\n', "line 2, field 'a': a NUL character (\\u0000)"),
    (b'{"a": "x"}\n{"a": "\x00"}\n', "line 2: a NUL byte (offset 18); the file is not text"),
    (b'{"a": "x"}\n{"a": "caf\xe9"}\n', "not UTF-8 text (bad byte at offset 21, line 2)"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "expected"), TEXT_CASES)
def test_text_is_checked_once_where_it_is_read(tmp_path: Path, content: bytes, expected: object) -> None:
    path = tmp_path / ("table.csv" if content.startswith(b"\xef\xbb\xbfinstruction") else "table.jsonl")
    path.write_bytes(content)
    if isinstance(expected, list):
        assert read_table(path).to_dicts() == expected
    else:
        with pytest.raises(SelflengthenError) as error:
            read_table(path)
        assert str(error.value) == f"{path}: {expected}"
