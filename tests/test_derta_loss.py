"""The DeRTa loss against a dense, full-vocabulary reference computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from safeft.data.chat import IGNORE, KIND_MLE, KIND_NONE, KIND_RTO
from safeft.derta.loss import derta_loss
from safeft.training.base import PaddingCollator

from conftest import make_tiny_model

VOCAB = 97
SORRY = 5


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for length, kind in [(12, KIND_MLE), (20, KIND_RTO), (7, KIND_MLE)]:
        ids = torch.randint(10, VOCAB, (length,), generator=g).tolist()
        start = 3
        if kind == KIND_MLE:
            targets = [IGNORE] * start + ids[start + 1 :] + [IGNORE]
        else:
            targets = [IGNORE] * start + [SORRY] * (length - start)
        kinds = [KIND_NONE] * start + [kind] * (length - start)
        kinds = [k if t != IGNORE else KIND_NONE for k, t in zip(kinds, targets, strict=True)]
        rows.append({"input_ids": ids, "targets": targets, "kinds": kinds})
    return PaddingCollator(pad_token_id=0)(rows)


def dense_losses(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    ce = F.cross_entropy(logits.transpose(1, 2), b["targets"].clamp(min=0), reduction="none")
    return ce, logits


def test_sparse_loss_equals_dense_loss_at_full_keep_ratio():
    model = make_tiny_model(VOCAB)
    b = batch()
    out = derta_loss(model, b, rto_keep_ratio=1.0)
    ce, logits = dense_losses(model, b)
    mle, rto = b["kinds"] == KIND_MLE, b["kinds"] == KIND_RTO
    torch.testing.assert_close(out.loss, ce[mle | rto].mean(), rtol=1e-5, atol=1e-5)
    assert abs(out.mle_loss - float(ce[mle].mean())) < 1e-5
    assert abs(out.rto_loss - float(ce[rto].mean())) < 1e-5
    assert out.rto_tokens == int(rto.sum()) and out.mle_tokens == int(mle.sum())
    expected_acc = float((logits[rto].argmax(-1) == SORRY).float().mean())
    assert abs(out.rto_accuracy - expected_acc) < 1e-6


def test_gradients_match_dense_loss():
    model = make_tiny_model(VOCAB)
    b = batch()
    derta_loss(model, b, rto_keep_ratio=1.0).loss.backward()
    sparse_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ce, _ = dense_losses(model, b)
    ce[b["kinds"] != KIND_NONE].mean().backward()
    for g_sparse, p in zip(sparse_grads, model.parameters(), strict=True):
        torch.testing.assert_close(g_sparse, p.grad, rtol=1e-4, atol=1e-6)


def test_weighted_loss_formula():
    model = make_tiny_model(VOCAB)
    b = batch()
    out = derta_loss(model, b, rto_keep_ratio=1.0, weighting="weighted", rto_weight=0.5)
    assert abs(float(out.loss) - (out.mle_loss + 0.5 * out.rto_loss)) < 1e-5


def test_keep_ratio_supervises_a_random_share_of_rto_positions():
    model = make_tiny_model(VOCAB)
    b = batch()
    torch.manual_seed(0)
    counts = [derta_loss(model, b, rto_keep_ratio=0.25).rto_tokens for _ in range(200)]
    total = int((b["kinds"] == KIND_RTO).sum())
    mean_share = sum(counts) / len(counts) / total
    assert abs(mean_share - 0.25) < 0.03
    assert all(
        derta_loss(model, b, rto_keep_ratio=0.25).mle_tokens == int((b["kinds"] == KIND_MLE).sum())
        for _ in range(3)
    )
    torch.manual_seed(7)
    first = derta_loss(model, b, rto_keep_ratio=0.25).loss
    torch.manual_seed(7)
    assert torch.equal(first, derta_loss(model, b, rto_keep_ratio=0.25).loss)  # reproducible draw


def test_empty_selection_gives_zero_loss_with_a_graph():
    model = make_tiny_model(VOCAB)
    b = batch()
    b["kinds"].fill_(KIND_NONE)
    out = derta_loss(model, b)
    assert float(out.loss) == 0.0 and out.loss.requires_grad
    out.loss.backward()


def test_bf16_model_whose_forward_returns_fp32_outputs():
    """accelerate's mixed precision wraps ``forward`` to return fp32 outputs (hidden states included)
    while the LM head stays bf16: the sparse head must cast (this failed on an H200, 2026-11-26)."""
    from accelerate.utils import convert_outputs_to_fp32

    model = make_tiny_model(VOCAB).to(torch.bfloat16)
    model.forward = convert_outputs_to_fp32(model.forward)
    b = batch()
    out = derta_loss(model, b)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_the_decision_term_adds_the_mean_loss_of_each_rows_first_supervised_token():
    from safeft.derta.loss import first_supervised

    model = make_tiny_model(VOCAB)
    b = batch()
    first = first_supervised(b["kinds"])
    assert first.sum(dim=1).tolist() == [1, 1, 1]  # one decision per row
    assert [int(r.nonzero()[0]) for r in first] == [3, 3, 3]  # where each row's answer starts
    ce, _ = dense_losses(model, b)
    for weighting in ("token_mean", "weighted"):
        plain = derta_loss(model, b, weighting=weighting, rto_weight=0.5)
        with_term = derta_loss(model, b, weighting=weighting, rto_weight=0.5, decision_weight=2.0)
        expected = float(plain.loss) + 2.0 * float(ce[first].mean())
        assert abs(float(with_term.loss) - expected) < 1e-4
        assert with_term.first_loss == pytest.approx(float(ce[first].mean()), abs=1e-5)
        assert plain.first_loss is None
        assert (with_term.mle_tokens, with_term.rto_tokens) == (plain.mle_tokens, plain.rto_tokens)
    # the RTO row's first position is in the decision term even where the RTO draw dropped it
    torch.manual_seed(0)
    dropped = derta_loss(model, b, rto_keep_ratio=1e-6, decision_weight=1.0)
    torch.manual_seed(0)
    baseline = derta_loss(model, b, rto_keep_ratio=1e-6)
    assert dropped.rto_tokens == baseline.rto_tokens == 0
    assert abs(float(dropped.loss) - float(baseline.loss) - float(ce[first].mean())) < 1e-4


def guarded_batch() -> dict[str, torch.Tensor]:
    """``batch()`` with an ``avoid`` column: the first (helpful) row guarded against SORRY, the others not."""
    b = batch()
    avoid = torch.full_like(b["targets"], IGNORE)
    helpful = b["kinds"][0] == KIND_MLE
    avoid[0, helpful] = SORRY
    return b | {"avoid": avoid}


def test_the_guard_term_is_the_unlikelihood_of_the_refusal_token_at_helpful_positions():
    model = make_tiny_model(VOCAB)
    b = guarded_batch()
    _, logits = dense_losses(model, b)
    at = b["avoid"] != IGNORE
    p_sorry = torch.softmax(logits[at], dim=-1)[:, SORRY]
    expected_guard = float(-torch.log1p(-p_sorry).mean())
    plain = derta_loss(model, b, decision_weight=0.5)
    guarded = derta_loss(model, b, decision_weight=0.5, guard_weight=3.0)
    assert plain.guard_loss is None
    assert guarded.guard_loss == pytest.approx(expected_guard, rel=1e-4)
    assert float(guarded.loss) == pytest.approx(float(plain.loss) + 3.0 * expected_guard, rel=1e-5)
    assert (guarded.mle_tokens, guarded.rto_tokens) == (plain.mle_tokens, plain.rto_tokens)


def p_sorry_after_training(b: dict[str, torch.Tensor], column: str, weight_name: str) -> dict[float, float]:
    """Mean p(SORRY) at the positions of ``b[column]`` after 5 SGD steps with the term off and on."""
    at = b[column] != IGNORE
    p_sorry = {}
    for weight in (0.0, 1.0):
        model = make_tiny_model(VOCAB)  # same seed, same initial weights
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(5):
            opt.zero_grad()
            derta_loss(model, b, **{weight_name: weight}).loss.backward()
            opt.step()
        with torch.no_grad():
            _, logits = dense_losses(model, b)
        p_sorry[weight] = float(torch.softmax(logits[at], dim=-1)[:, SORRY].mean())
    return p_sorry


def test_training_with_the_guard_leaves_less_refusal_probability_inside_helpful_answers():
    p_sorry = p_sorry_after_training(guarded_batch(), "avoid", "guard_weight")
    assert p_sorry[1.0] < p_sorry[0.0]


def test_the_guard_needs_the_avoid_column():
    model = make_tiny_model(VOCAB)
    with pytest.raises(ValueError, match="avoid"):
        derta_loss(model, batch(), guard_weight=1.0)
    assert derta_loss(model, batch(), guard_weight=0.0).guard_loss is None


def test_the_collator_pads_the_avoid_column_with_ignore():
    rows = [
        {"input_ids": [1, 2, 3], "targets": [2, 3, IGNORE], "kinds": [1, 1, 0], "avoid": [SORRY, SORRY, 0]},
        {"input_ids": [4], "targets": [IGNORE], "kinds": [0], "avoid": [IGNORE]},
    ]
    b = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert b["avoid"].tolist() == [[SORRY, SORRY, 0, IGNORE], [IGNORE] * 4]
    without = [{k: v for k, v in rows[0].items() if k != "avoid"}]
    assert "avoid" not in PaddingCollator(pad_token_id=0)(without)


def refusal_guarded_batch() -> dict[str, torch.Tensor]:
    """``guarded_batch()`` plus an ``avoid_in_refusal`` column: the third row taken as a refusal, guarded
    after its first MLE position."""
    b = guarded_batch()
    avoid = torch.full_like(b["targets"], IGNORE)
    answer = (b["kinds"][2] == KIND_MLE).nonzero().flatten()
    avoid[2, answer[1:]] = SORRY
    return b | {"avoid_in_refusal": avoid}


def test_the_refusal_guard_is_its_own_mean_of_the_unlikelihood_inside_refusals():
    model = make_tiny_model(VOCAB)
    b = refusal_guarded_batch()
    _, logits = dense_losses(model, b)
    p_sorry = torch.softmax(logits, dim=-1)[..., SORRY]
    in_refusal = b["avoid_in_refusal"] != IGNORE
    expected = float(-torch.log1p(-p_sorry[in_refusal]).mean())
    plain = derta_loss(model, b, guard_weight=3.0)
    both = derta_loss(model, b, guard_weight=3.0, refusal_guard_weight=2.0)
    assert plain.refusal_guard_loss is None
    assert both.refusal_guard_loss == pytest.approx(expected, rel=1e-4)
    assert both.guard_loss == pytest.approx(plain.guard_loss, rel=1e-5)  # the helpful guard is unchanged
    assert float(both.loss) == pytest.approx(float(plain.loss) + 2.0 * expected, rel=1e-5)
    # the refusal's positions are not pooled with the helpful guard's (a mean of its own)
    pooled = float(-torch.log1p(-p_sorry[in_refusal | (b["avoid"] != IGNORE)]).mean())
    assert both.refusal_guard_loss != pytest.approx(pooled, rel=1e-3)
    with pytest.raises(ValueError, match="avoid_in_refusal"):
        derta_loss(model, guarded_batch(), refusal_guard_weight=1.0)


def test_training_with_the_refusal_guard_lowers_the_refusal_token_inside_the_refusal():
    p_sorry = p_sorry_after_training(refusal_guarded_batch(), "avoid_in_refusal", "refusal_guard_weight")
    assert p_sorry[1.0] < p_sorry[0.0]
