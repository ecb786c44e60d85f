#!/usr/bin/env bash
# The experiment that shows whether the loop lengthens (`make experiment`): 3 Self-Lengthen
# iterations on the embedded model (recipes/smollm2-lengthen/run.yaml), then the held-out
# evaluation of the base model and each iteration's Generator (prompts the loop never saw, 2
# samples each, plus the built-in length-following prompts). About 2 hours on 2 CPU cores.
# Rerunning resumes both parts. Output: runs/smollm2-lengthen/ and runs/smollm2-lengthen/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
selflengthen="${SELFLENGTHEN:-.venv/bin/selflengthen}"
run_dir=runs/smollm2-lengthen
"$selflengthen" run --config recipes/smollm2-lengthen/run.yaml "$@"
exec "$selflengthen" eval --compare "$run_dir" --out "$run_dir/eval" \
    --max-tokens 2000 --concurrency 64 --seed 0
