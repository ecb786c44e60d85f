#!/usr/bin/env bash
# The main job: the generation steps of one Self-Lengthen macro-iteration on the embedded default
# model (SmolLM2-135M-Instruct served by vLLM on the CPU): self-instruct -> generate -> extend,
# with counts small enough for a laptop. Rerunning resumes an interrupted step and skips
# finished ones. Output: runs/demo/iter_1/{instructions,initial,extended}/.
set -euo pipefail
cd "$(dirname "$0")/.."
selflengthen=".venv/bin/selflengthen"
run="${RUN_DIR:-runs/demo}"
common=(--run-dir "$run" --seed 0 --concurrency 16)
# SmolLM2-135M writes English only, so it grows instructions from the English seeds.
"$selflengthen" self-instruct "${common[@]}" --count 6 --max-retries 8 --seed-language en
"$selflengthen" generate "${common[@]}" --samples-per-instruction 2 --max-retries 4 --max-tokens 1500
"$selflengthen" extend "${common[@]}" --rounds 2 --max-retries 4 --max-tokens 2000
