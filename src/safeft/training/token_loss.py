"""Cross-entropy at supervised positions only.

The usual causal-LM loss materialises ``logits = lm_head(hidden)`` for every position of the batch
(``B x T x |V|`` floats; for SmolLM2 that is 49,152 per token) and then throws most of it away (prompt,
padding, and for RTO rows ~95% of the harmful answer). Here the decoder runs once, and the LM head and
the fp32 soft-max run only on the ``N`` selected hidden states: ``loss_i = -log softmax(W h_i)[y_i]``.

Sharded models (FSDP 1/2, DeepSpeed ZeRO-3) hold only a shard of ``W`` outside their own forward, so
calling the head from here would see an empty or partial weight. For them the head runs *inside* the
model's forward, on the positions any row of the batch selects: ``logits_to_keep`` given as an index
tensor ``P`` (the union over the batch) makes the model compute ``lm_head(hidden[:, P])`` (``B x |P| x
|V|`` instead of ``N x |V|``, still far below the dense ``B x T x |V|``), and the selected rows are
gathered from that. Both paths give the same logits (tested).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

_SHARDED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):  # DistributedDataParallel and friends
        model = model.module
    return model


def _sharded_module(module: torch.nn.Module) -> bool:
    """Whether ``module`` itself is an FSDP 1 wrapper or an FSDP 2 (``fully_shard``) module."""
    import torch.distributed.fsdp as fsdp

    fsdp2 = getattr(fsdp, "FSDPModule", ())  # torch >= 2.6
    return type(module).__name__ == "FullyShardedDataParallel" or isinstance(module, fsdp2)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds its parameters sharded over processes (FSDP 1 or 2, DeepSpeed ZeRO-3).

    The model itself and its first parameter are looked at on every call: ``fully_shard`` shards a
    model in place (accelerate always shards the root), so the same object can be whole at one call and
    sharded at the next. The walk over all modules and parameters, for wrappers nested deeper, is cached
    per model object (walking an 8B model every step would cost milliseconds).
    """
    first = next(model.parameters(), None)
    if _sharded_module(model) or (first is not None and hasattr(first, "ds_id")):
        return True  # ZeRO-3 tags its partitioned params with ds_id
    if model not in _SHARDED:
        _SHARDED[model] = any(_sharded_module(m) for m in model.modules()) or any(
            hasattr(p, "ds_id") for p in model.parameters()
        )
    return _SHARDED[model]


def selected_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
    head_in_forward: bool | None = None,
) -> torch.Tensor:
    """fp32 logits ``[N, |V|]`` at the ``N`` positions where ``select`` (``[B, T]`` bool) is true.

    The forward goes through ``model`` itself (so DDP's gradient hooks and PEFT's adapters apply);
    ``logits_to_keep=1`` keeps the built-in head to one position, the final hidden states come back
    through ``output_hidden_states``. ``head_in_forward`` (default: when :func:`is_sharded`) runs the
    head inside the model's forward instead (see the module docstring).
    """
    if head_in_forward is None:
        head_in_forward = is_sharded(model)
    if head_in_forward:
        return _logits_from_forward(model, input_ids, attention_mask, select)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][select]
    base = _unwrap(model)
    head = base.get_output_embeddings()
    # the final hidden states can be fp32 while the head is bf16 (norms kept in fp32, no autocast)
    logits = head(hidden.to(head.weight.dtype)).float()
    softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _logits_from_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """The head inside the model's forward on the union ``P`` of selected positions, then a gather.

    Boolean indexing walks ``[B, T]`` and ``[B, |P|]`` in the same row-major order, and ``P`` is sorted,
    so the rows come back in the order of ``hidden[select]`` (softcapping, if any, is the model's own).
    """
    positions = select.any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions, use_cache=False)
    return out.logits[select[:, positions]].float()


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
