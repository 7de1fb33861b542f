"""Real-scale check of the user-facing commands on one GPU: the README's ``safeft train`` / ``safeft eval`` /
``accelerate launch`` lines run on a randomly initialised model of Llama-3-8B's shape (no download).

    python bench/scale_check.py --out DIR            # one H100/H200, ~6 minutes
    python bench/scale_check.py --tiny --dry-run     # CPU: build a tiny model, validate every step's recipe

The model: ``LlamaForCausalLM`` with Llama-3-8B's configuration (``bench/gpu_check.py``'s ``LLAMA3_8B``),
random bf16 weights, saved as safetensors together with the embedded model's tokenizer (ids < 49,152; the
vocabulary rows above are unused but kept, so the memory is the 8B model's). Each step runs
``recipes/derta_llama3_8b.yaml`` as written, with only the overrides below (few steps, a small check):

* ``qlora``: ``safeft train --load_in_4bit true`` (NF4 base, LoRA in bf16; merged/ re-loads the base in bf16);
* ``lora_bf16``: ``safeft train`` as written (bf16 weights, gradient checkpointing), no merged/;
* ``eval``: ``safeft eval --device cuda --dtype bf16`` on the QLoRA run's merged/ (a few prompts);
* ``fsdp``: ``accelerate launch --config_file accelerate/fsdp.yaml --num_processes 1``;
* ``zero3``: ``accelerate launch --config_file accelerate/deepspeed_zero3.yaml --num_processes 1``
  (skipped without deepspeed).

Per step: exit status, wall seconds, the peak of ``nvidia-smi``'s memory.used (all processes on the card,
sampled every 0.5 s), optimizer steps and the last logged loss from ``train_log.json``, and the log's tail.
Results go to ``DIR/scale_check.json`` after every step (a step cut off by the time limit still leaves the
earlier ones). What it shows: that the commands run at this size and how much memory they take; the
weights are random, so losses and answers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_check import LLAMA3_8B, TINY, random_llama  # noqa: E402

RECIPE = ROOT / "recipes" / "derta_llama3_8b.yaml"
#: a short run of the recipe: few optimizer steps, a small before/after check
SHORT = ["--max_steps", "4", "--save_steps", "1000", "--logging_steps", "1"]
SHORT += ["--check.n", "8", "--check.max_new_tokens", "16"]


def build_model(shape: dict, out: Path, tokenizer_dir: str | None, device: str) -> dict:
    """Save a random model of ``shape`` (bf16 safetensors) with the embedded model's tokenizer to ``out``."""
    from transformers import AutoTokenizer

    from safeft.models import load_tokenizer, resolve_model

    start = time.perf_counter()
    tok = (
        AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer_dir
        else load_tokenizer(resolve_model("smollm2-135m-instruct"))
    )
    if shape["vocab_size"] < len(tok):
        shape = {**shape, "vocab_size": len(tok)}
    torch.manual_seed(0)
    model = random_llama(shape, torch.device(device), torch.bfloat16)
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"params": params, "seconds": round(time.perf_counter() - start, 1)}


