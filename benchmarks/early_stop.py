"""Early stop on vs off: the CPU recipe's iteration-1 `generate` + `extend`, same instructions,
seeds and server, in one run.

The instructions are written once (`self-instruct`, the recipe's settings); then `generate` and
`extend` run twice on them, with `--no-early-stop` first and with early stop second, as the
step commands a user runs, against one vLLM server serving the embedded model in float32 (in
which the same seeds give the same text however requests are batched, so the kept rows can be
compared text for text). Printed: completion tokens, wall time, kept rows, and completion
tokens per kept word, each with its ratio to the run without early stop. The server's start is
not timed.

    python benchmarks/early_stop.py [--recipe recipes/smollm2-cpu/run.yaml] [--max-tokens 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from step_runs import endpoint_flags, generate_and_extend, serving, write_instructions

from selflengthen.builders.checks import DEFAULT_CHECKS
from selflengthen.config import load_config
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-cpu/run.yaml"))
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--instructions", type=int, help="default: the recipe's self_instruct.count")
    parser.add_argument("--keep", type=Path, help="keep both runs' folders here")
    args = parser.parse_args()
    config = load_config(args.recipe)
    model = resolve_model(config.model)
    max_len = max(config.engine.max_model_len, 2 * args.max_tokens + 2048)  # stage 2: text + continuation
    count = args.instructions or config.self_instruct.count
    work = Path(tempfile.mkdtemp(prefix="early-stop-bench-"))
    try:
        with serving(EngineOptions(max_model_len=max_len, dtype="float32"), model.source, config.seed) as url:
            endpoint = endpoint_flags(config, url, model.source, max_len)
            instructions = write_instructions(
                config, work / "instructions-run", endpoint, args.max_tokens, count
            )
            runs = {
                label: generate_and_extend(
                    config, instructions, work / f"early-stop-{label}", endpoint, args.max_tokens, flag
                )
                for label, flag in (("off", "--no-early-stop"), ("on", "--early-stop"))
            }
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    results = {
        label: {
            "completion tokens": run.completion_tokens,
            "wall seconds": run.seconds,
            "kept extended rows": run.kept_rows,
            "tokens per kept word": run.completion_tokens / run.kept_words
            if run.kept_words
            else float("nan"),
            "requests stopped early": run.stopped_early,
        }
        for label, run in runs.items()
    }
    print(f"early stop vs none: {model.spec}, {count} instructions, max_tokens {args.max_tokens}, float32")
    print(f"{'':26}{'off':>12}{'on':>12}{'on/off':>9}")
    for key in results["off"]:
        off, on = results["off"][key], results["on"][key]
        ratio = f"{on / off:.2f}" if off else "-"
        print(f"{key:26}{off:>12.1f}{on:>12.1f}{ratio:>9}")
    print(f"kept rows identical, text for text (initial and extended): {runs['on'].same_rows(runs['off'])}")
    saved_tokens = 1 - results["on"]["completion tokens"] / results["off"]["completion tokens"]
    saved_time = 1 - results["on"]["wall seconds"] / results["off"]["wall seconds"]
    print(f"completion tokens saved: {saved_tokens:.1%} (target >= 40%)")
    print(f"wall time saved: {saved_time:.1%} (target >= 30%)")
    texts = (
        runs["off"].frames["initial"]["response"].to_list()
        + runs["off"].frames["extended"]["extended_response"].to_list()
    )
    decoding = results["off"]["wall seconds"] / results["off"]["completion tokens"]
    watching = watch_seconds_per_chunk(texts)
    print(f"checks per streamed chunk: {watching * 1e6:.1f} µs vs {decoding * 1e6:.0f} µs of wall time per "
          f"generated token without early stop ({watching / decoding:.2%})")  # fmt: skip


def watch_seconds_per_chunk(texts: list[str], characters_per_chunk: int = 4) -> float:
    """The early-stop checks' cost per streamed chunk (~one token), fed the kept answers."""
    chunks = 0
    started = time.perf_counter()
    for text in texts:
        watch = DEFAULT_CHECKS.watch()
        for begin in range(0, len(text), characters_per_chunk):
            watch.feed(text[begin : begin + characters_per_chunk])
            chunks += 1
    return (time.perf_counter() - started) / max(chunks, 1)


if __name__ == "__main__":
    main()
