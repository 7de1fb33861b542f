#!/usr/bin/env bash
# Which part of a fine-tuning update moved the aligned model? For each trained run of an AsFT experiment
# folder (scripts/asft_experiment.sh), split its LoRA update into the part inside the alignment
# subspace span(U_k) (what the svd penalty leaves free) and the rest (what it charges)
# (safeft.asft.geometry.split_adapter), evaluate the aligned model with each part alone (the same suite
# as the whole), and write OUT/summary_decomposed.md beside the whole runs.
# Usage: bash scripts/asft_decompose.sh ALIGNED_MODEL_DIR OUT_DIR [RUN...]   (default runs:
#   plain_lora_official asft_official; EVAL_SUITE as in asft_experiment.sh, default suites/asft_sst2_n100.yaml)
# Every step is skipped when its output exists, so an interrupted call resumes.
set -euo pipefail
main() {
cd "$(dirname "$0")/.."
ALIGNED=$1
OUT=$2
shift 2
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(plain_lora_official asft_official)
SAFEFT=${SAFEFT:-.venv/bin/safeft}
PY=${PY:-.venv/bin/python}
DATA=${SAFEFT_DATA_DIR:-../shared/data}
EVAL_SUITE=${EVAL_SUITE:-suites/asft_sst2_n100.yaml}
NAMES=(aligned)
for run in "${RUNS[@]}"; do
  [ -f "$OUT/${run}_outside/adapter/adapter_config.json" ] || $PY -c "
import sys
from safeft.asft.geometry import split_adapter
out, run = sys.argv[1], sys.argv[2]
split_adapter(f'{out}/{run}/adapter', f'{out}/direction', f'{out}/{run}_inside/adapter', f'{out}/{run}_outside/adapter')
" "$OUT" "$run"
  for part in "$run" "${run}_inside" "${run}_outside"; do
    [ -f "$OUT/eval_$part/results.json" ] || $SAFEFT eval --model "$ALIGNED" --adapter "$OUT/$part/adapter" \
      ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --suite "$EVAL_SUITE" --data-dir "$DATA" --out "$OUT/eval_$part"
    NAMES+=("$part")
  done
done
[ -f "$OUT/eval_aligned/results.json" ] || $SAFEFT eval --model "$ALIGNED" \
  ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --suite "$EVAL_SUITE" --data-dir "$DATA" --out "$OUT/eval_aligned"
$PY -m safeft.asft.summary "$OUT" "${NAMES[@]}" --stem summary_decomposed
}
main "$@"
exit
