"""Stopping a command cleanly: SIGINT, SIGTERM and SIGHUP all unwind it (servers stopped,
datatrove's checkpoints saved), print one line and exit with 128 + the signal's number, and
nothing it started outlives it.

Each of the three signals raises `Interrupted` in the main thread. (Left to Python, SIGTERM and
SIGHUP would kill the process on the spot, and SIGINT inside datatrove's inference step would
only cancel an asyncio task that the step survives.) Processes forked on the way (datatrove's
multiprocess Manager, for one) are asked to get SIGTERM when their parent dies, so even a
SIGKILL leaves no orphan behind.
"""

from __future__ import annotations

import os
import signal
import sys

from selflengthen.engine.launch import die_with_parent

_INSTALLED: set[str] = set()


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread. A KeyboardInterrupt, so that no
    `except Exception` swallows it, and so that asyncio passes it on: asyncio re-raises only
    KeyboardInterrupt and SystemExit from the callbacks and tasks its loop runs, and logs any
    other BaseException there (a signal that arrived while datatrove's inference loop ran such a
    callback was lost, and the interrupted command went on waiting)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def children_die_with_us() -> None:
    """Every process forked from now on gets SIGTERM when this one dies (idempotent)."""
    if "fork" not in _INSTALLED:
        os.register_at_fork(after_in_child=die_with_parent)
        _INSTALLED.add("fork")


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP as interruptions, and make every process forked from
    now on die with this one (idempotent; the CLI calls it)."""
    children_die_with_us()
    if "signals" not in _INSTALLED:
        # SIGINT too: left to Python, asyncio's runner (inside datatrove's inference step) would
        # turn the first Ctrl-C into a cancelled task that the step survives.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_interrupted)
        _INSTALLED.add("signals")


def exit_status(error: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by that signal."""
    return 128 + (error.signum if isinstance(error, Interrupted) else signal.SIGINT)


def exit_now(status: int) -> None:
    """Exit once the interrupted command has unwound (servers stopped, checkpoints saved),
    without waiting for worker threads that only a finished step closes (the request cache's
    SQLite thread would keep the interpreter alive forever)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
