"""datatrove's request cache under faults: a damaged cache is set aside and the step redone from
what is intact; a full disk stops the step in one line naming the cache, with no hang, and the
rerun resumes. The model server is `fake_endpoint` (what is tested is around the requests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from selflengthen.builders.inference import read_rollouts
from selflengthen.builders.request_cache import damage, set_aside_damaged
from selflengthen.errors import SelflengthenError
from tests.fake_endpoint import fake_endpoint

SCRIPT = shutil.which("selflengthen", path=str(Path(sys.executable).parent))


def instructions(folder: Path, count: int) -> Path:
    path = folder / "instructions.jsonl"
    path.write_text(
        "".join(json.dumps({"instruction": f"Write an essay on topic {n}."}) + "\n" for n in range(count))
    )
    return path


def generate(run_dir: Path, source: Path, endpoint: str) -> list[str]:
    assert SCRIPT
    return [
        SCRIPT, "generate", "--run-dir", str(run_dir), "--instructions", str(source), "--model", "m",
        "--endpoint", endpoint, "--samples-per-instruction", "1",
    ]  # fmt: skip


def write_cache(path: Path) -> None:
    """A sound sqlite file where datatrove keeps a step's request cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(str(n), b"x" * 500) for n in range(50)]
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE request_cache (doc_id TEXT, result BLOB)")
        connection.executemany("INSERT INTO request_cache VALUES (?, ?)", rows)


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:4000] = b"\xa5" * 3900
    path.write_bytes(bytes(data))


def test_a_sound_cache_stays_and_a_damaged_one_is_moved_aside_never_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "checkpoints" / "00000" / "replay.sqlite3"
    write_cache(cache)
    assert damage(cache) is None and set_aside_damaged(tmp_path) == [] and cache.is_file()
    garble(cache)
    before = cache.read_bytes()
    [moved] = set_aside_damaged(tmp_path)
    assert not cache.exists() and moved.read_bytes() == before
    assert moved.relative_to(tmp_path).parts[0] == "damaged"
    assert capsys.readouterr().err == (
        f"{cache}: the request cache is damaged (database disk image is malformed); moved to {moved}, "
        "and the requests it saved will be sent again\n"
    )


def test_a_step_whose_cache_is_garbled_sets_it_aside_and_runs(tmp_path: Path) -> None:
    """Before: a traceback ending in `database disk image is malformed`, then a hang. The cache
    is garbled where an interrupted step leaves it, before the step runs again."""
    source, run_dir = instructions(tmp_path, 24), tmp_path / "run"
    work = run_dir / "iter_1" / "initial" / "_work"
    cache = work / "checkpoints" / "00000" / "replay.sqlite3"
    write_cache(cache)
    garble(cache)
    with fake_endpoint() as endpoint:
        result = subprocess.run(
            generate(run_dir, source, endpoint), capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"{cache}: the request cache is damaged (database disk image is malformed); moved to" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert list(work.glob("damaged/*/checkpoints/00000/replay.sqlite3"))
    rows = pl.read_parquet(run_dir / "iter_1" / "initial" / "data" / "*.parquet")
    assert sorted(rows["instruction"]) == sorted(pl.read_ndjson(source)["instruction"])


FULL_DISK = """
set -u
mount -t tmpfs -o size=40k tmpfs "$DISK"
"$@" >/dev/null 2>"$DISK.first"; echo "first $?"
mount -o remount,size=4m "$DISK"  # space freed
"$@" >/dev/null 2>"$DISK.second"; echo "second $?"
shard="$DISK/run/iter_1/initial/data/part-00000.parquet"
python3 -c "import sys, polars; print('rows', polars.read_parquet(sys.argv[1]).height)" "$shard"
"""


def test_a_full_disk_stops_the_step_in_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    """Before: a 95-line traceback ending in `database or disk is full`, then a hang. The run
    folder is on a 40 KB tmpfs in a mount namespace of its own (as root, or as a user mapped to
    root where user namespaces are allowed)."""
    disk, source = tmp_path / "disk", instructions(tmp_path, 120)
    disk.mkdir()
    unshare = (
        ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    )
    with fake_endpoint() as endpoint:
        command = [*unshare, "bash", "-c", FULL_DISK, "full-disk", *generate(disk / "run", source, endpoint)]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ
            | {"DISK": str(disk), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
    assert result.stdout.splitlines() == ["first 2", "second 0", "rows 120"], result.stdout + result.stderr
    first = Path(f"{disk}.first").read_text()
    line = first.strip().splitlines()[-1]
    assert "Traceback" not in first and line == (
        f"selflengthen: error: {disk}/run/iter_1/initial/_work/checkpoints/00000/replay.sqlite3: the "
        "request cache failed (database or disk is full); free some space, then rerun to resume"
    )


def test_unreadable_rollouts_are_named(tmp_path: Path) -> None:
    """Before: `Not a gzipped file (b'\\xa5\\n')`, naming no file."""
    (tmp_path / "00000_chunk_0.jsonl.gz").write_bytes(b"\xa5\n")
    with pytest.raises(SelflengthenError) as error:
        list(read_rollouts(tmp_path))
    assert str(error.value).startswith(
        f"{tmp_path / '00000_chunk_0.jsonl.gz'}: the step's rollouts cannot be read"
    )
