#!/usr/bin/env bash
# The Self-Lengthen loop on a laptop: the embedded SmolLM2-135M-Instruct (from PyPI, no Hub
# access), vLLM on the CPU, 2 iterations with tiny counts, LoRA SFT on the CPU (~8 minutes on
# 2 cores). This is the README's main job (`make demo`). Rerunning resumes; extra arguments go
# to `selflengthen run`. Output: runs/smollm2-cpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
selflengthen="${SELFLENGTHEN:-.venv/bin/selflengthen}"
exec "$selflengthen" run --config recipes/smollm2-cpu/run.yaml "$@"
