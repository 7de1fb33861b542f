"""The DeRTa objective.

For a batch with MLE positions M (helpful answers, refusals after a harmful prefix) and RTO positions
R (every position of a harmful answer, target = the refusal token r):

    L_MLE = -(1/|M|) sum_{t in M} log p(y_t | x_<=t)
    L_RTO = -(1/|R'|) sum_{t in R'} log p(r | x_<=t),   R' = a random ``rto_keep_ratio`` share of R

``token_mean`` minimises ``(|M| L_MLE + |R'| L_RTO) / (|M| + |R'|)``, the mean over all supervised tokens
of the batch, as the official trainers do (one ``CrossEntropyLoss`` over every labelled position of the
batch); ``weighted`` minimises ``L_MLE + rto_weight * L_RTO`` (a safeft option, not in the paper).

``decision_weight`` w (a safeft option, not in the paper; 0 = off) adds ``w L_first`` to either:

    L_first = -(1/|F|) sum_{t in F} log p(y_t | x_<=t),   F = the first supervised position of each row

i.e. the answer's first token (a helpful row's first word, "Sorry" for an empty-prefix refusal row and for
an RTO row) or, after a harmful prefix, the switch to the refusal. In the token means above each such
decision is one token among hundreds of a batch; ``L_first`` weighs the decisions as a per-row mean.

``guard_weight`` g (a safeft option, not in the paper; 0 = off) adds ``g L_guard``, an unlikelihood term
(Welleck et al. 2019, arXiv 1908.04319) on the refusal token inside helpful answers:

    L_guard = -(1/|G|) sum_{t in G} log(1 - p(r | x_<=t)),   G = the answer positions of helpful rows

(the rows' ``avoid`` column, built by ``build_derta_examples(guard=True)``). RTO raises p(r) after
harmful text; nothing in the paper's loss lowers it after benign text, where MLE only raises the
answer's own token. The guard states the contrast: refuse mid-answer after harmful text, never after
benign text.

``refusal_guard_weight`` g_r (a safeft option, not in the paper; 0 = off) adds ``g_r L_refusal_guard``,
the same unlikelihood inside the refusals:

    L_refusal_guard = -(1/|G_r|) sum_{t in G_r} log(1 - p(r | x_<=t)),
    G_r = the positions of each MLE refusal after its first token, end of turn included

(the ``avoid_in_refusal`` column, ``build_derta_examples(refusal_guard=True)``). RTO teaches "r after any
harmful text"; a refusal that follows harmful text is itself such text, and with few safety rows a small
model answers "Sorry, I can't help with that.Sorry, I can't ..." or "...SorrySorrySorry" instead of
going on with the refusal and ending its turn. Its own mean keeps these few positions from drowning in
the helpful rows' guard positions.

``rto_keep_ratio`` is the share of RTO positions trained per step. ``1.0`` is the paper's formula (every
position) and what the official LoRA script does (RobustNLP/DeRTa ``run_files/run_clm_lora_derta_llama.py``
sets the label of every answer position of a ``safe`` row to the refusal token); the official full
fine-tuning script (``run_files/run_clm_llms_derta_llama_drop_5_percent.py``) trains a random 5% of them.
R' is drawn from torch's global RNG, which the Trainer seeds and stores in checkpoints, so resumed runs
draw the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safeft.data.chat import IGNORE, KIND_MLE, KIND_NONE, KIND_RTO
from safeft.training.token_loss import token_losses


@dataclass
class DeRTaLoss:
    loss: torch.Tensor
    mle_loss: float | None
    rto_loss: float | None
    rto_accuracy: float | None  # share of supervised harmful positions whose argmax is the refusal token
    mle_tokens: int
    rto_tokens: int
    first_loss: float | None = None  # L_first, with decision_weight > 0
    guard_loss: float | None = None  # L_guard, with guard_weight > 0
    refusal_guard_loss: float | None = None  # L_refusal_guard, with refusal_guard_weight > 0


def first_supervised(kinds: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: the first position of each row with a target (kind MLE or RTO)."""
    supervised = kinds != KIND_NONE
    return supervised & (supervised.int().cumsum(dim=1) == 1)


