#!/usr/bin/env bash
# The method on Llama 3.1 on one GPU node: Meta-Llama-3.1-8B-Instruct, English prompts, 3 iterations of 5,000 instructions.
# vLLM serves each role with one replica per GPU (data parallel); each role's LoRA SFT runs on all
# GPUs through accelerate + DeepSpeed ZeRO-3. Needs `make install-gpu` and Hub access.
# Rerunning resumes; extra arguments go to `selflengthen run` (e.g. --iterations 2).
set -euo pipefail
cd "$(dirname "$0")/.."
gpus="${GPUS:-$(nvidia-smi -L | wc -l)}"
exec selflengthen run --config recipes/llama3/run.yaml \
  --set "engine.data_parallel_size=${gpus}" \
  --set "train.accelerate_args=[--num_processes, '${gpus}']" "$@"
