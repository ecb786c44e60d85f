"""Writes that never leave a file half-written: a temporary file beside the target, renamed over it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from selflengthen.tables import temporary_beside


def write_text_atomic(text: str, path: Path) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    temporary = temporary_beside(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    write_text_atomic(json.dumps(payload, ensure_ascii=False, indent=2), path)


def copy_file_atomic(source: Path, path: Path) -> None:
    """Copy `source` to a temporary file beside `path`, then rename it over `path`."""
    temporary = temporary_beside(path)
    shutil.copyfile(source, temporary)
    os.replace(temporary, path)
