"""Distributed training on 2 CPU processes (gloo): ``train_derta`` and ``train_asft`` end to end under
DDP (torchrun), the sparse-head loss and the saving path under FSDP2, and ``train_derta`` under
accelerate's FSDP (GPUs only).

The end-to-end runs go through ``dist_train.py``, which records on every rank its trained weights, what
its trainer looked like and each file it opened for writing; the tests then check that both ranks end
with the same weights, that self-distillation, the before/after check and the run's files come from
rank 0 alone, complete, and that rank 1 returned only after rank 0 had saved.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_tiny_model, perturb_attention
from derta_tiny import tiny_recipe, write_tiny_data

HERE = Path(__file__).parent
ACCELERATE = Path(__file__).resolve().parents[1] / "accelerate"

#: files of a run that rank 0 alone writes, each once
RANK0_FILES = [
    "recipe.yaml",
    "train_log.json",
    "adapter/adapter_config.json",
    "merged/config.json",
    "check_before.json",
    "check_before.jsonl",
    "check_after.json",
    "check_after.jsonl",
    "check.txt",
]
CHECK_GROUPS = {"harmful_direct", "harmful_prefill", "benign", "everyday"}


def run_launcher(cmd: list[str], report: Path, timeout: int = 300) -> list[dict]:
    """Run a 2-process launch command; return each rank's report (rank<R>.json) in rank order."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)  # keep the caller's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [json.loads(p.read_text()) for p in sorted(report.glob("rank*.json"))]


def torchrun(script: str, *args: str | Path, nproc: int = 2) -> list[str]:
    """torchrun on a free local port (``--standalone``)."""
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*runner, str(HERE / script), *map(str, args)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative_writes(report: dict, run: Path) -> list[str]:
    root = str(run.resolve()) + os.sep
    return [w.removeprefix(root) for w in report["writes"] if w.startswith(root)]


