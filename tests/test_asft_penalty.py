"""The AsFT penalty bound to a PEFT LoRA model: equals brute force, gradients, bad directions."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import DirectionError
from safeft.asft.penalty import AsFTPenalty, find_lora_layers, naive_residual

from conftest import make_tiny_model, perturb_attention, randomise_lora_b

VOCAB = 64


def perturbed(seed: int):
    return perturb_attention(make_tiny_model(VOCAB, seed=0), seed)


@pytest.fixture(scope="module")
def direction(tmp_path_factory):
    root = tmp_path_factory.mktemp("asft_penalty")
    make_tiny_model(VOCAB, seed=0).save_pretrained(root / "unaligned")
    perturbed(1).save_pretrained(root / "aligned")
    return compute_direction(
        DirectionRequest(
            str(root / "aligned"), str(root / "unaligned"), ["q_proj", "v_proj"], rank=3, paper=True
        )
    )


def lora_model(base=None, targets=("q_proj", "v_proj"), seed=5):
    model = get_peft_model(
        base if base is not None else perturbed(1),
        LoraConfig(r=4, lora_alpha=16, target_modules=list(targets)),
    )
    return randomise_lora_b(model, seed)  # PEFT initialises B = 0 (zero penalty); give it a real value


@pytest.mark.parametrize("variant", ["svd", "paper"])
def test_bound_penalty_equals_brute_force_d_by_d(direction, variant):
    model = lora_model()
    penalty = AsFTPenalty(model, direction, variant=variant)
    expected = {}
    for name, module in find_lora_layers(model).items():
        A = module.lora_A["default"].weight.double()
        B = module.lora_B["default"].weight.double()
        C = direction.layers[name].projector(variant).dense().double()  # d_out x d_out, brute force
        expected[name] = naive_residual(A, B, module.scaling["default"], C)
    assert len(expected) == 4
    per_layer = penalty.per_layer()
    for name, value in expected.items():
        torch.testing.assert_close(per_layer[name].double(), value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(penalty().double(), sum(expected.values()), rtol=1e-5, atol=1e-7)


def test_rank_override_and_official_scaling(direction):
    model = lora_model()
    full = AsFTPenalty(model, direction).per_layer()
    k1 = AsFTPenalty(model, direction, rank=1).per_layer()
    unscaled = AsFTPenalty(model, direction, use_lora_scale=False).per_layer()
    for name in full:
        assert k1[name] > full[name]  # a smaller subspace leaves more of dW outside it
        torch.testing.assert_close(unscaled[name] * 16.0, full[name], rtol=1e-5, atol=0)  # s = 16/4
    with pytest.raises(DirectionError, match="rank 4 exceeds the 3 directions"):
        AsFTPenalty(model, direction, rank=4)


def test_gradients_flow_only_into_lora(direction):
    model = lora_model()
    penalty = AsFTPenalty(model, direction)
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss + penalty()
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_A" in n or "lora_B" in n for n in with_grad)
    assert not any(p.requires_grad for g in penalty.groups for p in (g.projector.U, g.scale_sq))
    # the penalty alone drives every LoRA factor
    model.zero_grad()
    penalty().backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_direction_for_another_model_is_refused(direction):
    with pytest.raises(DirectionError, match=r"another model: layer model.layers.0.self_attn.q_proj has"):
        AsFTPenalty(lora_model(base=perturbed(seed=9)), direction)
    with pytest.raises(DirectionError, match="matches the \\*unaligned\\* model"):
        AsFTPenalty(lora_model(base=make_tiny_model(VOCAB, seed=0)), direction)
    wide = make_tiny_model(VOCAB, seed=0, hidden=48)
    with pytest.raises(
        DirectionError, match=r"another model: layer model.layers.0.self_attn.q_proj is \(48, 48\)"
    ):
        AsFTPenalty(lora_model(base=wide), direction)


def test_missing_layers_and_missing_paper_factors(direction):
    with pytest.raises(DirectionError, match=r"no entry for LoRA layer model.layers.0.self_attn.k_proj"):
        AsFTPenalty(lora_model(targets=("q_proj", "k_proj", "v_proj")), direction)
    layer = next(iter(direction.layers.values()))
    layer_f, layer.F = layer.F, None
    try:
        with pytest.raises(DirectionError, match="no 'paper' factors"):
            AsFTPenalty(lora_model(), direction, variant="paper")
    finally:
        layer.F = layer_f
    with pytest.raises(DirectionError, match="no LoRA layers"):
        AsFTPenalty(perturbed(1), direction)