def unlikelihood(
    logits: torch.Tensor, avoid: torch.Tensor, select: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``-log(1 - p(avoid_t | x_<=t))`` at ``positions`` (``[B, T]`` bool, within ``select``); ``logits``
    holds the selected positions only, in ``select``'s order."""
    at = positions[select]
    log_p = torch.log_softmax(logits[at], dim=-1).gather(1, avoid[select][at].unsqueeze(1)).squeeze(1)
    return -torch.log(-torch.expm1(log_p.clamp(max=-1e-6)))  # log(1 - p) = log(-expm1(log p)), p < 1


def derta_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    rto_keep_ratio: float = 1.0,
    weighting: str = "token_mean",
    rto_weight: float = 1.0,
    decision_weight: float = 0.0,
    guard_weight: float = 0.0,
    refusal_guard_weight: float = 0.0,
) -> DeRTaLoss:
    kinds, targets = batch["kinds"], batch["targets"]
    if guard_weight and "avoid" not in batch:
        raise ValueError(
            "guard_weight > 0 needs rows with an 'avoid' column: build them with "
            "build_derta_examples(..., guard=True)"
        )
    if refusal_guard_weight and "avoid_in_refusal" not in batch:
        raise ValueError(
            "refusal_guard_weight > 0 needs rows with an 'avoid_in_refusal' column: build them with "
            "build_derta_examples(..., refusal_guard=True)"
        )
    mle = kinds == KIND_MLE
    rto = kinds == KIND_RTO
    if rto_keep_ratio < 1.0:
        rto = rto & (torch.rand(kinds.shape, device=kinds.device) < rto_keep_ratio)
    first = first_supervised(kinds) if decision_weight else torch.zeros_like(mle)
    guarded = batch["avoid"] != IGNORE if guard_weight else torch.zeros_like(mle)
    in_refusal = batch["avoid_in_refusal"] != IGNORE if refusal_guard_weight else torch.zeros_like(mle)
    select = mle | rto | first | guarded | in_refusal  # a first position the RTO draw dropped: L_first only
    if not bool(select.any()):
        # Nothing supervised survived the draw. Still run the forward through ``model`` (DDP expects a
        # forward + backward on every rank each step) and return a zero loss on one position.
        select = torch.zeros_like(select)
        select[0, 0] = True
        losses, _ = token_losses(
            model, batch["input_ids"], batch["attention_mask"], targets.clamp(min=0), select
        )
        return DeRTaLoss(losses.sum() * 0.0, None, None, None, 0, 0)
    losses, logits = token_losses(model, batch["input_ids"], batch["attention_mask"], targets, select)
    is_rto = rto[select]
    is_mle = mle[select]
    n_rto = int(is_rto.sum())
    n_mle = int(is_mle.sum())
    mle_part = losses[is_mle]
    rto_part = losses[is_rto]
    if weighting == "token_mean":
        drawn = losses[is_mle | is_rto]
        loss = drawn.mean() if drawn.numel() else losses.sum() * 0.0
    elif weighting == "weighted":
        loss = (mle_part.mean() if n_mle else 0.0) + (rto_weight * rto_part.mean() if n_rto else 0.0)
    else:
        raise ValueError(f"weighting must be 'token_mean' or 'weighted', got {weighting!r}")
    first_loss = None
    if decision_weight:
        first_part = losses[first[select]]
        loss = loss + decision_weight * first_part.mean()
        first_loss = float(first_part.detach().mean())
    guard_loss = refusal_guard_loss = None
    if guard_weight and bool(guarded.any()):
        guard_part = unlikelihood(logits, batch["avoid"], select, guarded)
        loss = loss + guard_weight * guard_part.mean()
        guard_loss = float(guard_part.detach().mean())
    if refusal_guard_weight and bool(in_refusal.any()):
        refusal_part = unlikelihood(logits, batch["avoid_in_refusal"], select, in_refusal)
        loss = loss + refusal_guard_weight * refusal_part.mean()
        refusal_guard_loss = float(refusal_part.detach().mean())
    with torch.no_grad():
        accuracy = None
        if n_rto:
            accuracy = float((logits[is_rto].argmax(-1) == targets[select][is_rto]).float().mean())
    return DeRTaLoss(
        loss=loss,
        mle_loss=float(mle_part.detach().mean()) if n_mle else None,
        rto_loss=float(rto_part.detach().mean()) if n_rto else None,
        rto_accuracy=accuracy,
        mle_tokens=n_mle,
        rto_tokens=n_rto,
        first_loss=first_loss,
        guard_loss=guard_loss,
        refusal_guard_loss=refusal_guard_loss,
    )