def assert_same_trained_weights(report: Path) -> dict[str, torch.Tensor]:
    """Both ranks ended with bit-identical trainable weights, and training moved LoRA B (it starts at
    zero); returns rank 0's weights."""
    rank0 = load_file(report / "rank0.safetensors")
    rank1 = load_file(report / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    assert any(rank0[n].abs().sum() > 0 for n in rank0 if "lora_B" in n)
    return rank0


def assert_rank0_outputs(run: Path, reports: list[dict]) -> None:
    """Rank 0 wrote each run file once; rank 1 wrote none (Trainer checkpoints aside) and returned after
    rank 0's files were written."""
    writes0, writes1 = relative_writes(reports[0], run), relative_writes(reports[1], run)
    for name in RANK0_FILES:
        assert writes0.count(name) == 1, (name, writes0)
    stray = [w for w in writes1 if not w.startswith("checkpoints/")]
    assert stray == [], f"rank 1 wrote run files: {stray}"
    for name in ("merged/model.safetensors", "check.txt", "check_after.json"):
        assert reports[1]["returned_at"] >= (run / name).stat().st_mtime, f"rank 1 left before {name}"


def assert_check_complete(run: Path) -> None:
    """The before/after check: every group in both JSON files, one JSONL line per answer, the table."""
    for when in ("before", "after"):
        result = json.loads((run / f"check_{when}.json").read_text())
        assert result.keys() >= CHECK_GROUPS and "selection_score" in result
        lines = (run / f"check_{when}.jsonl").read_text().splitlines()
        assert len(lines) == sum(result[g]["n"] for g in CHECK_GROUPS)
        assert all(json.loads(line)["set"] in CHECK_GROUPS for line in lines)
    table = (run / "check.txt").read_text()
    assert "harmful, direct" in table and "everyday instructions" in table and "selection score" in table


def assert_saved_models(run: Path, base_dir: Path, trained: dict[str, torch.Tensor]) -> None:
    """adapter/ holds the trained LoRA weights; merged/ equals the base with that adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {k.replace(".default", "") for k in trained} == set(adapter)
    for name, value in trained.items():
        torch.testing.assert_close(adapter[name.replace(".default", "")], value, rtol=0, atol=0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    want = PeftModel.from_pretrained(base, run / "adapter").merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").state_dict()
    assert merged.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(merged[name], want[name], rtol=1e-6, atol=1e-6)


def write_check_data(root: Path) -> dict[str, dict]:
    """Check sets apart from the training prompts: placeholder 'harmful' rows and benign prompts."""
    harmful, distill = root / "check_harmful.jsonl", root / "distill.jsonl"
    harmful.write_text(
        "".join(
            json.dumps({"q": f"placeholder check {i}?", "h": f"Sure. a{i} b{i} c{i}."}) + "\n"
            for i in range(3)
        )
    )
    distill.write_text("".join(json.dumps({"prompt": f"How do I fold {i} shirts?"}) + "\n" for i in range(3)))
    return {
        "check": {
            "n": 3,
            "max_new_tokens": 4,
            "harmful": {"path": str(harmful), "fields": {"prompt": "q", "harmful_response": "h"}},
            "benign": {"path": str(root / "data" / "benign.jsonl")},
        },
        "distill": {"path": str(distill)},
    }


@pytest.fixture(scope="module")
def talking_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random Llama whose greedy 2-token answers survive self-distillation's filter (seed 7 says
    "InterestingInteresting"; seed 0 says blank lines, which are dropped as empty)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("talking_model")
    model = make_tiny_model(len(tok), seed=7)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def derta_recipe(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    """The tiny DeRTa recipe with self-distillation and the before/after check on separate prompts."""
    write_tiny_data(tmp_path / "data")
    extra = write_check_data(tmp_path)
    fields = {
        "max_steps": 3,
        "save_steps": 100,
        "precision": "fp32",
        "self_distill": [extra["distill"]],
        "self_distill_max_new_tokens": 2,
        "cache_dir": str(tmp_path / "cache"),
        "check": extra["check"],
    }
    return tiny_recipe(tmp_path, model_dir, **{**fields, **overrides})


@pytest.mark.distributed
def test_derta_ddp_two_ranks_end_to_end(tmp_path, talking_model_dir):
    """train_derta on 2 gloo processes: self-distillation, check, training, adapter and merged/."""
    recipe = derta_recipe(tmp_path, talking_model_dir)
    report = tmp_path / "report"
    report.mkdir()
    reports = run_launcher(torchrun("dist_train.py", recipe, report), report)
    assert [r["world_size"] for r in reports] == [2, 2] and [r["steps"] for r in reports] == [3, 3]
    assert not any(r["sharded"] for r in reports)  # DDP: whole model per rank, head outside the forward
    assert [r["head_in_forward_calls"] for r in reports] == [0, 0]
    assert reports[0]["rows"] == reports[1]["rows"]  # rank 1 read the finished self-distillation cache
    trained = assert_same_trained_weights(report)

    run = tmp_path / "run"
    cache = [w for w in reports[0]["writes"] if "/self_distill/" in w and w.endswith(".jsonl")]  # not .lock
    assert cache and not [w for w in reports[1]["writes"] if "/self_distill/" in w]  # rank 0 generates
    assert len(Path(cache[0]).read_text().splitlines()) == 3
    split = json.loads((run / "split.json").read_text())
    assert sum(o.startswith("self_distill:") for o in split["train_helpful"]) == 3
    assert len(split["check_harmful"]) == 3 and len(split["check_benign"]) == 3
    for name in ("split.json", "data_stats.json"):
        assert relative_writes(reports[0], run).count(name) == 1
        assert reports[1]["returned_at"] >= (run / name).stat().st_mtime, f"rank 1 left before {name}"
    assert_rank0_outputs(run, reports)
    assert_check_complete(run)
    assert_saved_models(run, talking_model_dir, trained)


@pytest.fixture(scope="module")
def asft_setup(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path, Path]:
    """(aligned model dir, direction dir, task file): aligned = the tiny model with q/v perturbed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeft.asft.build import DirectionRequest, compute_direction

    root = tmp_path_factory.mktemp("asft_dist")
    model = perturb_attention(AutoModelForCausalLM.from_pretrained(tiny_model_dir), seed=1)
    model.save_pretrained(root / "aligned")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "aligned")
    compute_direction(
        DirectionRequest(str(root / "aligned"), str(tiny_model_dir), ["q_proj", "v_proj"], rank=4)
    ).save(root / "direction")
    rows = [
        {"instruction": "Sentiment of the input?", "input": f"movie number {i} was {w}", "output": w}
        for i, w in enumerate(["great", "awful"] * 6)
    ]
    (root / "task.json").write_text(json.dumps(rows))
    return root / "aligned", root / "direction", root / "task.json"


