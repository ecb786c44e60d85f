"""One selflengthen command per run folder at a time: `run` and every step command that writes
into a run folder (`--run-dir`) take the same lock, `<run>/.lock`.

Two commands on one folder would write the same step folders: a second `generate` reused the
first's checkpoints under another seed and failed on a half-written chunk. The second command
gets one line naming the holder (its command and process id), recorded in the lock file.

A POSIX record lock belongs to the process that took it: processes it forks (datatrove starts a
multiprocess Manager per step) do not inherit it, so it ends when the holder does, even on
kill -9 (`flock` would live on in any forked child).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from selflengthen.errors import SelflengthenError

LOCK_NAME = ".lock"
#: Locks a step command holds until its process ends, by folder (see `hold_for_process`).
_HELD: dict[Path, IO[str]] = {}


def _take(run_dir: Path, command: str) -> IO[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / LOCK_NAME).open("a+")  # not "w": that would empty the holder's record
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another selflengthen command"
        handle.close()
        raise SelflengthenError(
            f"{run_dir}: in use by {holder}; wait for it to finish, or stop it, before running "
            f"selflengthen {command} on this folder"
        ) from None
    handle.truncate(0)
    handle.write(f"selflengthen {command} (pid {os.getpid()})\n")
    handle.flush()
    return handle


@contextmanager
def folder_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold `run_dir`'s lock while the block runs (`selflengthen run`)."""
    handle = _take(run_dir, command)
    try:
        yield
    finally:
        handle.close()


def hold_for_process(run_dir: Path, command: str) -> None:
    """Take `run_dir`'s lock for the rest of this process (a step command: it ends with it)."""
    key = run_dir.resolve()
    if key not in _HELD:
        _HELD[key] = _take(run_dir, command)
