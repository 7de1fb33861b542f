#!/usr/bin/env bash
# The AsFT experiment of the README, end to end on the embedded default (needs ../shared/data):
#   aligned model -> direction (q_proj/v_proj, k 8, with the paper factors) -> fine-tune on AsFT's
#   SST-2 mix (10% harmful rows) once per run below -> safeft eval of each (suites/asft_sst2.yaml)
#   -> safeft report + summary tables with issue 8's targets (OUT/summary.md against plain_lora;
#   OUT/summary_official.md: the *_official runs against plain_lora_official; both cover every run
#   evaluated in OUT, also those of earlier calls with other RUNS).
# Usage: bash scripts/asft_experiment.sh [ALIGNED_MODEL_DIR] [OUT_DIR] [extra train overrides...]
# Budget knobs (environment): ROWS (task rows, harmful share kept; 400), EPOCHS (1), MAX_LENGTH (128),
#   OFFICIAL_EPOCHS (the official recipe's 10, cut to 1 by default), ANTI (anti-direction lambda; 100),
#   RUNS (which runs, in order; the first must be plain_lora), SAFELORA=1 adds Safe LoRA on plain LoRA,
#   EVAL_LIMIT (prompts per set and task, for a smoke run; default: the suite's 50 / 100),
#   EVAL_SUITE (suites/asft_sst2.yaml; suites/asft_sst2_n100.yaml asks twice as many).
# Runs: plain_lora (lambda 0) | asft_svd (lambda 1, svd, s B A) | asft_official (recipes/
#   asft_sst2_official.yaml: paper C on B A, lr 5e-5, StepLR 0.85, Alpaca layout, harmful rows under
#   their system prompt) | plain_lora_official (the same recipe with lambda 0) | asft_anti (asft_svd +
#   anti-direction term) | asft_lambda10 | asft_k2 (svd with the top 2 directions only) | asft_two_sided
#   (asft_svd with two_sided: true, penalising dW - U_k U_k^T dW W_k W_k^T) | asft_l2 (projector none:
#   C = 0, the penalty is ||s B A||_F^2; the control for "a small update" without the direction) |
#   asft_svd_official (the official recipe with the svd projector, on B A unscaled: only C differs from
#   asft_official) | asft_l2_official (the official recipe with projector none: the L2 control at the
#   official hyperparameters).
# Every step is skipped when its output exists, so an interrupted run resumes. The body is one function,
# which bash reads whole before running it: editing this file cannot change a run already going.
set -euo pipefail
main() {
cd "$(dirname "$0")/.."
ALIGNED=${1:-runs/derta_smollm2/merged}
OUT=${2:-runs/asft_experiment}
shift $(( $# > 2 ? 2 : $# ))
SAFEFT=${SAFEFT:-.venv/bin/safeft}
PY=${PY:-.venv/bin/python}
DATA=${SAFEFT_DATA_DIR:-../shared/data}
ROWS=${ROWS:-400}
EPOCHS=${EPOCHS:-1}
OFFICIAL_EPOCHS=${OFFICIAL_EPOCHS:-1}
MAX_LENGTH=${MAX_LENGTH:-128}
ANTI=${ANTI:-100}
RUNS=${RUNS:-plain_lora asft_svd asft_official asft_anti}
EVAL_SUITE=${EVAL_SUITE:-suites/asft_sst2.yaml}
mkdir -p "$OUT"
[ -d "$ALIGNED" ] || $SAFEFT train --config recipes/derta_smollm2.yaml --output_dir "$(dirname "$ALIGNED")"
[ -f "$OUT/direction/direction.json" ] || $SAFEFT direction --aligned "$ALIGNED" \
  --unaligned smollm2-135m-instruct --targets q_proj,v_proj --rank 8 --paper --out "$OUT/direction"
COMMON=(--model "$ALIGNED" --direction "$OUT/direction" --max_rows "$ROWS" --max_length "$MAX_LENGTH"
  --check.enabled false --merge false "$@")
train() {  # NAME RECIPE [overrides...]
  local name=$1 recipe=$2
  shift 2
  [ -f "$OUT/$name/adapter/adapter_config.json" ] || $SAFEFT train --config "$recipe" \
    --output_dir "$OUT/$name" "${COMMON[@]}" "$@"
}
evaluate() {  # NAME [safeft eval flags...]
  local name=$1
  shift
  [ -f "$OUT/eval_$name/results.json" ] || $SAFEFT eval --model "$ALIGNED" "$@" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} \
    --suite "$EVAL_SUITE" --data-dir "$DATA" --out "$OUT/eval_$name"
}
evaluate aligned
for run in $RUNS; do
  case $run in
    plain_lora) train "$run" recipes/asft_sst2_plain_lora.yaml --num_train_epochs "$EPOCHS" ;;
    asft_svd) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" ;;
    asft_official) train "$run" recipes/asft_sst2_official.yaml --num_train_epochs "$OFFICIAL_EPOCHS" ;;
    plain_lora_official) train "$run" recipes/asft_sst2_official.yaml --num_train_epochs "$OFFICIAL_EPOCHS" \
      --penalty_lambda 0 ;;
    asft_svd_official) train "$run" recipes/asft_sst2_official.yaml --num_train_epochs "$OFFICIAL_EPOCHS" \
      --projector svd ;;
    asft_l2_official) train "$run" recipes/asft_sst2_official.yaml --num_train_epochs "$OFFICIAL_EPOCHS" \
      --projector none ;;
    asft_anti) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" \
      --anti_direction_lambda "$ANTI" ;;
    asft_lambda10) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" --penalty_lambda 10 ;;
    asft_k2) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" --rank 2 ;;
    asft_two_sided) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" --two_sided true ;;
    asft_l2) train "$run" recipes/asft_sst2_smollm2.yaml --num_train_epochs "$EPOCHS" --projector none ;;
    *) echo "unknown run '$run' in RUNS" >&2; exit 2 ;;
  esac
  evaluate "$run" --adapter "$OUT/$run/adapter"
