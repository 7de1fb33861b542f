"""Cross-entropy at supervised positions only.

The usual causal-LM loss materialises ``logits = lm_head(hidden)`` for every position of the batch
(``B x T x |V|`` floats; for SmolLM2 that is 49,152 per token) and then throws most of it away (prompt,
padding, and for RTO rows ~95% of the harmful answer). Here the decoder runs once, and the LM head and
the fp32 soft-max run only on the ``N`` selected hidden states: ``loss_i = -log softmax(W h_i)[y_i]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model


def selected_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
) -> torch.Tensor:
    """fp32 logits ``[N, |V|]`` at the ``N`` positions where ``select`` (``[B, T]`` bool) is true.

    The forward goes through ``model`` itself (so DDP's gradient hooks and PEFT's adapters apply);
    ``logits_to_keep=1`` keeps the built-in head to one position, the final hidden states come back
    through ``output_hidden_states``.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][select]
    base = _unwrap(model)
    logits = base.get_output_embeddings()(hidden).float()
    softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def token_losses(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    select: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy ``[N]`` and the logits ``[N, |V|]`` at the selected positions."""
    logits = selected_logits(model, input_ids, attention_mask, select)
    return F.cross_entropy(logits, targets[select], reduction="none"), logits
