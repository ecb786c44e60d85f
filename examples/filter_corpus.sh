#!/usr/bin/env bash
# Run the quality filters and the length-weighted
# sampler over the example corpus (English and Chinese), writing to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
selflengthen=".venv/bin/selflengthen"
mkdir -p demo-out
"$selflengthen" filter examples/corpus.jsonl demo-out/kept.jsonl \
    --filters ending,repetition,character-loop,meta-comment,length --min-words 10 \
    --dropped demo-out/dropped.jsonl --overwrite
"$selflengthen" sample demo-out/kept.jsonl demo-out/sampled.jsonl --length-column text --seed 0 --overwrite
