"""The error type for bad input: the CLI prints it as one line and exits non-zero."""


class SelflengthenError(Exception):
    """A problem with the user's input or environment, explained in one line that names the
    file, field or flag at fault."""


class ServerFailed(SelflengthenError):
    """The model server failed or stopped during a step; the step resumes when run again."""


def require_at_least_one(**flags: int) -> None:
    """Raise a one-line error for the first flag (given as `flag_name=value`, `_` for `-`) below 1."""
    for name, value in flags.items():
        if value < 1:
            raise SelflengthenError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
