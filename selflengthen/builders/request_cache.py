"""datatrove's request cache (`_work/checkpoints/<rank>/replay.sqlite3`) as a step meets it:
checked before the step runs, and its failures reported in one line.

The cache only saves requests a resumed step would otherwise send again, so a damaged one (an
interrupted write, a garbled file) is moved aside (`_work/damaged/<time>/`, never deleted) and the
step goes on without it; a cache that cannot be written (a full disk) stops the step with the path
and what to do, and the step stays resumable.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from selflengthen.errors import SelflengthenError

CACHE_GLOB = "checkpoints/*/replay.sqlite3"
#: The files sqlite keeps beside a database.
_COMPANIONS = ("", "-journal", "-wal", "-shm")


def damage(cache: Path) -> str | None:
    """What is wrong with a cache file sqlite cannot use (its own words), or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{cache}?mode=ro", uri=True)) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as error:
        return str(error)
    if verdict is None:
        return "no verdict from sqlite"
    return None if verdict[0] == "ok" else str(verdict[0])


def set_aside_damaged(work: Path) -> list[Path]:
    """Move every damaged request cache under a step's `work` folder to `work/damaged/<time>/`,
    saying so in one line each; returns where they went."""
    moved = []
    for cache in sorted(work.glob(CACHE_GLOB)):
        if (problem := damage(cache)) is None:
            continue
        target = work / "damaged" / time.strftime("%Y%m%d-%H%M%S") / cache.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in _COMPANIONS:
            if (part := cache.with_name(cache.name + suffix)).exists():
                shutil.move(part, target.with_name(target.name + suffix))
        print(
            f"{cache}: the request cache is damaged ({problem}); moved to {target}, and the requests "
            "it saved will be sent again",
            file=sys.stderr,
        )
        moved.append(target)
    return moved


def cache_error(work: Path, error: sqlite3.Error) -> SelflengthenError:
    """One line for a request cache that failed during the step."""
    caches = sorted(work.glob(CACHE_GLOB))
    where = caches[0] if len(caches) == 1 else work / "checkpoints"
    remedy = (
        "free some space, then rerun to resume"
        if "full" in str(error).lower()
        else "rerun to resume (a damaged cache is set aside)"
    )
    return SelflengthenError(f"{where}: the request cache failed ({error}); {remedy}")