@pytest.mark.distributed
def test_asft_ddp_two_ranks_end_to_end(tmp_path, asft_setup):
    """train_asft (penalty on) on 2 gloo processes: check, training, adapter and merged/ from rank 0."""
    aligned, direction, task = asft_setup
    write_tiny_data(tmp_path / "data")
    recipe = {
        "method": "asft",
        "model": str(aligned),
        "output_dir": str(tmp_path / "run"),
        "train_data": [
            {"path": str(task), "fields": {"prompt": "instruction", "input": "input", "response": "output"}}
        ],
        "direction": str(direction),
        "penalty_lambda": 50.0,
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 100,
        "precision": "fp32",
        "lora": {"r": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "check": write_check_data(tmp_path)["check"],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    report = tmp_path / "report"
    report.mkdir()
    reports = run_launcher(torchrun("dist_train.py", tmp_path / "recipe.yaml", report), report)
    assert [r["world_size"] for r in reports] == [2, 2] and [r["steps"] for r in reports] == [3, 3]
    assert reports[0]["rows"] == reports[1]["rows"] == 12
    trained = assert_same_trained_weights(report)
    run = tmp_path / "run"
    log = [row for row in json.loads((run / "train_log.json").read_text()) if "loss" in row]
    assert len(log) == 3 and all("asft_penalty" in row and "task_loss" in row for row in log)
    assert_rank0_outputs(run, reports)
    assert_check_complete(run)
    assert_saved_models(run, aligned, trained)


@pytest.mark.distributed
def test_fsdp2_sparse_head_loss_and_gathered_save_on_cpu(tmp_path, tiny_model_dir):
    """torch's FSDP2 on 2 gloo processes (accelerate shards only on GPUs): the loss runs the head inside
    the forward and matches the unsharded model's; the trained weights match a full-batch unsharded
    run; rank 0 saves adapter/ and merged/ rebuilt from the gathered weights."""
    reports = run_launcher(torchrun("dist_fsdp.py", tiny_model_dir, tmp_path), tmp_path)
    for r in reports:
        assert (r["sharded_before"], r["sharded_after"], r["reference_sharded"]) == (False, True, False)
        assert r["head_in_forward_calls"] == 6  # 3 steps x (no-grad comparison + training forward)
        assert r["lora_B_moved"]
    assert reports[0]["gathered_names"] > 0 and reports[1]["gathered_names"] == 0
    assert [r["trained_model_returned"] for r in reports] == [True, False]  # whole on rank 0 only
    assert reports[0]["after_train_model_sharded"] is False  # the check would see a whole model
    trained = assert_same_trained_weights(tmp_path)
    run = tmp_path / "run"
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "reference_adapter" / "adapter_model.safetensors")
    assert adapter.keys() == reference.keys() == {k.replace(".default", "") for k in trained}
    for name in reference:
        torch.testing.assert_close(adapter[name], reference[name], rtol=1e-4, atol=1e-6)
    merged = load_file(run / "merged" / "model.safetensors")
    want = load_file(tmp_path / "reference_merged" / "model.safetensors")
    assert merged.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(merged[name], want[name], rtol=1e-4, atol=1e-6)


@pytest.mark.distributed
def test_fsdp2_asft_penalty_matches_an_unsharded_run_on_cpu(tmp_path, tiny_model_dir):
    """AsFT's penalty (svd + anti-direction term) bound before FSDP2 shards the model: equal to the
    unsharded copy's at every step, and the trained LoRA weights match a full-batch unsharded run."""
    reports = run_launcher(torchrun("dist_fsdp_asft.py", tiny_model_dir, tmp_path), tmp_path)
    for r in reports:
        assert r["sharded"] and r["penalty_fell"]
        assert r["penalty"][0] > 0
        for got, want in zip(r["penalty"], r["reference_penalty"], strict=True):
            assert got == pytest.approx(want, rel=1e-5)
        for got, want in r["anti"]:
            assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    reference = load_file(tmp_path / "reference.safetensors")
    assert rank0.keys() == rank1.keys() == reference.keys() and rank0
    for name in reference:
        torch.testing.assert_close(rank0[name], reference[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0)


FSDP_ON_CPU = (
    "accelerate runs FSDP only on GPUs: on the CPU `accelerate launch` with distributed_type FSDP trains "
    "with plain DDP (AcceleratorState keeps DistributedType.MULTI_CPU and Trainer.is_fsdp_enabled is False, "
    "seen with accelerate 1.15.0 / torch 2.13.0+cpu); torch's FSDP2 on the CPU is covered by "
    "test_fsdp2_sparse_head_loss_and_gathered_save_on_cpu"
)


NEEDS_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="no deepspeed")


@pytest.mark.distributed
@pytest.mark.skipif(not torch.cuda.is_available(), reason=FSDP_ON_CPU)
@pytest.mark.parametrize(
    ("config_file", "sharded"),
    [
        ("fsdp.yaml", True),
        pytest.param("deepspeed_zero2.yaml", False, marks=NEEDS_DEEPSPEED),
        pytest.param("deepspeed_zero3.yaml", True, marks=NEEDS_DEEPSPEED),
    ],
)
def test_derta_under_accelerate_on_gpus(tmp_path, talking_model_dir, config_file, sharded):
    """train_derta launched with a shipped accelerate config (FSDP2, ZeRO-2, ZeRO-3) on up to 2 GPUs: the
    head inside the forward exactly when the weights are sharded, identical gathered weights, the check
    and merged/ from rank 0 on the whole model."""
    nproc = min(2, torch.cuda.device_count())
    config = yaml.safe_load((ACCELERATE / config_file).read_text())
    config.update(num_processes=nproc, mixed_precision="no", main_process_port=free_port())
    (tmp_path / "launch.yaml").write_text(yaml.safe_dump(config))
    recipe = derta_recipe(tmp_path, talking_model_dir, dtype="fp32")  # exact comparisons, as on the CPU
    report = tmp_path / "report"
    report.mkdir()
    accelerate = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "launch.yaml"),
    ]
    reports = run_launcher([*accelerate, str(HERE / "dist_train.py"), str(recipe), str(report)], report, 600)
    assert all(r["world_size"] == nproc and r["steps"] == 3 for r in reports)
    assert all(r["sharded"] == sharded and (r["head_in_forward_calls"] > 0) == sharded for r in reports)
    assert all(r["fsdp"] == config_file.startswith("fsdp") for r in reports)
    run = tmp_path / "run"
    if nproc == 2:
        trained = assert_same_trained_weights(report)
        assert_rank0_outputs(run, reports)
    else:
        trained = load_file(report / "rank0.safetensors")
        assert any(trained[n].abs().sum() > 0 for n in trained if "lora_B" in n)
    assert_check_complete(run)
    assert_saved_models(run, talking_model_dir, trained)


