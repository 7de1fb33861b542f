"""Real-scale loading on tiny random models: dtype, gradient checkpointing, 4-bit errors, revisions,
the in-forward LM head used under FSDP / ZeRO-3, and generation device/dtype settings."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from safeft.config import ConfigError, from_dict
from safeft.data.chat import ChatFormat
from safeft.derta.features import build_derta_examples
from safeft.derta.trainer import DeRTaConfig, DeRTaTrainer, load_safety_data
from safeft.eval.generation import GenerationConfig, move_to_device
from safeft.models import LoadOptionError, model_fingerprint, resolve_dtype, resolve_model
from safeft.training.base import TrainConfig, load_for_training, run_trainer
from safeft.training.token_loss import is_sharded, selected_logits

from conftest import make_tiny_model
from derta_tiny import tiny_recipe


def _train(tmp_path: Path, model_dir: Path, **overrides):
    """One tiny DeRTa run through ``run_trainer`` (no check); returns (config, trainer)."""
    recipe = tiny_recipe(tmp_path, model_dir, check={"enabled": False}, max_steps=1, **overrides)
    data = yaml.safe_load(recipe.read_text())
    data.pop("method")
    config = from_dict(DeRTaConfig, data)
    model, tokenizer = load_for_training(config)
    examples, _ = build_derta_examples(load_safety_data(config), [], ChatFormat(tokenizer), seed=config.seed)
    trainer = run_trainer(config, DeRTaTrainer, model, tokenizer, examples)
    return config, trainer


def _checkpointing(model) -> bool:
    base = model.get_base_model()
    return bool(getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "fp8", "dtype must be one of auto, fp32, bf16, fp16"),
        ("device_map", "gpu0", "device_map must be auto"),
        ("attn_implementation", "fast", "attn_implementation must be one of eager, sdpa"),
        ("attn_implementation", "flash_attention_2", "needs the flash_attn package"),
    ],
)
def test_bad_loading_fields_name_the_field(field, value, message):
    if field == "attn_implementation" and value == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            pytest.skip("flash_attn is installed here")
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


def test_fp16_and_4bit_need_lora_and_device_map_refuses_multi_process(monkeypatch):
    no_lora = {"enabled": False}
    with pytest.raises(ConfigError, match="dtype fp16 needs LoRA"):
        from_dict(TrainConfig, {"dtype": "fp16", "lora": no_lora}).validate()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"device_map 'auto' .* leave device_map unset"):
        TrainConfig(device_map="auto").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_4bit_on_cpu_says_what_to_install_or_that_it_needs_cuda():
    with pytest.raises(
        ConfigError, match=r"load_in_4bit \(QLoRA\) needs (bitsandbytes: .*safeft\[qlora\]|a CUDA GPU)"
    ):
        TrainConfig(load_in_4bit=True).validate()


NEEDS_CUDA_AND_BNB = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="QLoRA needs a CUDA GPU and bitsandbytes",
)


@NEEDS_CUDA_AND_BNB
def test_qlora_trains_on_4bit_weights_and_merges_into_unquantised_ones(tmp_path, tiny_model_dir):
    """load_in_4bit: the base layers are NF4 (bitsandbytes Linear4bit) under LoRA, a step trains, and
    merged/ is the base re-loaded unquantised in bf16 with the adapter merged in (no 4-bit tensors)."""
    import bitsandbytes as bnb

    config, trainer = _train(tmp_path, tiny_model_dir, load_in_4bit=True, dtype="bf16", precision="bf16")
    quantised = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and trainer.state.global_step == 1
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantised)
    merged = Path(config.output_dir) / "merged"
    with safe_open(merged / "model.safetensors", "pt") as f:
        names = list(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in names}
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        base_names = list(f.keys())
    assert sorted(names) == sorted(base_names) and dtypes == {torch.bfloat16}


def test_eval_cli_generates_on_the_gpu_when_there_is_one(tmp_path, tiny_model_dir):
    """safeft eval --device cuda --dtype bf16 (cpu where torch sees no GPU) answers every prompt."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I boil {i} eggs?"}) + "\n" for i in range(3)))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "safeft.cli", "eval", "--model", str(tiny_model_dir), "--out", str(out)]
    cmd += ["--prompts", str(prompts), "--device", device, "--dtype", "bf16", "--max-new-tokens", "4"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in rows) == ["p:1", "p:2", "p:3"]
    assert all(r["gen"]["dtype"] == "bf16" and r["gen"]["max_new_tokens"] == 4 for r in rows)


