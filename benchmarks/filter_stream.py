"""`selflengthen filter` on a JSONL file larger than the memory it may use: streamed in batches
(the command) against the whole file read first (`read_table` + `apply_filters` + `write_table`,
what the command did before), both run here as separate processes on the same generated file.

Prints each side's peak RSS (`wait4`'s ru_maxrss) and CPU seconds, the ratios, and whether the
outputs are the same bytes. The issue's target: on a file 4x larger than the memory the command
may use, peak RSS at most 1 GB, and CPU time within 20% of the whole-file path.

    python benchmarks/filter_stream.py [--megabytes 400] [--skip-whole]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WHOLE_FILE = """
import sys
from pathlib import Path
from selflengthen.cli_corpus import DEFAULT_FILTERS, _build_filters
from selflengthen.filters import apply_filters
from selflengthen.tables import read_table, write_table
frame = read_table(Path(sys.argv[1]))
chain = _build_filters(DEFAULT_FILTERS, None, None, None, None, 1.2)
write_table(apply_filters(frame, chain).kept, Path(sys.argv[2]))
"""


def write_corpus(path: Path, megabytes: int) -> int:
    """~2,000-word documents from a 5,000-word vocabulary; every 10th one a loop (dropped)."""
    rng = random.Random(0)
    vocabulary = [f"w{index}" for index in range(5000)]
    rows = size = 0
    with path.open("w") as stream:
        while size < megabytes << 20:
            words = ["the same phrase again"] * 500 if rows % 10 == 0 else rng.choices(vocabulary, k=2000)
            line = json.dumps({"id": rows, "text": " ".join(words) + "."}) + "\n"
            stream.write(line)
            size, rows = size + len(line), rows + 1
    return rows


def measure(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and CPU seconds (user + system) of one process."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {command}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=400)
    parser.add_argument("--skip-whole", action="store_true", help="Only the streamed command.")
    args = parser.parse_args()
    command = shutil.which("selflengthen", path=str(Path(sys.executable).parent))
    assert command
    with tempfile.TemporaryDirectory(prefix="filter-stream-") as scratch:
        folder = Path(scratch)
        source = folder / "corpus.jsonl"
        rows = write_corpus(source, args.megabytes)
        tiny = folder / "tiny.jsonl"
        tiny.write_text("".join(source.open().readline() for _ in range(1)))
        start_rss, _ = measure([command, "filter", str(tiny), str(folder / "tiny-kept.jsonl")])
        streamed = measure([command, "filter", str(source), str(folder / "streamed.jsonl")])
        print(f"{args.megabytes} MB, {rows} rows; the command alone (1 row): {start_rss:.0f} MiB peak")
        print(f"streamed:   {streamed[0]:7.0f} MiB peak, {streamed[1]:7.1f} CPU s")
        if args.skip_whole:
            return
        whole = measure([sys.executable, "-c", WHOLE_FILE, str(source), str(folder / "whole.jsonl")])
        print(f"whole file: {whole[0]:7.0f} MiB peak, {whole[1]:7.1f} CPU s")
        same = (folder / "streamed.jsonl").read_bytes() == (folder / "whole.jsonl").read_bytes()
        rss, cpu = streamed[0] / whole[0], streamed[1] / whole[1]
        verdict = "identical" if same else "DIFFER"
        print(f"streamed / whole: {rss:.2f}x peak RSS, {cpu:.2f}x CPU time; outputs {verdict}")


if __name__ == "__main__":
    main()
