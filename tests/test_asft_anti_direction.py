"""The anti-direction term relu(-<dW, V_k>_F / ||V_k||_F)^2: right singular vectors stored and exact,
factorised value equals a dense brute force, sign, gradients into LoRA only, old files refused."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.penalty import AsFTPenalty, find_lora_layers, lora_alignment_projection, naive_anti_direction
from safeft.asft.spectral import dense_spectrum, lowrank_spectrum

from conftest import make_tiny_model, perturb_attention

VOCAB = 64
K = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("asft_anti")
    make_tiny_model(VOCAB, seed=0).save_pretrained(root / "unaligned")
    perturb_attention(make_tiny_model(VOCAB, seed=0), seed=1).save_pretrained(root / "aligned")
    return root


@pytest.fixture(scope="module")
def direction(models, tmp_path_factory):
    d = compute_direction(
        DirectionRequest(str(models / "aligned"), str(models / "unaligned"), ["q_proj", "v_proj"], rank=K)
    )
    out = tmp_path_factory.mktemp("anti_dir")
    d.save(out)
    return Direction.load(out)  # through the file: W must survive the round trip


def lora_model(seed=5, sign=1.0):
    model = get_peft_model(
        perturb_attention(make_tiny_model(VOCAB, seed=0), seed=1),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(sign * 0.1 * torch.randn(p.shape, generator=g))
    return model


def dense_deltas(models) -> dict[str, torch.Tensor]:
    """V = W_aligned - W_unaligned per targeted layer, straight from the two saved models."""
    from transformers import AutoModelForCausalLM

    a = dict(AutoModelForCausalLM.from_pretrained(models / "aligned").named_parameters())
    u = dict(AutoModelForCausalLM.from_pretrained(models / "unaligned").named_parameters())
    return {
        n.removesuffix(".weight"): (a[n] - u[n]).detach().double()
        for n in a
        if n.endswith(("q_proj.weight", "v_proj.weight"))
    }


def rank_k(V: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(V, full_matrices=False)
    return U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]


def test_spectra_keep_exact_right_singular_vectors():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(12, 20, generator=g, dtype=torch.float64)
    spec = dense_spectrum(V)
    torch.testing.assert_close(spec.U @ torch.diag(spec.S) @ spec.W.mT, V)
    B, A = (
        torch.randn(12, 3, generator=g, dtype=torch.float64),
        torch.randn(3, 20, generator=g, dtype=torch.float64),
    )
    low = lowrank_spectrum(B, A, 2.5)
    torch.testing.assert_close(low.U @ torch.diag(low.S) @ low.W.mT, 2.5 * B @ A)
    torch.testing.assert_close(low.W.mT @ low.W, torch.eye(3, dtype=torch.float64))


def test_projection_and_penalty_equal_dense_brute_force(models, direction):
    model = lora_model()
    penalty = AsFTPenalty(model, direction, anti_direction=True)
    deltas = dense_deltas(models)
    projections = penalty.alignment_projections()
    expected_total = torch.zeros((), dtype=torch.float64)
    for name, module in find_lora_layers(model).items():
        A = module.lora_A["default"].weight.double()
        B = module.lora_B["default"].weight.double()
        s = module.scaling["default"]
        Vk = rank_k(deltas[name], K)  # independent dense SVD of the dense delta
        dense_a = (s * (B @ A) * Vk).sum() / Vk.norm()
        torch.testing.assert_close(projections[name].double(), dense_a, rtol=1e-4, atol=1e-6)
        expected_total = expected_total + naive_anti_direction(A, B, s, Vk)
    torch.testing.assert_close(penalty.anti_direction().double(), expected_total, rtol=1e-4, atol=1e-7)


def test_only_moves_against_v_are_charged(direction):
    model = lora_model()
    penalty = AsFTPenalty(model, direction, anti_direction=True)
    a = {n: v.detach() for n, v in penalty.alignment_projections().items()}
    expected = sum(float(v) ** 2 for v in a.values() if v < 0)
    assert any(v < 0 for v in a.values()) and any(v > 0 for v in a.values())  # both signs present
    assert float(penalty.anti_direction()) == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():  # flip every update: the charged and the free layers swap
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.neg_()
    flipped = sum(float(v) ** 2 for v in a.values() if v > 0)
    assert float(penalty.anti_direction()) == pytest.approx(flipped, rel=1e-5)


def test_factorised_projection_matches_dense_on_a_batch():
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, 4, 10, generator=g), torch.randn(2, 6, 4, generator=g)
    P, W = torch.randn(2, 6, 3, generator=g), torch.randn(2, 10, 3, generator=g)
    dense = (0.5 * (B @ A) * (P @ W.mT)).sum(dim=(-2, -1))
    torch.testing.assert_close(lora_alignment_projection(A, B, 0.5, P, W), dense, rtol=1e-5, atol=1e-5)


def test_gradients_flow_only_into_lora(direction):
    model = lora_model(sign=-1.0)
    penalty = AsFTPenalty(model, direction, anti_direction=True)
    value = penalty.anti_direction()
    assert value > 0
    value.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_A" in n or "lora_B" in n for n in with_grad)
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad)
    assert not any(t.requires_grad for g in penalty.groups for t in g.anti)


def test_direction_without_right_vectors_is_refused(direction):
    layer = next(iter(direction.layers.values()))
    saved, layer.W = layer.W, None
    try:
        assert not direction.has_right_vectors
        AsFTPenalty(lora_model(), direction)  # plain AsFT still binds
        with pytest.raises(DirectionError, match=r"no right singular vectors .* recompute it"):
            AsFTPenalty(lora_model(), direction, anti_direction=True)
    finally:
        layer.W = saved
    with pytest.raises(DirectionError, match="anti_direction=True"):
        AsFTPenalty(lora_model(), direction).anti_direction()
