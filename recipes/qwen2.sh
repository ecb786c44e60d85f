#!/usr/bin/env bash
# The paper's run on one GPU node: Qwen2-7B-Instruct, 3 iterations of 5,000 instructions.
# vLLM serves each role with one replica per GPU (data parallel); each role's LoRA SFT runs on all
# GPUs through accelerate + DeepSpeed ZeRO-3. Needs `make install-gpu` and Hub access.
# Rerunning resumes; extra arguments go to `selflengthen run` (e.g. --iterations 2).
set -euo pipefail
cd "$(dirname "$0")/.."
gpus="${GPUS:-$(nvidia-smi -L | wc -l)}"
exec selflengthen run --config recipes/qwen2/run.yaml \
  --set "engine.data_parallel_size=${gpus}" \
  --set "train.accelerate_args=[--num_processes, '${gpus}']" "$@"
