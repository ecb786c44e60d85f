"""Files we write: atomic, and with the mode the user's umask gives any new file."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

WRITE_EVERY_KIND = """
import os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
import polars as pl
from selflengthen.builders.step import copy_file_atomic, write_json_atomic
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
