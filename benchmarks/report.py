"""`selflengthen report` on a synthetic run of 10,000 extended rows (2 iterations of 5,000
instructions, each answered, extended and kept), against reading the same rows' parquet files.

The run folder is written with the steps' own writers: each iteration's instructions, initial
answers (~400 words) and extended rows (the first half of the answer with words inserted, then
new text: ~800 words), stats.json files, and extend rollouts that record where stage 2 began and
two rejected attempts per row. Timed (best of `--rounds`): the whole report (read, highlight the
sample rows, draw, write) and, as the floor, polars reading the rows it reads. Target: ≤ 10 s.

    python benchmarks/report.py [--rows 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
import time
from pathlib import Path

import polars as pl

from selflengthen.builders.folder import finish_step, step_folder, word_summary
from selflengthen.report import write_report

TARGET_SECONDS = 10.0
_VOCABULARY = [f"w{index}" for index in range(3000)]


def _words(chooser: random.Random, count: int) -> list[str]:
    return chooser.choices(_VOCABULARY, k=count)


def write_run(run_dir: Path, rows: int, iterations: int = 2) -> None:
    chooser = random.Random(0)
    (run_dir / "config.yaml").parent.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"name: bench\niterations: {iterations}\n")
    per_iteration = rows // iterations
    for iteration in range(1, iterations + 1):
        instructions, initial, extended, rollouts = [], [], [], []
        for index in range(per_iteration):
            instruction = f"Write about topic {iteration}.{index}."
            answer = _words(chooser, chooser.randint(300, 500))
            half = len(answer) // 2
            expansion = answer[:half]
            for at in sorted(chooser.sample(range(half), 10), reverse=True):
                expansion[at:at] = _words(chooser, 15)
            continuation = _words(chooser, chooser.randint(300, 400))
            head = " ".join(expansion) + " "
            text, long_text = " ".join(answer), head + " ".join(continuation)
            common = {"id": f"i{iteration}-{index}-s0", "iteration": iteration, "instruction": instruction}
            instructions.append(
                {"id": f"i{iteration}-{index}", "iteration": iteration, "instruction": instruction}
            )
            initial.append(common | {"response": text, "words": len(answer)})
            extended.append(
                common
                | {
                    "initial_response": text,
                    "initial_words": len(answer),
                    "extended_response": long_text,
                    "extended_words": len(expansion) + len(continuation),
                }
            )
            rejected = [
                {"reason": "🔁 Repetition: repeated_ngram", "detail": "w1 w2 w3", "text": long_text}
            ] * 2
            rollouts.append(
                {
                    "id": common["id"],
                    "text": text,
                    "metadata": {
                        "instruction": instruction,
                        "rollout_results": [
                            {
                                "continued_at": len(head),
                                "failure": None,
                                "tally": {"rejected_examples": rejected},
                            }
                        ],
                    },
                }
            )
        words = [row["words"] for row in initial]
        finish_step(step_folder(run_dir, iteration, "instructions"), pl.DataFrame(instructions),
                    {"rows_out": per_iteration})  # fmt: skip
        finish_step(
            step_folder(run_dir, iteration, "initial"),
            pl.DataFrame(initial),
            {"samples_requested": per_iteration, "samples_accepted": per_iteration, "rows_out": per_iteration,
             "words": word_summary(words)},
        )  # fmt: skip
        extended_folder = step_folder(run_dir, iteration, "extended")
        finish_step(
            extended_folder, pl.DataFrame(extended), {"rows_grown": per_iteration, "rows_out": per_iteration}
        )
        (extended_folder.work / "rollouts").mkdir(parents=True)
        with gzip.open(extended_folder.work / "rollouts" / "00000_chunk_0.jsonl.gz", "wt") as stream:
            stream.writelines(json.dumps(document) + "\n" for document in rollouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="extended rows in the run")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        write_run(run_dir, options.rows)
        report_times, read_times = [], []
        for _ in range(options.rounds):
            started = time.perf_counter()
            for path in sorted(run_dir.glob("iter_*/*/data/*.parquet")):
                pl.read_parquet(path)
            read_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            page = write_report(run_dir)
            report_times.append(time.perf_counter() - started)
        size = page.stat().st_size
    best, floor = min(report_times), min(read_times)
    print(
        f"report of a run of {options.rows:,} extended rows (2 iterations); target <= {TARGET_SECONDS:.0f} s"
    )
    print(f"polars reads the rows          {floor * 1e3:8.1f} ms")
    ratio = f"{best / floor:.1f}x the read; page {size / 2**20:.2f} MiB"
    print(f"selflengthen report            {best * 1e3:8.1f} ms  ({ratio})")
    print("target met" if best <= TARGET_SECONDS else "TARGET MISSED")


if __name__ == "__main__":
    main()
