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
    """``(total, left, block, along)`` of one layer; U (d_out x k), W (d_in x k), S (k,)."""
    A, B, U, W, S = (t.double() for t in (A, B, U, W, S))
    KA = A @ A.T
    G = U.T @ B  # (k, r)
    AW = A @ W  # (r, k)
    total = scale**2 * float(((B.T @ B) * KA).sum())
    left = scale**2 * float(((G.T @ G) * KA).sum())
    block = scale**2 * float((G @ AW).square().sum())
    # <s B A, U diag(S) W^T> = s tr(diag(S) (U^T B)(A W)) = s sum_i S_i (G AW)_ii
    inner = scale * float((S * (G @ AW).diagonal()).sum())
    along = inner**2 / float(S.square().sum()) if float(S.square().sum()) > 0 else 0.0
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