def steps(model: Path, runs: Path, prompts: Path, tiny: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of each step, in the order they run."""
    safeft = [sys.executable, "-m", "safeft.cli"]
    train = ["train", "--config", str(RECIPE), "--model", str(model), *SHORT]
    no_check = ["--check.enabled", "false"]

    def launch(config: str) -> list[str]:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        return [*accelerate, "--config_file", str(ROOT / "accelerate" / config), "-m", "safeft.cli"]

    evaluate = ["eval", "--model", str(runs / "qlora" / "merged"), "--prompts", str(prompts)]
    evaluate += ["--out", str(runs / "eval"), "--device", "cuda", "--dtype", "bf16", "--max-new-tokens", "32"]
    plan = [
        ("qlora", [*safeft, *train, "--load_in_4bit", "true", "--output_dir", str(runs / "qlora")]),
        ("lora_bf16", [*safeft, *train, "--merge", "false", "--output_dir", str(runs / "lora_bf16")]),
        ("eval", [*safeft, *evaluate]),
        ("fsdp", [*launch("fsdp.yaml"), *train, *no_check, "--output_dir", str(runs / "fsdp")]),
        ("zero3", [*launch("deepspeed_zero3.yaml"), *train, *no_check, "--output_dir", str(runs / "zero3")]),
    ]
    if tiny:  # the CPU stand-in of the dry run: the same recipes, fp32 on a 2-layer model
        cpu = ["--dtype", "fp32", "--gradient_checkpointing", "false"]
        plan = [(name, [*argv, *cpu]) for name, argv in plan if name != "eval"]
    return plan


def validate(argv: list[str]) -> None:
    """Parse a train step's recipe + overrides and validate them, as ``safeft train`` does before loading."""
    from safeft.config import load_recipe
    from safeft.derta.trainer import DeRTaConfig

    i = argv.index("train")
    args = argv[i + 1 :]
    recipe = args[args.index("--config") + 1]
    overrides = [
        a for j, a in enumerate(args) if j not in (args.index("--config"), args.index("--config") + 1)
    ]
    config = load_recipe(DeRTaConfig, recipe, overrides)
    if "--load_in_4bit" not in argv:  # needs bitsandbytes and a GPU; checked where they are
        config.validate()


class MemoryPoll:
    """Peak ``nvidia-smi`` memory.used (MiB, all processes on GPU 0) while the block runs."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                used = int(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split()[0])
                self.peak = max(self.peak, used)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(self.every)

    def __enter__(self) -> MemoryPoll:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()


def run_step(name: str, argv: list[str], out: Path, timeout: float) -> dict:
    """Run one step; its log goes to ``out/<name>.log``."""
    log = out / f"{name}.log"
    start = time.perf_counter()
    with MemoryPoll() as memory, log.open("w") as f:
        try:
            rc = subprocess.run(
                argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    result: dict = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "peak_gpu_mib": memory.peak}
    run_dir = Path(argv[argv.index("--output_dir") + 1]) if "--output_dir" in argv else None
    if run_dir and (run_dir / "train_log.json").is_file():
        history = json.loads((run_dir / "train_log.json").read_text())
        history = history.get("log_history", history) if isinstance(history, dict) else history
        losses = [h["loss"] for h in history if isinstance(h, dict) and "loss" in h]
        result.update(logged_steps=len(losses), last_loss=losses[-1] if losses else None)
    if run_dir:
        result["saved"] = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
        if (run_dir / "merged").is_dir():
            result["merged"] = describe_weights(run_dir / "merged")
    result["tail"] = log.read_text(errors="replace").splitlines()[-8:]
    return result


def describe_weights(folder: Path) -> dict:
    """Size and tensor dtypes of a saved model's safetensors files (headers only)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    dtypes: set[str] = set()
    for path in files:
        with safe_open(path, "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (no iterator)
    return {"gb": round(sum(p.stat().st_size for p in files) / 1e9, 2), "dtypes": sorted(dtypes)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results"), help="results folder")
    p.add_argument("--work", default="/tmp/safeft_scale", help="model and run folders (large: ~35 GB)")
    p.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded model's)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model instead of Llama-3-8B's shape")
    p.add_argument("--dry-run", action="store_true", help="build the model, validate the steps, run none")
    p.add_argument("--only", nargs="*", help="run only these steps")
    p.add_argument("--step-timeout", type=float, default=240.0)
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "steps": {}}
    report["versions"] = {
        m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "accelerate")
    }
    for extra in ("bitsandbytes", "deepspeed"):
        report["versions"][extra] = (
            __import__(extra).__version__ if importlib.util.find_spec(extra) is not None else None
        )
    model = work / "model"
    report["model"] = build_model(TINY if args.tiny else LLAMA3_8B, model, args.tokenizer, device)
    prompts = work / "prompts.jsonl"
    questions = ["How do I boil an egg?", "Name three rivers in Europe.", "Explain what a haiku is."]
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    plan = steps(model, work / "runs", prompts, args.tiny)
    for name, step in plan:
        if args.only and name not in args.only:
            continue
        if args.dry_run:
            if "train" in step:
                validate(step)
            report["steps"][name] = {"argv": step[step.index("safeft.cli") :]}
            continue
        if name == "zero3" and report["versions"]["deepspeed"] is None:
            report["steps"][name] = {"skipped": "deepspeed is not installed"}
            continue
        print(f"[scale_check] {name}: {' '.join(step[1:])}", flush=True)
        report["steps"][name] = run_step(name, step, out, args.step_timeout)
        summary = {k: v for k, v in report["steps"][name].items() if k != "tail"}
        print(f"[scale_check] {name}: {json.dumps(summary)}", flush=True)
        (out / "scale_check.json").write_text(json.dumps(report, indent=1))
        # the disk holds ~4 copies of an 8B model: drop each merged/ once recorded (qlora's after eval)
        drop = {"qlora": None, "eval": "qlora"}.get(name, name)  # eval reads qlora's merged/
        if drop:
            shutil.rmtree(work / "runs" / drop / "merged", ignore_errors=True)
    (out / "scale_check.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
