"""The error type for bad input: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class SelflengthenError(Exception):
    """A problem with the user's input or environment, explained in one line that names the
    file, field or flag at fault."""


class ServerFailed(SelflengthenError):
    """The model server failed or stopped during a step; the step resumes when run again."""


def require_folder(path: Path, what: str) -> Path:
    """`path` unless it exists and is not a folder (then a one-line error naming `what`)."""
    if path.exists() and not path.is_dir():
        raise SelflengthenError(f"{what} {path}: exists and is not a folder")
    return path


def describe_os_error(error: OSError) -> str:
    """One line for a file-system error: the path(s) and the problem, without a traceback."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    problem = error.strerror or str(error)
    return f"{paths}: {problem}" if paths else problem
