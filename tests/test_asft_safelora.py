"""Safe LoRA post-hoc projection on a tiny adapter: which layers, exact C B, files, CLI, errors."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.penalty import find_lora_layers
from safeft.asft.safelora import safelora_project
from safeft.cli import main

from conftest import make_tiny_model, perturb_attention

VOCAB = 64
ALIGNED_LAYER = "model.layers.0.self_attn.q_proj"


def perturbed():
    return perturb_attention(make_tiny_model(VOCAB, seed=0), seed=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(direction dir, adapter dir): layer 0 q_proj's update lies inside span(U_k), the others are random."""
    root = tmp_path_factory.mktemp("safelora")
    make_tiny_model(VOCAB, seed=0).save_pretrained(root / "unaligned")
    perturbed().save_pretrained(root / "aligned")
    direction = compute_direction(
        DirectionRequest(
            str(root / "aligned"), str(root / "unaligned"), ["q_proj", "v_proj"], rank=3, paper=True
        )
    )
    direction.save(root / "direction")
    model = get_peft_model(perturbed(), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, module in find_lora_layers(model).items():
            B = module.lora_B["default"].weight
            if name == ALIGNED_LAYER:
                U = direction.layers[name].U
                B.copy_(U @ torch.randn(U.shape[1], B.shape[1], generator=g))
            else:
                B.copy_(0.1 * torch.randn(B.shape, generator=g))
    model.save_pretrained(root / "adapter")
    return root / "direction", root / "adapter"


def brute_cos(A, B, C):
    dW = B @ A
    return float(torch.nn.functional.cosine_similarity((C @ dW).reshape(1, -1), dW.reshape(1, -1)))


def test_threshold_projects_exactly_the_dissimilar_layers(setup, tmp_path):
    direction_dir, adapter_dir = setup
    direction = Direction.load(direction_dir)
    decisions = safelora_project(adapter_dir, direction, tmp_path / "out", threshold=0.5, variant="svd")
    before, after = (
        load_file(adapter_dir / "adapter_model.safetensors"),
        load_file(tmp_path / "out/adapter_model.safetensors"),
    )
    assert set(before) == set(after)
    by_name = {d.name: d for d in decisions}
    assert by_name[ALIGNED_LAYER].cos == pytest.approx(1.0, abs=1e-5) and not by_name[ALIGNED_LAYER].projected
    assert sum(d.projected for d in decisions) == 3
    for name, d in by_name.items():
        a_key = f"base_model.model.{name}.lora_A.weight"
        b_key = f"base_model.model.{name}.lora_B.weight"
        C = direction.layers[name].projector("svd").dense()
        assert d.cos == pytest.approx(brute_cos(before[a_key], before[b_key], C), abs=1e-5)
        assert torch.equal(after[a_key], before[a_key])
        expected = C @ before[b_key] if d.projected else before[b_key]
        torch.testing.assert_close(after[b_key], expected, atol=1e-6, rtol=1e-5)
    assert json.loads((tmp_path / "out/adapter_config.json").read_text())["r"] == 4
    report = json.loads((tmp_path / "out/safelora_report.json").read_text())
    assert report["n_projected"] == 3 and report["projector"] == "svd"
    merged = PeftModel.from_pretrained(perturbed(), tmp_path / "out")  # a loadable adapter
    assert len(find_lora_layers(merged)) == 4


def test_top_layers_and_paper_projector(setup, tmp_path):
    direction_dir, adapter_dir = setup
    direction = Direction.load(direction_dir)
    decisions = safelora_project(adapter_dir, direction, tmp_path / "out", top_layers=1)  # auto -> paper
    report = json.loads((tmp_path / "out/safelora_report.json").read_text())
    assert report["projector"] == "paper"
    cos = {d.name: d.cos for d in decisions}
    lowest = min(cos, key=cos.get)
    assert [d.name for d in decisions if d.projected] == [lowest]
    before = load_file(adapter_dir / "adapter_model.safetensors")
    a_key, b_key = f"base_model.model.{lowest}.lora_A.weight", f"base_model.model.{lowest}.lora_B.weight"
    layer = direction.layers[lowest]
    V_C = layer.F.double() @ layer.F.double().T / layer.fro_norm  # V V^T / ||V||_F
    assert cos[lowest] == pytest.approx(
        brute_cos(before[a_key].double(), before[b_key].double(), V_C), abs=1e-5
    )
    after = load_file(tmp_path / "out/adapter_model.safetensors")
    torch.testing.assert_close(after[b_key].double(), V_C @ before[b_key].double(), atol=1e-6, rtol=1e-5)


def test_cli_and_bad_input(setup, tmp_path, capsys):
    direction_dir, adapter_dir = setup
    args = ["safelora", "--adapter", str(adapter_dir), "--direction", str(direction_dir)]
    assert main([*args, "--threshold", "0.5", "--projector", "svd", "--out", str(tmp_path / "o")]) == 0
    assert "projected 3 of 4 layers" in capsys.readouterr().out
    assert main([*args, "--top-layers", "9", "--out", str(tmp_path / "o2")]) == 2
    assert "--top-layers must be in [0, 4]" in capsys.readouterr().err
    assert main([*args, "--threshold", "0.5", "--out", str(adapter_dir)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --threshold / --top-layers
        main([*args, "--threshold", "0.5", "--top-layers", "1", "--out", str(tmp_path / "o3")])


def test_adapter_of_another_model_is_refused(setup, tmp_path):
    direction_dir, _ = setup
    wide = get_peft_model(
        make_tiny_model(VOCAB, seed=0, hidden=48), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(
        DirectionError, match=r"another model: adapter layer model.layers.0.self_attn.q_proj is 48 x 48"
    ):
        safelora_project(tmp_path / "wide", Direction.load(direction_dir), tmp_path / "out", threshold=0.5)