def test_auto_dtype_is_fp32_on_cpu_and_for_full_finetuning():
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32
        assert TrainConfig().load_options().dtype in ("auto", "fp32")
    assert from_dict(TrainConfig, {"lora": {"enabled": False}}).load_options().dtype == "fp32"
    assert resolve_dtype("bf16") == torch.bfloat16


def test_revision_pins_hub_ids_and_enters_the_fingerprint(tiny_model_dir):
    assert resolve_model("org/model", "v1.0").describe() == "hub:org/model@v1.0"
    assert model_fingerprint("org/model") != model_fingerprint("org/model", revision="abc123")
    assert model_fingerprint("org/model", revision="abc123") == model_fingerprint(
        "org/model", revision="abc123"
    )
    with pytest.raises(LoadOptionError, match="revision 'main' applies to hub ids only"):
        resolve_model(tiny_model_dir, "main")


def test_fingerprint_follows_the_weight_files_not_the_path_that_reaches_them(
    tmp_path, tiny_model_dir, monkeypatch
):
    import os
    import shutil

    original = model_fingerprint(tiny_model_dir)
    linked = tmp_path / "linked"
    linked.symlink_to(tiny_model_dir, target_is_directory=True)
    assert model_fingerprint(linked) == original  # a run folder reached through a link
    monkeypatch.chdir(tiny_model_dir.parent)
    assert model_fingerprint(tiny_model_dir.name) == original  # a relative path
    copied = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))  # copy2 keeps the files' times
    assert model_fingerprint(copied) == original
    moved = Path(shutil.move(copied, tmp_path / "moved"))
    assert model_fingerprint(moved) == original  # moved: its cached generations stay valid
    weights = next(moved.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten (same size), 1 ns later
    assert model_fingerprint(moved) != original
    assert model_fingerprint(moved, adapter=tmp_path) != model_fingerprint(moved)  # an adapter folder


def test_bf16_run_saves_merged_model_in_bf16(tmp_path, tiny_model_dir):
    config, trainer = _train(tmp_path, tiny_model_dir, dtype="bf16", precision="fp32")
    assert trainer.state.global_step == 1
    merged = Path(config.output_dir) / "merged"
    with safe_open(merged / "model.safetensors", "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    assert dtypes == {torch.bfloat16}
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"


def test_bf16_weights_with_bf16_mixed_precision_train(tmp_path, tiny_model_dir):
    """The GPU default (bf16 weights + the Trainer's bf16 autocast, whose forward returns fp32 outputs),
    here on the CPU: it failed in the sparse LM head on an H200 before the head cast its input."""
    _, trainer = _train(tmp_path, tiny_model_dir, dtype="bf16", precision="bf16")
    assert trainer.args.bf16 and trainer.state.global_step == 1
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_gradient_checkpointing_runs_a_training_step(tmp_path, tiny_model_dir):
    config, trainer = _train(
        tmp_path, tiny_model_dir, precision="fp32", gradient_checkpointing=True, warmup_ratio=0.0
    )
    assert _checkpointing(trainer.model) and trainer.state.global_step == 1
    with safe_open(Path(config.output_dir) / "adapter" / "adapter_model.safetensors", "pt") as f:
        lora_b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]  # noqa: SIM118
    assert lora_b and any(b.abs().sum() > 0 for b in lora_b)  # B starts at zero: the step trained
    assert (Path(config.output_dir) / "merged" / "model.safetensors").is_file()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    from peft import LoraConfig, get_peft_model

    from safeft.training.token_loss import token_losses

    model = make_tiny_model(len(tokenizer), seed=4)
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.train()
    ids = torch.randint(0, len(tokenizer), (2, 16))
    mask = torch.ones_like(ids)
    select = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        losses, _ = token_losses(model, ids, mask, ids, select)
        losses.mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses.detach(), grads))
    assert _checkpointing(model)
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name])


