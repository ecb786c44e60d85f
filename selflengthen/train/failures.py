"""Which process of a training launch failed, and how, told in one line.

A training launched in several processes (`accelerate launch`: torch's elastic agent, one per
node; `srun-accelerate`: one such agent per Slurm task) fails as a whole when one rank dies,
and the launcher's own report of the cause is a page of tracebacks on stderr. The launch's
stderr is passed through to the terminal as it comes (the trainer's progress bar is on it), its
finished lines are kept in the role's train.log, and its end is read for the launcher's summary:
torch's "Root Cause (first observed failure)" block (global rank, local rank, host, exit code or
signal) or srun's "task N: ..." error line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

#: How much of the end of the launch's stderr is kept to read the failure from.
TAIL_BYTES = 64 * 1024

_ROOT_CAUSE = re.compile(
    r"Root Cause \(first observed failure\):.*?host\s*:\s*(?P<host>\S+).*?"
    r"rank\s*:\s*(?P<rank>\d+) \(local_rank: (?P<local>\d+)\).*?exitcode\s*:\s*(?P<code>-?\d+)",
    re.DOTALL,
)
_SRUN_TASK = re.compile(r"srun: error: (?P<host>\S+): task (?P<task>\d+): (?P<what>[^\n]+)")


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def failed_process(stderr_tail: str) -> str | None:
    """The failed process as the launcher reported it ("rank 1 (local rank 1 on node-a) was
    killed by SIGKILL"), or None when the text has no launcher summary (a plain Python run)."""
    causes = list(_ROOT_CAUSE.finditer(stderr_tail))
    if causes:
        cause = causes[-1]
        where = f"local rank {cause['local']} on {cause['host']}"
        return f"rank {cause['rank']} ({where}) {_exit(int(cause['code']))}"
    tasks = list(_SRUN_TASK.finditer(stderr_tail))
    if tasks:
        task = tasks[0]
        return f"Slurm task {task['task']} on {task['host']}: {task['what'].strip()}"
    return None


def run_teeing_stderr(command: list[str], log: int, **popen: object) -> tuple[int, str]:
    """Run `command` with its stdout on the file descriptor `log`; its stderr goes to our stderr
    as it comes and, line by line without progress-bar redraws, into `log` too. Returns the exit
    code and the end of its stderr."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    assert process.stderr is not None
    tail = bytearray()
    pending = b""
    sys.stderr.flush()
    for chunk in iter(lambda: os.read(process.stderr.fileno(), 65536), b""):
        os.write(sys.stderr.fileno(), chunk)  # as inherited stderr was: the terminal's own descriptor
        tail = (tail + chunk)[-TAIL_BYTES:]
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending.rsplit(b"\r", 1)[-1]  # a progress bar redraws its line without ending it
        if lines:
            os.write(log, b"".join(line.rsplit(b"\r", 1)[-1] + b"\n" for line in lines))
    process.stderr.close()
    if pending:
        os.write(log, pending.rsplit(b"\r", 1)[-1] + b"\n")
    return process.wait(), tail.decode("utf-8", errors="replace")