done
NAMES=(aligned $RUNS)
if [ "${SAFELORA:-0}" = 1 ]; then
  [ -f "$OUT/safelora/adapter_config.json" ] || $SAFEFT safelora --adapter "$OUT/plain_lora/adapter" \
    --direction "$OUT/direction" --threshold 0.5 --out "$OUT/safelora"
  evaluate safelora --adapter "$OUT/safelora"
  NAMES+=(safelora)
fi
# the report and tables cover every run evaluated in OUT, not only this call's RUNS (a call that adds
# one run keeps the others in summary.md), in one fixed order
KNOWN="plain_lora asft_svd asft_l2 asft_anti asft_lambda10 asft_k2 asft_two_sided asft_official"
KNOWN+=" asft_svd_official asft_l2_official plain_lora_official safelora"
RAN=" ${NAMES[*]} "
NAMES=(aligned)
for n in $KNOWN; do
  if [[ $RAN == *" $n "* ]] || [ -f "$OUT/eval_$n/results.json" ]; then NAMES+=("$n"); fi
done
EVALS=()
for n in "${NAMES[@]}"; do EVALS+=("$OUT/eval_$n"); done
LABELS=$(IFS=,; echo "${NAMES[*]}")
$SAFEFT report "${EVALS[@]}" --labels "$LABELS" --out "$OUT/report"
# one table per baseline: chat-layout runs against plain_lora (summary.md), the official recipe's runs
# against plain_lora_official (summary_official.md)
CHAT=() OFFICIAL=()
for n in "${NAMES[@]}"; do
  case $n in
    plain_lora_official) ;;
    *_official) OFFICIAL+=("$n") ;;
    *) CHAT+=("$n") ;;
  esac
done
if [[ " ${NAMES[*]} " == *" plain_lora "* ]]; then  # an official-only call has no chat-layout baseline
  $PY -m safeft.asft.summary "$OUT" "${CHAT[@]}"
fi
if [[ " ${NAMES[*]} " == *" plain_lora_official "* ]]; then
  $PY -m safeft.asft.summary "$OUT" aligned plain_lora_official "${OFFICIAL[@]}" --stem summary_official
fi
}
main "$@"
exit
