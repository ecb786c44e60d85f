"""The CPU recipe's iteration-1 `generate` + `extend` at the engine's new pace: today's settings
(before `engine.dtype: auto` and speculation) against the new defaults, and speculation on vs
off with everything else equal.

The instructions are written once (`self-instruct`, the recipe's settings); then `generate` and
`extend` run on them as the step commands a user runs, against vLLM servers of ours, in one run:

- **before**: served in bfloat16 (what every CPU got before: the converted model's dtype),
  `--no-speculate`;
- **now**: the new defaults (`--dtype auto`, speculation on);
- **float32 off / on**: float32 (same seeds give the same text however requests are batched)
  with `--no-speculate` and with speculation, to compare the kept rows text for text; on a CPU
  without bf16 hardware, `now` is the float32 run with speculation.

Printed: wall time, completion tokens of the attempts used and of speculative attempts not
needed, mean requests in flight per step, kept rows, with ratios; the CPU is named. Server
starts are not timed.

    python benchmarks/engine_pace.py [--recipe recipes/smollm2-cpu/run.yaml] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from cpu_server import cpu_name
from step_runs import StepsRun, endpoint_flags, generate_and_extend, serving, write_instructions

from selflengthen.config import load_config
from selflengthen.engine.launch import on_gpu
from selflengthen.engine.models import resolve_model
from selflengthen.engine.options import EngineOptions
from selflengthen.engine.precision import cpu_flags, cpu_kind, serving_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-cpu/run.yaml"))
    parser.add_argument("--max-tokens", type=int, help="default: the recipe's sampling.max_tokens")
    parser.add_argument("--instructions", type=int, help="default: the recipe's self_instruct.count")
    parser.add_argument("--keep", type=Path, help="keep the runs' folders here")
    args = parser.parse_args()
    config = load_config(args.recipe)
    model = resolve_model(config.model)
    max_tokens = args.max_tokens or config.sampling.max_tokens
    max_len = max(config.engine.max_model_len, 2 * max_tokens + 2048)  # stage 2: text + continuation
    count = args.instructions or config.self_instruct.count
    auto = serving_precision("auto", on_gpu()).dtype or "bfloat16"
    # (label, dtype, flags); runs of one dtype share a server.
    plan = [("float32 off", "float32", "--no-speculate"), ("float32 on", "float32", "--speculate")]
    plan += [("before", "bfloat16", "--no-speculate")]
    if auto != "float32":
        plan += [("now", auto, "--speculate")]
    work = Path(tempfile.mkdtemp(prefix="engine-pace-bench-"))
    runs: dict[str, StepsRun] = {}
    try:
        instructions: Path | None = None
        for dtype in dict.fromkeys(dtype for _, dtype, _ in plan):
            options = EngineOptions(max_model_len=max_len, dtype=dtype)
            with serving(options, model.source, config.seed) as url:
                endpoint = endpoint_flags(config, url, model.source, max_len)
                if instructions is None:
                    instructions = write_instructions(
                        config, work / "instructions-run", endpoint, max_tokens, count
                    )
                for label, _, flag in (entry for entry in plan if entry[1] == dtype):
                    run = work / label.replace(" ", "-")
                    runs[label] = generate_and_extend(config, instructions, run, endpoint, max_tokens, flag)
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    if "now" not in runs:
        runs["now"] = runs["float32 on"]
    print(
        f"engine pace: {model.spec}, {count} instructions, max_tokens {max_tokens}; CPU: {cpu_name()} "
        f"({cpu_kind(cpu_flags())}); auto serves in {auto}"
    )
    print(
        f"{'run':12}{'wall s':>9}{'tokens used':>13}{'speculative':>13}{'tokens all':>12}"
        f"{'in flight (gen, ext)':>22}{'kept rows':>11}"
    )
    for label, run in runs.items():
        in_flight = ", ".join(f"{value:.1f}" for value in run.in_flight)
        total = run.completion_tokens + run.speculative_tokens
        print(
            f"{label:12}{run.seconds:>9.1f}{run.completion_tokens:>13}{run.speculative_tokens:>13}{total:>12}"
            f"{in_flight:>22}{run.kept_rows:>11}"
        )
    before, now = runs["before"], runs["now"]
    off, on = runs["float32 off"], runs["float32 on"]
    print(f"now / before, wall time: {now.seconds / before.seconds:.2f} (target <= 0.5)")
    on_tokens = (on.completion_tokens + on.speculative_tokens) / off.completion_tokens
    print(f"speculation, completion tokens on / off (float32): {on_tokens:.2f} (target <= 1.3)")
    print(f"speculation, wall time on / off (float32): {on.seconds / off.seconds:.2f}")
    print(f"kept rows identical with speculation on and off (float32, text for text): {on.same_rows(off)}")


if __name__ == "__main__":
    main()
