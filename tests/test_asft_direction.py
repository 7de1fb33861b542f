"""``safeft direction`` on tiny random Llamas: exact V, storage round trip, adapters, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.targets import TargetError
from safeft.cli import main

from conftest import make_tiny_model, randomise_lora_b

VOCAB = 64
Q = "model.layers.0.self_attn.q_proj"
V_ = "model.layers.1.self_attn.v_proj"


def save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def perturb(model, seed: int, targets=("q_proj", "v_proj"), scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f"{t}.weight" in name for t in targets):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(aligned dir, unaligned dir): the aligned model is the unaligned one with q/v perturbed."""
    root = tmp_path_factory.mktemp("asft_pair")
    unaligned = save(make_tiny_model(VOCAB, seed=0), root / "unaligned")
    aligned = save(perturb(make_tiny_model(VOCAB, seed=0), seed=1), root / "aligned")
    return aligned, unaligned


def weights(path):
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


def test_two_models_give_the_exact_top_k_subspace(pair, tmp_path):
    aligned, unaligned = pair
    d = compute_direction(DirectionRequest(aligned, unaligned, ["q_proj", "v_proj"], rank=3, paper=True))
    assert len(d.layers) == 4 and set(d.layers) >= {Q, V_}
    wa, wu = weights(aligned), weights(unaligned)
    for name, layer in d.layers.items():
        V = wa[name + ".weight"] - wu[name + ".weight"]
        U, S, _ = torch.linalg.svd(V.double())
        torch.testing.assert_close(
            layer.U.double() @ layer.U.double().T, U[:, :3] @ U[:, :3].T, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(layer.S.double(), S, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            layer.F.double() @ layer.F.double().T, V.double() @ V.double().T, atol=1e-5, rtol=0
        )
        assert layer.fro_norm == pytest.approx(float(V.norm()), rel=1e-5)
        assert layer.aligned_norm == pytest.approx(float(wa[name + ".weight"].norm()), rel=1e-6)
        s = layer.summary()
        assert s["energy_k"] == pytest.approx(float((S[:3] ** 2).sum() / (S**2).sum()), rel=1e-5)
        assert s["sigma1_sq_ratio"] == pytest.approx(float(S[0] ** 2 / (S**2).sum()), rel=1e-5)
    out = d.save(tmp_path / "dir")
    back = Direction.load(out)
    assert back.has_paper and back.info["targets"] == ["q_proj", "v_proj"] and back.info["rank"] == 3
    for name in d.layers:
        assert torch.equal(back.layers[name].U, d.layers[name].U)
        assert torch.equal(back.layers[name].F, d.layers[name].F)
    summary = json.loads((out / "direction.json").read_text())
    assert summary["layers"][Q]["shape"] == [32, 32] and summary["n_layers"] == 4


def test_directories_are_streamed_without_loading_a_model(pair, monkeypatch):
    import safeft.models

    def refuse(*args, **kwargs):
        raise AssertionError("a full model was loaded")

    monkeypatch.setattr(safeft.models, "load_model", refuse)
    d = compute_direction(DirectionRequest(*pair, ["q_proj"], rank=2))
    assert len(d.layers) == 2


def test_loaded_source_gives_the_same_direction(pair, monkeypatch):
    """GGUF / hub models are loaded (not streamed) and keep only targeted weights: same result."""
    import safeft.asft.build as build
    import safeft.asft.weights as weights

    aligned, unaligned = pair
    streamed = compute_direction(DirectionRequest(aligned, unaligned, ["q_proj", "v_proj"], rank=2))
    for module in (build, weights):
        monkeypatch.setattr(module, "can_stream", lambda name: name != unaligned)
    loaded_src = weights.open_weights(unaligned, keep=lambda m: m.endswith("q_proj"))
    assert isinstance(loaded_src, weights.LoadedWeights)
    assert len(loaded_src._kept) == 2 and len(loaded_src.modules()) > 2  # only targets stay resident
    loaded = compute_direction(DirectionRequest(aligned, unaligned, ["q_proj", "v_proj"], rank=2))
    for name, layer in streamed.layers.items():
        assert torch.equal(layer.S, loaded.layers[name].S)


def test_adapter_gives_the_adapters_delta_exactly(pair, tmp_path):
    _, unaligned = pair
    base = make_tiny_model(VOCAB, seed=0)
    peft_model = randomise_lora_b(
        get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = save(peft_model.merge_and_unload(), tmp_path / "merged")

    from_adapter = compute_direction(
        DirectionRequest(str(tmp_path / "adapter"), unaligned, ["q_proj", "v_proj"], rank=4)
    )
    from_models = compute_direction(DirectionRequest(merged, unaligned, ["q_proj", "v_proj"], rank=4))
    reverse = compute_direction(
        DirectionRequest(unaligned, str(tmp_path / "adapter"), ["q_proj", "v_proj"], rank=4)
    )
    for name, layer in from_adapter.layers.items():
        assert layer.source == "lora" and layer.rank == 4  # exact rank, not a noisy full spectrum
        other = from_models.layers[name]
        torch.testing.assert_close(layer.S, other.S[:4], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.U @ layer.U.T, other.U @ other.U.T, atol=1e-4, rtol=0)
        assert layer.aligned_norm == pytest.approx(other.aligned_norm, rel=1e-6)
        assert reverse.layers[name].aligned_norm == pytest.approx(other.unaligned_norm, rel=1e-6)


def test_cli_writes_a_direction(pair, tmp_path, capsys):
    rc = main(
        [
            "direction",
            "--aligned",
            pair[0],
            "--unaligned",
            pair[1],
            "--out",
            str(tmp_path / "d"),
            "--rank",
            "2",
        ]
    )
    assert rc == 0
    assert "4 layers, k=2" in capsys.readouterr().out
    assert Direction.load(tmp_path / "d").layers[Q].k == 2


# --- bad input ---------------------------------------------------------------------------------


def test_target_matching_nothing(pair):
    with pytest.raises(TargetError, match=r"\['qproj'\] match no linear layer.*q_proj"):
        compute_direction(DirectionRequest(*pair, ["q_proj", "qproj"]))


def test_rank_larger_than_the_matrix(pair):
    with pytest.raises(DirectionError, match=r"--rank 40 is larger.*32 x 32"):
        compute_direction(DirectionRequest(*pair, ["q_proj"], rank=40))


def test_mismatched_shapes_name_the_first_layer(pair, tmp_path):
    other = save(make_tiny_model(VOCAB, seed=0, hidden=48), tmp_path / "wide")
    with pytest.raises(DirectionError, match=r"shape mismatch at model.layers.0.self_attn.q_proj"):
        compute_direction(DirectionRequest(pair[0], other, ["q_proj"]))


def test_missing_layers(pair, tmp_path):
    shallow = save(make_tiny_model(VOCAB, seed=0, layers=1), tmp_path / "shallow")
    with pytest.raises(DirectionError, match=r"model.layers.1.self_attn.q_proj .* missing"):
        compute_direction(DirectionRequest(pair[0], shallow, ["q_proj"]))


def test_identical_weights_are_refused(pair):
    with pytest.raises(DirectionError, match=r"V = 0 at layer model.layers.0.self_attn.k_proj"):
        compute_direction(DirectionRequest(*pair, ["k_proj"]))
    with pytest.raises(DirectionError, match="same model"):
        compute_direction(DirectionRequest(pair[0], pair[0], ["q_proj"]))


def test_cli_reports_bad_input_without_traceback(pair, tmp_path, capsys):
    rc = main(
        [
            "direction",
            "--aligned",
            pair[0],
            "--unaligned",
            pair[1],
            "--out",
            str(tmp_path / "d"),
            "--targets",
            "nope",
        ]
    )
    assert rc == 2
    assert "match no linear layer" in capsys.readouterr().err
