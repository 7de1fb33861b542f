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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

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