@pytest.mark.parametrize(
    ("env", "trainer", "accelerator", "sharded"),
    [
        ({}, {}, True, False),
        ({"ACCELERATE_USE_FSDP": "true"}, {}, True, True),
        ({"ACCELERATE_USE_FSDP": "true"}, {}, False, False),  # accelerate trains with DDP on the CPU
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {}, True, True),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, {}, True, False),
        ({}, {"fsdp": "full_shard"}, True, True),
        ({}, {"deepspeed": {"zero_optimization": {"stage": 3}}}, True, True),
        ({}, {"deepspeed": "ZERO2_FILE"}, True, False),
        ({}, {"deepspeed": "ZERO3_FILE"}, True, True),
    ],
)
def test_sharded_training_reads_the_launch_and_the_recipe(
    monkeypatch, tmp_path, env, trainer, accelerator, sharded
):
    import safeft.training.base as base

    for stage in (2, 3):
        (tmp_path / f"zero{stage}.json").write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    if isinstance(trainer.get("deepspeed"), str):
        trainer = {"deepspeed": str(tmp_path / trainer["deepspeed"].lower().replace("_file", ".json"))}
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(base, "has_accelerator", lambda: accelerator)
    assert base.sharded_training(base.TrainConfig(trainer=trainer)) is sharded


