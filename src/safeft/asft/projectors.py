"""The alignment-subspace matrices C of AsFT / Safe LoRA, applied in factorised form.

For one targeted layer with alignment delta V (d_out x d_in) and a LoRA factor B (d_out x r), every
quantity AsFT and Safe LoRA need reduces to two r x r Gram matrices

    M1 = B^T C B        M2 = B^T C^2 B

plus K_B = B^T B, because C is symmetric (see :mod:`safeft.asft.penalty`). Each projector computes
them from a thin factor of C (d_out x k or d_out x m), never from C itself (d_out x d_out).
Every method accepts a batch of layers: tensors carry leading batch dimensions ``(..., d_out, r)``.

``svd`` — :class:`SVDProjector`
    C = U_k U_k^T with U_k the top-k left singular vectors of V. A true orthogonal projector
    (C^T = C, C^2 = C), so M2 = M1 = G^T G with G = U_k^T B (k x r).

``paper`` — :class:`PaperProjector`
    C = V V^T / ||V||_F, the matrix of the official Safe LoRA and AsFT code. Stored through the left
    factor F = U diag(S) of V's thin SVD (F F^T = V V^T, ||F||_F = ||V||_F), so C = F F^T / n with
    n = ||V||_F. Why it is *not* a projector: C has eigenvalues c_i = S_i^2 / ||V||_F on span(U) (0
    elsewhere), and C^2 = C needs every c_i in {0, 1}, i.e. all m non-zero singular values equal to
    sqrt(m) exactly. Worse, C is not scale-invariant: C(tV) = t C(V), so the same subspace yields a
    different "projection" when alignment moved the weights further: c_i <= S_1 <= ||V||_F, so
    for a small alignment delta (||V||_F << 1) C ~ 0 and the penalty degenerates to the weight decay
    ||dW||_F^2, while for ||V||_F > 1 the top direction can get c_1 > 1 (amplified). Either way
    (I - C) dW also penalises updates that lie inside span(V). With X = F^T B (m x r), Y = F X:
    M1 = X^T X / n and M2 = Y^T Y / n^2.

``none`` — C = 0 (an :class:`SVDProjector` with one zero column): the AsFT penalty becomes
||dW||_F^2, an L2 penalty on the update that ignores V. A control, not a method: it shows how much of
an AsFT run's effect comes from the direction rather than from keeping the update small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

VARIANTS = ("svd", "paper", "none")


class Projector(ABC):
    """Symmetric matrix C (d_out x d_out), possibly batched over layers, kept in factored form."""

    #: True when C is an orthogonal projector (C^2 = C)
    is_projector: bool = False

    @abstractmethod
    def grams(self, B: Tensor) -> tuple[Tensor, Tensor]:
        """``(B^T C B, B^T C^2 B)``, each (..., r, r)."""

    @abstractmethod
    def apply(self, B: Tensor) -> Tensor:
        """``C @ B`` (..., d_out, r), computed through the thin factor."""

    @abstractmethod
    def dense(self) -> Tensor:
        """C itself (..., d_out, d_out). For tests and the naive benchmark only."""

    @abstractmethod
    def to(self, device: torch.device | str, dtype: torch.dtype) -> Projector: ...

    def residual_gram(self, B: Tensor) -> Tensor:
        """``B^T (I - C)^2 B = B^T B - 2 B^T C B + B^T C^2 B`` (..., r, r)."""
        m1, m2 = self.grams(B)
        return B.mT @ B - 2.0 * m1 + m2


class SVDProjector(Projector):
    """C = U U^T, U (..., d_out, k) with orthonormal columns: an exact orthogonal projector."""

    is_projector = True

    def __init__(self, U: Tensor):
        self.U = U

    def grams(self, B: Tensor) -> tuple[Tensor, Tensor]:
        G = self.U.mT @ B  # (..., k, r)
        m = G.mT @ G
        return m, m

    def residual_gram(self, B: Tensor) -> Tensor:
        """``B^T B - (U^T B)^T (U^T B)``: (I - C)^2 = I - C for a projector."""
        G = self.U.mT @ B
        return B.mT @ B - G.mT @ G

    def apply(self, B: Tensor) -> Tensor:
        return self.U @ (self.U.mT @ B)

    def dense(self) -> Tensor:
        return self.U @ self.U.mT

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SVDProjector:
        return SVDProjector(self.U.to(device=device, dtype=dtype))


class PaperProjector(Projector):
    """C = F F^T / n with F (..., d_out, m) a left factor of V (F F^T = V V^T) and n = ||V||_F (...,).

    Zero-padded columns of F are allowed (they change neither F F^T nor n), which lets layers of
    different rank share one batch.
    """

    def __init__(self, F: Tensor, norm: Tensor):
        self.F = F
        self.norm = norm

    def _n(self) -> Tensor:
        return self.norm.unsqueeze(-1).unsqueeze(-1)

    def grams(self, B: Tensor) -> tuple[Tensor, Tensor]:
        n = self._n()
        X = self.F.mT @ B  # (..., m, r)
        Y = self.F @ X  # (..., d_out, r) = V V^T B
        return (X.mT @ X) / n, (Y.mT @ Y) / (n * n)

    def apply(self, B: Tensor) -> Tensor:
        return (self.F @ (self.F.mT @ B)) / self._n()

    def dense(self) -> Tensor:
        return (self.F @ self.F.mT) / self._n()

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PaperProjector:
        return PaperProjector(self.F.to(device=device, dtype=dtype), self.norm.to(device=device, dtype=dtype))
