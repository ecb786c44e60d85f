"""Reading and writing the tables users bring and the ones we produce (JSONL, CSV, parquet).

Writes are atomic: the table goes to a temporary file beside the target, which is then renamed
over it, so a reader never sees half a file and a failed write leaves the old file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import polars as pl

from selflengthen.errors import SelflengthenError

#: File endings we read and write, with the format each one means.
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The mode a new file gets from `open()` under this process's umask (read once at import).
NEW_FILE_MODE = 0o666 & ~_umask()


def temporary_beside(path: Path) -> Path:
    """An empty temporary file in `path`'s folder (created if missing), to be renamed over
    `path`: readers never see half a file. It gets the umask's mode like any new file, not
    `mkstemp`'s private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, NEW_FILE_MODE)
    finally:
        os.close(handle)
    return Path(temporary)


#: The name `temporary_beside` gives a temporary file (`tempfile.mkstemp`: 8 random characters).
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files `temporary_beside` left under `folder` when a writer was
    killed before its rename (kill -9 runs no cleanup): half-written copies, never a finished
    file. Returns what was removed."""
    stray = [path for path in folder.rglob(".*.tmp") if path.is_file() and _TEMPORARY_NAME.match(path.name)]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def table_format(path: Path) -> str:
    """The format named by `path`'s ending, or a `SelflengthenError` naming the file."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        endings = ", ".join(sorted(FORMATS))
        raise SelflengthenError(
            f"{path}: unsupported file type {path.suffix!r} (use one of {endings})"
        ) from None


#: A JSON escape that may stand for no character (a UTF-16 surrogate) or for NUL: the lines
#: holding one are parsed again to see whether it is a lone surrogate or a NUL in a string.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")
_BOM = b"\xef\xbb\xbf"


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _bad_string(value: object, field: str) -> tuple[str, str] | None:
    """The field and the problem of the first string in a JSON value that is not text."""
    if isinstance(value, str):
        if "\x00" in value:
            return field, "a NUL character (\\u0000)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return field, f"a lone UTF-16 surrogate (\\u{ord(value[error.start]):04x}), which is no character"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"{index}", item) for index, item in enumerate(value))
    else:
        return None
    for key, item in items:
        if found := _bad_string(item, f"{field}.{key}" if field else str(key)):
            return found
    return None


def check_text(raw: bytes, path: Path, kind: str) -> bytes:
    """The bytes of a JSONL or CSV file as text the tables may hold, or a one-line error naming
    the cause and the place: not UTF-8, a NUL byte, or (JSONL) a string escaping a lone UTF-16
    surrogate or NUL, which would otherwise reach the model or the output as U+0000 or worse. A
    UTF-8 byte-order mark at the start (spreadsheets write one) is dropped: it is not text."""
    raw = raw.removeprefix(_BOM)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SelflengthenError(
            f"{path}: not UTF-8 text (bad byte at offset {error.start}, line {_line_of(raw, error.start)})"
        ) from None
    if (nul := raw.find(b"\x00")) >= 0:
        raise SelflengthenError(
            f"{path}: line {_line_of(raw, nul)}: a NUL byte (offset {nul}); the file is not text"
        )
    if kind == "jsonl":
        checked: set[int] = set()
        for match in _SUSPECT_ESCAPE.finditer(raw):
            line = _line_of(raw, match.start())
            if line in checked:
                continue
            checked.add(line)
            start = raw.rfind(b"\n", 0, match.start()) + 1
            end = raw.find(b"\n", match.start())
            try:
                record = json.loads(raw[start : end if end >= 0 else len(raw)])
            except ValueError:
                continue  # polars names the syntax error
            if found := _bad_string(record, ""):
                field, problem = found
                raise SelflengthenError(f"{path}: line {line}, field {field!r}: {problem}")
    return raw


def read_table(path: Path) -> pl.DataFrame:
    """Read a JSONL, CSV or parquet file into a polars frame.

    Raises `SelflengthenError` (naming the file, and the line where it can) when it is missing,
    of an unknown type, not text (`check_text`), unparsable, or has no rows.
    """
    kind = table_format(path)
    if not path.is_file():
        raise SelflengthenError(f"{path}: no such file")
    try:
        if kind == "parquet":
            frame = pl.read_parquet(path)
        else:
            raw = check_text(path.read_bytes(), path, kind)
            if not raw.strip():
                raise SelflengthenError(f"{path}: the file is empty")
            frame = pl.read_ndjson(io.BytesIO(raw)) if kind == "jsonl" else pl.read_csv(io.BytesIO(raw))
    except SelflengthenError:
        raise
    except Exception as error:  # polars raises several types; all mean the same to the user
        raise SelflengthenError(f"{path}: cannot be read as {kind}: {first_line(error)}") from None
    if frame.height == 0:
        raise SelflengthenError(f"{path}: no rows")
    return frame


def require_columns(frame: pl.DataFrame, path: Path, *columns: str) -> None:
    """Raise a `SelflengthenError` naming the file and the first of `columns` it lacks."""
    for column in columns:
        if column not in frame.columns:
            raise SelflengthenError(f"{path}: no column {column!r} (columns: {', '.join(frame.columns)})")


def check_output(path: Path, overwrite: bool = False) -> str:
    """Fail early (before any work) if `path` cannot be written: unknown type, or a file that
    exists while `overwrite` is off. Returns the format."""
    kind = table_format(path)
    if path.exists() and not overwrite:
        raise SelflengthenError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.is_dir():
        raise SelflengthenError(f"{path}: is a folder, not a file")
    return kind


def write_table(frame: pl.DataFrame, path: Path, overwrite: bool = False) -> None:
    """Write `frame` to `path` atomically, in the format its ending names.

    Refuses (SelflengthenError) to replace an existing file unless `overwrite` is set.
    """
    kind = check_output(path, overwrite)
    temporary = temporary_beside(path)
    try:
        if kind == "parquet":
            frame.write_parquet(temporary)
        elif kind == "csv":
            frame.write_csv(temporary)
        else:
            frame.write_ndjson(temporary)
        os.replace(temporary, path)
    except Exception as error:
        temporary.unlink(missing_ok=True)
        raise SelflengthenError(f"{path}: cannot be written as {kind}: {first_line(error)}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_instructions(path: Path, what: str) -> pl.DataFrame:
    """Instructions from a user's file: an `instruction` column of non-empty text, and an `id`
    column (made from the row number when absent)."""
    frame = read_table(path)
    require_columns(frame, path, "instruction")
    if frame.schema["instruction"] != pl.String:
        raise SelflengthenError(
            f"{path}: column 'instruction' must hold text, not {frame.schema['instruction']}"
        )
    empty = frame.filter(pl.col("instruction").is_null() | (pl.col("instruction").str.strip_chars() == ""))
    if empty.height:
        raise SelflengthenError(f"{path}: {empty.height} row(s) with an empty 'instruction'")
    if "id" not in frame.columns:
        frame = frame.with_row_index("id").with_columns(pl.format("{}-{}", pl.lit(what), pl.col("id")))
    frame = frame.with_columns(pl.col("id").cast(pl.String))
    if frame["id"].n_unique() != frame.height:
        raise SelflengthenError(f"{path}: column 'id' has duplicate values")
    return frame