def test_sharded_training_refuses_asft_penalty_and_select_best(monkeypatch, tmp_path, tiny_model_dir):
    """Both read whole weights outside the forward: refused before anything loads (AsFT's penalty under
    FSDP 1 or ZeRO-3 only: under FSDP2 it all-gathers the factors, test above)."""
    import safeft.training.base as base
    from safeft.asft.trainer import AsFTConfig, train_asft
    from safeft.check import train_with_check
    from safeft.config import ConfigError, from_dict
    from safeft.derta.trainer import DeRTaConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setattr(base, "has_accelerator", lambda: True)
    (tmp_path / "task.json").write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}]))
    asft = from_dict(
        AsFTConfig,
        {
            "model": str(tiny_model_dir),
            "output_dir": str(tmp_path / "a"),
            "train_data": [{"path": str(tmp_path / "task.json")}],
            "direction": str(tmp_path / "direction"),
        },
    )
    with pytest.raises(ConfigError, match=r"AsFT with a direction cannot train a model sharded by FSDP 1"):
        train_asft(asft)
    derta = from_dict(DeRTaConfig, {"output_dir": str(tmp_path / "d"), "check": {"select": "best"}})
    with pytest.raises(ConfigError, match=r"check\.select: best .* sharded .* use check\.select: last"):
        train_with_check(derta, None, None, None, [], set())


@pytest.mark.parametrize(
    ("env", "trainer", "refused"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {}, False),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, {}, True),
        ({"ACCELERATE_USE_FSDP": "true"}, {}, True),  # accelerate's default is FSDP 1
        ({}, {"fsdp": "full_shard"}, False),  # transformers' fsdp_config version defaults to 2
        ({}, {"fsdp": "full_shard", "fsdp_config": {"version": 1}}, True),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, {}, True),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, {}, False),
    ],
)
def test_asft_penalty_is_refused_under_fsdp1_and_zero3_only(monkeypatch, env, trainer, refused):
    import safeft.training.base as base
    from safeft.asft.trainer import AsFTConfig, refuse_sharded_penalty
    from safeft.config import ConfigError

    for name in (
        "ACCELERATE_USE_FSDP",
        "FSDP_VERSION",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(base, "has_accelerator", lambda: True)
    config = AsFTConfig(direction="some/direction", trainer=trainer)
    if refused:
        with pytest.raises(ConfigError, match="FSDP 1 or DeepSpeed ZeRO-3"):
            refuse_sharded_penalty(config)
    else:
        refuse_sharded_penalty(config)
    refuse_sharded_penalty(AsFTConfig(direction=None, trainer=trainer))  # no direction: plain LoRA
