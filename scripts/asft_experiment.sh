#!/usr/bin/env bash
# The AsFT experiment of the README, end to end on the embedded default (needs ../shared/data):
#   aligned model (DeRTa) -> direction -> SST-2 with 10% harmful rows: plain LoRA, AsFT, Safe LoRA
#   -> safeft eval of each (suites/asft_sst2.yaml) -> safeft report.
# Usage: bash scripts/asft_experiment.sh [ALIGNED_MODEL_DIR] [OUT_DIR] [extra train overrides...]
# Every step is skipped when its output exists, so an interrupted run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ALIGNED=${1:-runs/derta_smollm2/merged}
OUT=${2:-runs/asft_experiment}
shift $(( $# > 2 ? 2 : $# ))
SAFEFT=${SAFEFT:-.venv/bin/safeft}
DATA=${SAFEFT_DATA_DIR:-../shared/data}
mkdir -p "$OUT"
[ -d "$ALIGNED" ] || $SAFEFT train --config recipes/derta_smollm2.yaml --output_dir "$(dirname "$ALIGNED")"
[ -f "$OUT/direction/direction.json" ] || $SAFEFT direction --aligned "$ALIGNED" \
  --unaligned smollm2-135m-instruct --targets q_proj,v_proj --rank 8 --paper --out "$OUT/direction"
COMMON=(--model "$ALIGNED" --direction "$OUT/direction" --num_train_epochs 1 --max_length 192 "$@")
[ -f "$OUT/plain_lora/adapter/adapter_config.json" ] || $SAFEFT train \
  --config recipes/asft_sst2_plain_lora.yaml --output_dir "$OUT/plain_lora" "${COMMON[@]}"
[ -f "$OUT/asft/adapter/adapter_config.json" ] || $SAFEFT train \
  --config recipes/asft_sst2_smollm2.yaml --output_dir "$OUT/asft" "${COMMON[@]}"
[ -f "$OUT/safelora/adapter_config.json" ] || $SAFEFT safelora --adapter "$OUT/plain_lora/adapter" \
  --direction "$OUT/direction" --threshold 0.5 --out "$OUT/safelora"
$SAFEFT eval --model "$ALIGNED" --suite suites/asft_sst2.yaml --data-dir "$DATA" --out "$OUT/eval_aligned"
for run in plain_lora asft; do
  $SAFEFT eval --model "$ALIGNED" --adapter "$OUT/$run/adapter" --suite suites/asft_sst2.yaml \
    --data-dir "$DATA" --out "$OUT/eval_$run"
done
$SAFEFT eval --model "$ALIGNED" --adapter "$OUT/safelora" --suite suites/asft_sst2.yaml \
  --data-dir "$DATA" --out "$OUT/eval_safelora"
$SAFEFT report "$OUT/eval_aligned" "$OUT/eval_plain_lora" "$OUT/eval_asft" "$OUT/eval_safelora" \
  --labels aligned,plain_lora,asft,safe_lora --out "$OUT/report"
