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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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


def _line_of(raw: bytes, offset: int, first_line: int = 1) -> int:
    return raw.count(b"\n", 0, offset) + first_line


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


def check_text(raw: bytes, path: Path, kind: str, first_line: int = 1, offset: int = 0) -> bytes:
    """The bytes of a JSONL or CSV file (or of its lines from `first_line` on, which start at
    byte `offset`) as text the tables may hold, or a one-line error naming the cause and the
    place: not UTF-8, a NUL byte, or (JSONL) a string escaping a lone UTF-16 surrogate or NUL,
    which would otherwise reach the model or the output as U+0000 or worse. A UTF-8 byte-order
    mark at the start of the file (spreadsheets write one) is dropped: it is not text."""
    if offset == 0 and raw.startswith(_BOM):
        raw, offset = raw[len(_BOM) :], len(_BOM)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = _line_of(raw, error.start, first_line)
        raise SelflengthenError(
            f"{path}: not UTF-8 text (bad byte at offset {offset + error.start}, line {line})"
        ) from None
    if (nul := raw.find(b"\x00")) >= 0:
        raise SelflengthenError(
            f"{path}: line {_line_of(raw, nul, first_line)}: a NUL byte (offset {offset + nul}); "
            "the file is not text"
        )
    if kind == "jsonl":
        checked: set[int] = set()
        for match in _SUSPECT_ESCAPE.finditer(raw):
            line = _line_of(raw, match.start(), first_line)
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


#: A streamed table's batch (`iter_table_batches`): at most this many rows, and (JSONL) at most
#: about this many bytes. With our filters a batch costs ~5x its bytes in memory at its peak.
BATCH_ROWS = 1024
BATCH_BYTES = 16 << 20


def iter_table_batches(path: Path, batch_rows: int | None = None) -> Iterator[pl.DataFrame]:
    """The rows of a JSONL or parquet file, `batch_rows` at a time (JSONL: fewer when they pass
    `BATCH_BYTES`), in order, each batch checked
    as `read_table` checks a whole file, so that a file larger than memory can be worked through
    (`selflengthen filter`, `sample`). A CSV file (whose rows may span lines) is read whole.
    Raises `SelflengthenError` like `read_table`, with the line where it can."""
    kind = table_format(path)
    if not path.is_file():
        raise SelflengthenError(f"{path}: no such file")
    if kind == "csv":
        yield read_table(path)
        return
    batch_rows = batch_rows or BATCH_ROWS
    rows = 0
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                rows += batch.num_rows
                yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]
        else:
            for frame in _jsonl_batches(path, batch_rows):
                rows += frame.height
                yield frame
    except SelflengthenError:
        raise
    except Exception as error:  # polars and pyarrow raise several types; all mean the same here
        raise SelflengthenError(f"{path}: cannot be read as {kind}: {first_line(error)}") from None
    if rows == 0:
        raise SelflengthenError(f"{path}: no rows" if path.stat().st_size else f"{path}: the file is empty")


def _jsonl_batches(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    lines: list[bytes] = []
    start, offset = 1, 0  # the batch's first line and byte

    def parse() -> pl.DataFrame | None:
        raw = check_text(b"".join(lines), path, "jsonl", start, offset)
        if not raw.strip():
            return None
        try:
            return pl.read_ndjson(io.BytesIO(raw))
        except Exception as error:
            where, problem = f"lines {start}-{start + len(lines) - 1}", first_line(error)
            for number, line in enumerate(lines, start):  # the line at fault, where JSON can tell
                try:
                    if line.strip():
                        json.loads(line)
                except ValueError as bad:
                    where, problem = f"line {number}", first_line(bad)
                    break
            raise SelflengthenError(f"{path}: {where}: cannot be read as jsonl: {problem}") from None

    with path.open("rb") as stream:
        size = 0  # of the batch's lines
        for line in stream:
            lines.append(line)
            size += len(line)
            if len(lines) == batch_rows or size >= BATCH_BYTES:
                if (frame := parse()) is not None:
                    yield frame
                start, offset, lines, size = start + len(lines), offset + size, [], 0
        if lines and (frame := parse()) is not None:
            yield frame


class TableWriter:
    """Writes a table batch by batch to a temporary file beside `path`, renamed over `path` when
    the block ends without an error (removed when it ends with one): readers never see half a
    file, and memory holds one batch. Batches must have the first one's columns and types."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path, self.kind = path, check_output(path, overwrite)
        self.rows = 0
        self._temporary: Path | None = None
        self._stream: Any = None
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pl.Schema | None = None

    def __enter__(self) -> TableWriter:
        self._temporary = temporary_beside(self.path)
        if self.kind != "parquet":
            self._stream = self._temporary.open("wb")
        return self

    def write(self, frame: pl.DataFrame) -> None:
        if self._schema is None:
            self._schema = frame.schema
        elif frame.schema != self._schema and self.kind != "jsonl":  # JSON lines carry no schema
            try:
                frame = frame.cast(dict(self._schema), strict=True)  # type: ignore[arg-type]
            except Exception as error:
                raise SelflengthenError(
                    f"{self.path}: the rows' columns differ between batches of the input "
                    f"({first_line(error)}); write .jsonl instead"
                ) from None
        if frame.height == 0:
            return
        assert self._temporary is not None
        if self.kind == "parquet":
            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._temporary, table.schema)
            self._parquet.write_table(table)
        elif self.kind == "csv":
            frame.write_csv(self._stream, include_header=self.rows == 0)
        else:
            frame.write_ndjson(self._stream)
        self.rows += frame.height

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        assert self._temporary is not None
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._stream is not None:
                self._stream.close()
            if kind is None:
                if self.rows == 0 and self.kind == "parquet":  # no row: the columns alone
                    pl.DataFrame(schema=self._schema).write_parquet(self._temporary)
                elif self.rows == 0 and self.kind == "csv":
                    pl.DataFrame(schema=self._schema).write_csv(self._temporary)
                os.replace(self._temporary, self.path)
        finally:
            self._temporary.unlink(missing_ok=True)
