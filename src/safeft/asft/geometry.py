"""Where a LoRA update sits relative to an alignment direction (a diagnostic for AsFT runs).

For one layer with update dW = s B A and the stored rank-k part of its alignment delta,
V_k = U_k diag(S_k) W_k^T, four squared Frobenius norms, each factorised (no d_out x d_in matrix):

    total     ||dW||^2                 = s^2 <B^T B, A A^T>_F
    left      ||U_k^T dW||^2           = s^2 ||G A||^2 = s^2 <G^T G, A A^T>_F,   G = U_k^T B  (k x r)
    block     ||U_k^T dW W_k||^2       = s^2 ||G (A W_k)||_F^2                   (k x k)
    along     <dW, V_k>_F^2 / ||V_k||_F^2

``left`` is what the AsFT ``svd`` penalty leaves free: total - left = ||(I - U_k U_k^T) dW||^2 is the
penalty itself. ``block`` is the part inside both of V's singular subspaces (column *and* row space);
``along`` the part along V_k itself (its sign is the anti-direction term's). So an AsFT run whose update
is mostly ``left`` but little ``block`` uses the alignment's output directions with input directions of
its own: the one-sided projector does not pin those.

:func:`split_adapter` cuts a saved update in two adapters that add up to it, ``inside`` = U_k U_k^T dW and
``outside`` = (I - U_k U_k^T) dW (lora_B replaced by U_k U_k^T B and B - U_k U_k^T B: still rank r, no
d x d matrix). Evaluating the aligned model with each part alone tells which part moved its behaviour:
the part the svd penalty leaves free, or the part it charges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from safeft.asft.adapter import LoraAdapter
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.penalty import lora_alignment_projection, lora_residual, lora_two_sided_residual
from safeft.asft.projectors import SVDProjector


@dataclass
class UpdateGeometry:
    """Squared norms of a LoRA update, summed over layers (see the module docstring)."""

    layers: int
    total: float
    left: float
    block: float
    along: float

    def shares(self) -> dict[str, float]:
        """``left``, ``block`` and ``along`` as fractions of ``total`` (0 where the update is 0)."""
        t = self.total
        return {k: (getattr(self, k) / t if t > 0 else 0.0) for k in ("left", "block", "along")}

    def as_dict(self) -> dict[str, float | int | dict[str, float]]:
        return {**asdict(self), "shares": self.shares()}


def layer_geometry(
    A: Tensor, B: Tensor, scale: float, U: Tensor, W: Tensor, S: Tensor
) -> tuple[float, float, float, float]:
    """``(total, left, block, along)`` of one layer; U (d_out x k), W (d_in x k), S (k,). ``left`` and
    ``block`` come from the penalties' own residuals (svd and two-sided), ``along`` from the
    anti-direction term's projection, in float64."""
    A, B, U, W, S = (t.double() for t in (A, B, U, W, S))
    total = scale**2 * float(((B.T @ B) * (A @ A.T)).sum())
    left = total - float(lora_residual(A, B, scale, SVDProjector(U)))
    block = total - float(lora_two_sided_residual(A, B, scale, U, W))
    norm = float(S.square().sum().sqrt())
    along = float(lora_alignment_projection(A, B, scale, U * (S / norm), W)) ** 2 if norm > 0 else 0.0
    return total, left, block, along


def update_geometry(adapter: str | Path | LoraAdapter, direction: str | Path | Direction) -> UpdateGeometry:
    """:class:`UpdateGeometry` of a saved LoRA adapter against a direction (every adapted layer the
    direction covers; the direction needs right singular vectors, as ``safeft direction`` writes)."""
    lora = adapter if isinstance(adapter, LoraAdapter) else LoraAdapter(adapter)
    dirn = direction if isinstance(direction, Direction) else Direction.load(direction)
    covered = [m for m in lora.modules if m in dirn.layers]
    if not covered:
        raise DirectionError(
            f"{lora.path}: none of its {len(lora.modules)} LoRA layers is in the direction "
            f"(targets {dirn.info.get('targets')})"
        )
    sums = [0.0, 0.0, 0.0, 0.0]
    for module in covered:
        layer = dirn.layers[module]
        if layer.W is None:
            raise DirectionError(
                f"the direction has no right singular vectors for {module} (built by an older safeft); "
                "recompute it with `safeft direction`"
            )
        A, B, scale = lora.factors(module)
        values = layer_geometry(A, B, scale, layer.U, layer.W, layer.S[: layer.k])
        sums = [a + b for a, b in zip(sums, values, strict=True)]
    return UpdateGeometry(len(covered), *sums)


def split_adapter(
    adapter: str | Path | LoraAdapter,
    direction: str | Path | Direction,
    inside: str | Path,
    outside: str | Path,
) -> tuple[Path, Path]:
    """Write the two parts of a saved LoRA update (see the module docstring): ``inside`` (its part in
    span(U_k) of every layer the direction covers) and ``outside`` (the rest, including whole any LoRA
    layer the direction does not cover). Their lora_B add up to the adapter's; lora_A is shared."""
    lora = adapter if isinstance(adapter, LoraAdapter) else LoraAdapter(adapter)
    dirn = direction if isinstance(direction, Direction) else Direction.load(direction)
    covered = [m for m in lora.modules if m in dirn.layers]
    if not covered:
        raise DirectionError(f"{lora.path}: none of its LoRA layers is in the direction")
    tensors = lora.all_tensors()
    parts: tuple[dict[str, Tensor], dict[str, Tensor]] = (dict(tensors), dict(tensors))
    for module in covered:
        key = lora.modules[module].b_key
        B = tensors[key]
        U = dirn.layers[module].U.to(torch.float64)
        if U.shape[0] != B.shape[0]:
            raise DirectionError(f"{module}: direction rows {U.shape[0]} != lora_B rows {B.shape[0]}")
        kept = U @ (U.T @ B.to(torch.float64))
        parts[0][key] = kept.to(B.dtype)
        parts[1][key] = (B.to(torch.float64) - kept).to(B.dtype)
    return lora.save_copy(inside, parts[0]), lora.save_copy(outside, parts[1])
