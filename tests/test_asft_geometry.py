"""The update-geometry diagnostic and the two-sided penalty: factorised norms equal a dense brute force,
the svd penalty is total - left and the two-sided one total - block, a saved adapter is read through
the file, bad input names the problem."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.geometry import layer_geometry, update_geometry
from safeft.asft.penalty import AsFTPenalty, find_lora_layers, lora_two_sided_residual

from conftest import make_tiny_model, perturb_attention, randomise_lora_b

VOCAB = 64
K = 3


def test_layer_geometry_matches_dense_norms():
    g = torch.Generator().manual_seed(0)
    d_out, d_in, r, k = 10, 14, 4, 3
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    V = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    U_full, S_full, Wh = torch.linalg.svd(V, full_matrices=False)
    U, S, W = U_full[:, :k], S_full[:k], Wh[:k].mT
    s = 2.5
    dW = s * B @ A
    Vk = U @ torch.diag(S) @ W.mT
    total, left, block, along = layer_geometry(A, B, s, U, W, S)
    assert total == pytest.approx(float(dW.square().sum()), rel=1e-10)
    assert left == pytest.approx(float((U.mT @ dW).square().sum()), rel=1e-10)
    assert block == pytest.approx(float((U.mT @ dW @ W).square().sum()), rel=1e-10)
    assert along == pytest.approx(float((dW * Vk).sum() / Vk.norm()) ** 2, rel=1e-10)
    assert total >= left >= block >= along >= 0  # nested subspaces (V_k lies in U_k x W_k)


def test_an_update_along_v_is_all_block_and_all_along():
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(8, 2, generator=g, dtype=torch.float64))
    W, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    S = torch.tensor([3.0, 1.0], dtype=torch.float64)
    B, A = U @ torch.diag(S), W.mT  # s B A = V_k exactly
    total, left, block, along = layer_geometry(A, B, 1.0, U, W, S)
    assert left == pytest.approx(total) and block == pytest.approx(total) and along == pytest.approx(total)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    make_tiny_model(VOCAB, seed=0).save_pretrained(root / "unaligned")
    perturb_attention(make_tiny_model(VOCAB, seed=0), seed=1).save_pretrained(root / "aligned")
    compute_direction(
        DirectionRequest(str(root / "aligned"), str(root / "unaligned"), ["q_proj", "v_proj"], rank=K)
    ).save(root / "direction")
    model = randomise_lora_b(
        get_peft_model(
            perturb_attention(make_tiny_model(VOCAB, seed=0), seed=1),
            LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        )
    )
    model.save_pretrained(root / "adapter")
    return root, model


def test_update_geometry_of_a_saved_adapter_agrees_with_the_svd_penalty(saved):
    root, model = saved
    direction = Direction.load(root / "direction")
    geo = update_geometry(root / "adapter", root / "direction")
    assert geo.layers == len(direction.layers)
    penalty = AsFTPenalty(model, direction, variant="svd", check_weights=False)
    # the svd penalty is exactly the part of the update outside span(U_k)
    assert geo.total - geo.left == pytest.approx(float(penalty().detach()), rel=1e-4)
    shares = geo.shares()
    assert 0 < shares["block"] <= shares["left"] < 1
    assert geo.as_dict()["shares"] == shares


def test_update_geometry_names_a_direction_that_covers_no_layer(saved):
    root, _ = saved
    direction = Direction.load(root / "direction")
    elsewhere = Direction({f"other.{k}": v for k, v in direction.layers.items()}, direction.info)
    with pytest.raises(DirectionError, match="none of its 4 LoRA layers"):
        update_geometry(root / "adapter", elsewhere)


def test_the_experiment_summary_shows_each_runs_geometry(saved, tmp_path):
    import json
    import shutil

    from safeft.asft.summary import summarise

    root, _ = saved
    cell = {"asr": 0.1, "compliant": 5, "n": 50, "ci95": [0.04, 0.21]}
    task = {"accuracy": 0.8, "correct": 80, "n": 100, "ci95": [0.71, 0.87], "unparsed": 0}
    for name in ("aligned", "plain", "asft"):
        (tmp_path / f"eval_{name}").mkdir()
        results = {"attacks": {"direct": cell, "completion": cell}, "tasks": {"sst2": task}}
        (tmp_path / f"eval_{name}" / "results.json").write_text(json.dumps(results))
    shutil.copytree(root / "direction", tmp_path / "direction")
    shutil.copytree(root / "adapter", tmp_path / "plain" / "adapter")  # asft has no adapter: "-"
    rows = summarise(tmp_path, ["aligned", "plain", "asft"])
    geo = update_geometry(root / "adapter", root / "direction").as_dict()
    assert rows[1]["geometry"] == geo and "geometry" not in rows[2] and "geometry" not in rows[0]
    lines = (tmp_path / "summary.md").read_text().splitlines()
    shares = geo["shares"]
    assert lines[3].endswith(
        f"| {geo['total']:.3g}, {100 * shares['left']:.0f}%, {100 * shares['block']:.1f}% |"
    )
    assert lines[4].endswith("| - |")


def test_two_sided_residual_matches_dense_with_padded_columns():
    g = torch.Generator().manual_seed(2)
    L, d_out, d_in, r, k = 3, 9, 7, 4, 3
    A = torch.randn(L, r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(L, d_out, r, generator=g, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(L, d_out, k, generator=g, dtype=torch.float64))[0]
    W = torch.linalg.qr(torch.randn(L, d_in, k, generator=g, dtype=torch.float64))[0]
    U[0, :, -1] = 0  # a layer with fewer directions, zero-padded as AsFTPenalty stacks them
    W[0, :, -1] = 0
    s = torch.tensor([2.0, 4.0, 0.5], dtype=torch.float64)
    dW = s[:, None, None] * (B @ A)
    dense = (dW - U @ U.mT @ dW @ W @ W.mT).square().sum(dim=(-2, -1))
    torch.testing.assert_close(lora_two_sided_residual(A, B, s, U, W), dense)


def test_two_sided_penalty_is_total_minus_block_and_trains_only_lora(saved):
    root, model = saved
    direction = Direction.load(root / "direction")
    geo = update_geometry(root / "adapter", root / "direction")
    one_sided = AsFTPenalty(model, direction, variant="svd", check_weights=False)
    two_sided = AsFTPenalty(model, direction, variant="svd", check_weights=False, two_sided=True)
    value = two_sided()
    assert float(value.detach()) == pytest.approx(geo.total - geo.block, rel=1e-4)
    assert float(value.detach()) > float(one_sided().detach())  # the left-span moves are charged too
    value.backward()
    lora = find_lora_layers(model)
    assert all(m.lora_A["default"].weight.grad is not None for m in lora.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    model.zero_grad()


def test_two_sided_needs_svd_and_right_vectors(saved):
    root, model = saved
    direction = Direction.load(root / "direction")
    with pytest.raises(DirectionError, match="needs the svd projector"):
        AsFTPenalty(model, direction, variant="paper", check_weights=False, two_sided=True)
    for layer in direction.layers.values():
        layer.W = None
    with pytest.raises(DirectionError, match="right singular vectors"):
        AsFTPenalty(model, direction, variant="svd", check_weights=False, two_sided=True)


def test_projector_none_is_the_l2_penalty_on_the_update(saved):
    root, model = saved
    direction = Direction.load(root / "direction")
    geo = update_geometry(root / "adapter", root / "direction")
    l2 = AsFTPenalty(model, direction, variant="none", check_weights=False)
    assert float(l2().detach()) == pytest.approx(geo.total, rel=1e-4)


def test_split_adapter_cuts_an_update_into_the_part_in_span_u_and_the_rest(saved, tmp_path):
    from safeft.asft.adapter import LoraAdapter
    from safeft.asft.geometry import split_adapter

    root, _ = saved
    inside, outside = split_adapter(root / "adapter", root / "direction", tmp_path / "in", tmp_path / "out")
    whole, part_in, part_out = (LoraAdapter(p) for p in (root / "adapter", inside, outside))
    for module in whole.modules:
        A, B, s = whole.factors(module)
        A_in, B_in, s_in = part_in.factors(module)
        A_out, B_out, _ = part_out.factors(module)
        assert torch.equal(A, A_in) and torch.equal(A, A_out) and s_in == s
        assert torch.allclose(B_in + B_out, B, atol=1e-6)  # the parts add up to the update
    geo_in = update_geometry(inside, root / "direction").shares()
    geo_out = update_geometry(outside, root / "direction").shares()
    assert geo_in["left"] == pytest.approx(1.0, abs=1e-5)  # all of it in span(U_k): the svd penalty is 0
    assert geo_out["left"] == pytest.approx(0.0, abs=1e-5)  # none of it
    geo = update_geometry(root / "adapter", root / "direction")
    total_in = update_geometry(inside, root / "direction").total
    assert total_in == pytest.approx(geo.left, rel=1e-4)  # inside's norm is the whole update's left part
    assert (tmp_path / "in" / "adapter_config.json").is_file()
