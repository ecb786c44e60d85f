"""The error type for bad input: the CLI prints it as one line and exits non-zero."""


class SelflengthenError(Exception):
    """A problem with the user's input or environment, explained in one line that names the
    file, field or flag at fault."""