def test_head_inside_forward_equals_sparse_head(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = make_tiny_model(len(tokenizer), seed=3)
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids = torch.randint(0, len(tokenizer), (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, [2, 5]] = True
    select[1, [5, 11]] = True
    select[2, 3] = True
    assert not is_sharded(model)
    grads = []
    logits = []
    for in_forward in (False, True):
        model.zero_grad()
        out = selected_logits(model, ids, mask, select, head_in_forward=in_forward)
        out.logsumexp(-1).sum().backward()
        logits.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert logits[0].shape == (5, len(tokenizer))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_generation_dtype_keys_the_cache_and_device_does_not():
    fp32 = GenerationConfig(dtype="fp32").cache_key()
    assert "dtype" not in fp32 and "device" not in fp32
    assert GenerationConfig(dtype="bf16").cache_key()["dtype"] == "bf16"
    assert GenerationConfig(dtype="fp32", device="cuda:1").cache_key() == fp32
    with pytest.raises(LoadOptionError, match="dtype must be one of"):
        GenerationConfig(dtype="int8").cache_key()


def test_move_to_device_moves_plain_models_but_not_dispatched_ones():
    model = make_tiny_model(64, seed=0)
    assert move_to_device(model, "meta").type == "meta"  # meta: a device that exists everywhere
    placed = make_tiny_model(64, seed=0)
    placed.hf_device_map = {"": "cpu"}
    assert move_to_device(placed, "meta").type == "cpu"


def test_bad_generation_device_says_what_is_accepted():
    model = make_tiny_model(64, seed=0)
    with pytest.raises(ValueError, match="device 'gpu0': expected cpu, cuda, cuda:N, mps or xpu"):
        move_to_device(model, "gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            move_to_device(model, "cuda")


def test_eval_flags_set_device_and_dtype(tmp_path):
    import argparse

    from safeft.commands import eval as eval_command

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I boil an egg?"}) + "\n")
    parser = argparse.ArgumentParser()
    eval_command.register(parser.add_subparsers())
    base = ["eval", "--model", "m", "--prompts", str(prompts), "--out", str(tmp_path)]
    args = parser.parse_args([*base, "--device", "cpu", "--dtype", "bf16"])
    gen = eval_command.build_suite(args).generation
    assert (gen.device, gen.dtype) == ("cpu", "bf16")
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--dtype", "fp8"])


def test_gpu_check_tiny_runs_on_cpu_and_writes_json(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["models"].keys() == report["models"].keys() == {"tiny-llama"}
    tiny = saved["models"]["tiny-llama"]
    for method in ("derta", "asft"):
        assert tiny[method]["tokens_per_s"] > 0 and tiny[method]["flops_per_token"] > 0
        assert tiny[method]["peak_gpu_mem_gib"] is None and tiny[method]["mfu"] is None  # CPU: no peak
    assert tiny["asft"]["trainable_params"] < tiny["derta"]["trainable_params"]  # r 8 q/v vs r 16 all
    assert tiny["generate"]["new_tokens_per_s"] > 0 and tiny["generate"]["new_tokens"] == 4


@pytest.mark.parametrize("name", ["derta_llama3_8b.yaml", "derta_llama3_70b_zero3.yaml"])
def test_llama_recipes_parse_and_validate(name):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / name).read_text())
    assert data.pop("method") == "derta"
    config = from_dict(DeRTaConfig, data)
    config.validate()
    assert config.load_options().dtype == "bf16" and config.gradient_checkpointing


class _Zero3Config:
    """Stands in for the Trainer's HfDeepSpeedConfig of a ZeRO-3 run (transformers holds a weak ref)."""

    config: typing.ClassVar[dict] = {"zero_optimization": {"stage": 3}}

    def is_zero3(self) -> bool:
        return True


def test_rank0_rebuild_loads_the_base_whole_inside_a_zero3_run(tmp_path, tiny_model_dir):
    """Under ZeRO-3, from_pretrained partitions what it loads; rank 0's copy for the check and merged/
    must be whole (an 8B ZeRO-3 run on an H200 failed merging LoRA into size-0 partitions)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    from safeft.training.base import add_lora, rebuilt_model

    recipe = tiny_recipe(tmp_path, tiny_model_dir, check={"enabled": False}, precision="fp32")
    data = yaml.safe_load(recipe.read_text())
    data.pop("method")
    config = from_dict(DeRTaConfig, data)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    want = {n: p.detach().clone() for n, p in base.named_parameters()}
    trained = add_lora(base, config.lora)
    gathered = {n: torch.randn_like(p) for n, p in trained.named_parameters() if p.requires_grad}
    hf_deepspeed.set_hf_deepspeed_config(zero3 := _Zero3Config())
    try:
        with pytest.raises(Exception):  # noqa: B017 (the premise: a plain load goes through zero.Init)
            AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model = rebuilt_model(config, gathered)
        assert hf_deepspeed.is_deepspeed_zero3_enabled()  # the run's config is back afterwards
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
    del zero3
    merged = model.merge_and_unload().state_dict()
    assert merged.keys() >= want.keys()
    assert all(merged[n].shape == want[n].shape for n in want)  # whole, not size-0 partitions
    for name in (n for n in want if "proj" not in n):  # embeddings and norms: no LoRA
        torch.testing.assert_close(merged[name], want[name])


def test_scale_check_dry_run_builds_a_model_and_validates_every_step(tmp_path, tokenizer_dir):
    """bench/scale_check.py --tiny --dry-run: the model folder loads and each train step's recipe +
    overrides validate (the GPU run itself needs a device)."""
    from transformers import AutoModelForCausalLM

    path = Path(__file__).resolve().parents[1] / "bench" / "scale_check.py"
    spec = importlib.util.spec_from_file_location("scale_check", path)
    scale_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale_check)
    argv = ["--tiny", "--dry-run", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    report = scale_check.main([*argv, "--tokenizer", str(tokenizer_dir)])
    assert set(report["steps"]) == {"qlora", "lora_bf16", "fsdp", "zero3"}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "w" / "model").num_parameters() > 0
    saved = json.loads((tmp_path / "o" / "scale_check.json").read_text())
    assert saved["steps"]["fsdp"]["argv"][:2] == ["safeft.cli", "train"]


def test_generation_on_one_rank_does_not_wait_for_the_others_under_zero3(monkeypatch, tokenizer):
    """With ZeRO-3 on and several processes, transformers' generate defaults to synced_gpus (every rank
    steps until all finish); rank 0's check generates alone, so the generator turns that off."""
    import transformers.generation.utils as generation_utils
    from transformers.integrations import deepspeed as hf_deepspeed

    from safeft.eval.generation import Conversation, HFGenerator

    model = make_tiny_model(len(tokenizer), seed=7)
    monkeypatch.setattr(generation_utils, "_get_torch_distributed_world_size", lambda: 2)
    hf_deepspeed.set_hf_deepspeed_config(zero3 := _Zero3Config())
    try:
        generator = HFGenerator(model, tokenizer, GenerationConfig(max_new_tokens=3, batch_size=2))
        answers = generator.generate([Conversation.user("Name a fruit.")] * 2)
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
    del zero3
    assert len(answers) == 2
