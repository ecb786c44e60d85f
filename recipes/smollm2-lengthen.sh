#!/usr/bin/env bash
# The experiment that shows whether the loop lengthens (`make experiment`, `make experiment
# SEED=1` for the replicate): 3 Self-Lengthen iterations on the embedded model
# (recipes/smollm2-lengthen/run.yaml, its `seed` replaced by $SEED), then the held-out evaluation
# of the base model and each iteration's Generator (prompts the loop never saw, 2 samples each,
# plus the built-in length-following prompts; the evaluation's own seed stays 0 so that every
# run is measured the same way), with each held-out answer's relevance to its prompt
# (`eval --relevance`, scored on the base model). About 2 hours on 2 CPU cores. Rerunning resumes both parts.
# Output: runs/smollm2-lengthen/ (seed 0) or runs/smollm2-lengthen-seed<N>/, with eval/ inside.
set -euo pipefail
cd "$(dirname "$0")/.."
selflengthen="${SELFLENGTHEN:-.venv/bin/selflengthen}"
seed="${SEED:-0}"
if ! [[ "$seed" =~ ^[0-9]+$ ]]; then
    echo "recipes/smollm2-lengthen.sh: SEED must be a non-negative integer (got '$seed')" >&2
    exit 2
fi
run_dir=runs/smollm2-lengthen
[[ "$seed" == 0 ]] || run_dir="$run_dir-seed$seed"
"$selflengthen" run --config recipes/smollm2-lengthen/run.yaml \
    --set "seed=$seed" --set "run_dir=$run_dir" "$@"
exec "$selflengthen" eval --compare "$run_dir" --out "$run_dir/eval" \
    --max-tokens 2000 --concurrency 64 --seed 0 --relevance
