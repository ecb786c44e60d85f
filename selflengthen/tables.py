"""Reading and writing the tables users bring and the ones we produce (JSONL, CSV, parquet).

Writes are atomic: the table goes to a temporary file beside the target, which is then renamed
over it, so a reader never sees half a file and a failed write leaves the old file intact.
"""

from __future__ import annotations

import hashlib
import io
import os
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


def read_table(path: Path) -> pl.DataFrame:
    """Read a JSONL, CSV or parquet file into a polars frame.

    Raises `SelflengthenError` (naming the file) when it is missing, of an unknown type, not
    UTF-8, unparsable, or has no rows.
    """
    kind = table_format(path)
    if not path.is_file():
        raise SelflengthenError(f"{path}: no such file")
    try:
        if kind == "parquet":
            frame = pl.read_parquet(path)
        else:
            raw = path.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SelflengthenError(
                    f"{path}: not UTF-8 text (bad byte at offset {error.start})"
                ) from None
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
