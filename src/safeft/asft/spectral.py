"""Singular spectra of alignment deltas ``V = W_aligned - W_unaligned`` (one linear layer).

Two exact routes, both returning the thin singular bases and singular values of V:

* dense V (d_out x d_in): ``torch.linalg.svd(V, full_matrices=False)``;
* low-rank V = s * B_a A_a from a LoRA adapter (B_a: d_out x r, A_a: r x d_in): with the reduced QR
  factorisations B_a = Q_b R_b and A_a^T = Q_a R_a,

      V = Q_b (s R_b R_a^T) Q_a^T,

  so the SVD of the r x r core ``s R_b R_a^T = U_c diag(S) W_c^T`` gives V's SVD exactly:
  U = Q_b U_c (d_out x r), W = Q_a W_c (d_in x r), same singular values. Nothing of size
  d_out x d_in is formed.

Directions with singular values below the numerical-rank tolerance ``S_1 * max(d_out, d_in) * eps``
are dropped: their left vectors are arbitrary and would widen the "safe" subspace at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Spectrum:
    """Thin SVD of V restricted to its numerical rank m: ``V = U diag(S) W^T``.

    ``U``: d_out x m, orthonormal columns; ``S``: m singular values, descending; ``fro_sq`` = ||V||_F^2
    (= sum S^2, kept separately because it is the denominator of every energy ratio); ``W``: d_in x m,
    the right singular vectors (needed for inner products <dW, V>_F, e.g. the anti-direction penalty).
    """

    U: Tensor
    S: Tensor
    fro_sq: float
    shape: tuple[int, int]
    W: Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    def energy(self, k: int) -> float:
        """Fraction of ||V||_F^2 captured by the top-k directions: sum_{i<=k} S_i^2 / ||V||_F^2."""
        if self.fro_sq == 0.0:
            return 0.0
        return float((self.S[:k].double() ** 2).sum() / self.fro_sq)

    def left_factor(self) -> Tensor:
        """F = U diag(S) (d_out x m), so that F F^T = V V^T and ||F||_F = ||V||_F.

        This is all the Safe-LoRA/AsFT-paper matrix C = V V^T / ||V||_F needs; it is never larger than
        V itself (m <= min(d_out, d_in)).
        """
        return self.U * self.S.unsqueeze(0)


def _truncate(U: Tensor, S: Tensor, W: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    if S.numel() == 0 or float(S[0]) == 0.0:
        return U[:, :0], S[:0], W[:, :0]
    tol = float(S[0]) * max(shape) * torch.finfo(S.dtype).eps
    m = int((tol < S).sum())
    return U[:, :m], S[:m], W[:, :m]


def dense_spectrum(V: Tensor) -> Spectrum:
    """Spectrum of a dense delta V (d_out x d_in)."""
    if V.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(V.shape)}")
    shape = (int(V.shape[0]), int(V.shape[1]))
    U, S, Vh = torch.linalg.svd(V, full_matrices=False)
    fro_sq = float((S.double() ** 2).sum())
    U, S, W = _truncate(U, S, Vh.mT, shape)
    return Spectrum(U=U, S=S, fro_sq=fro_sq, shape=shape, W=W)


def lowrank_spectrum(B: Tensor, A: Tensor, scale: float) -> Spectrum:
    """Exact spectrum of V = scale * B @ A without forming V (B: d_out x r, A: r x d_in)."""
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"incompatible LoRA factors B {tuple(B.shape)} and A {tuple(A.shape)}")
    shape = (int(B.shape[0]), int(A.shape[1]))
    Qb, Rb = torch.linalg.qr(B, mode="reduced")
    Qa, Ra = torch.linalg.qr(A.mT, mode="reduced")  # A^T = Q_a R_a
    core = scale * (Rb @ Ra.mT)
    Uc, S, Wch = torch.linalg.svd(core, full_matrices=False)
    fro_sq = float((S.double() ** 2).sum())
    U, S, W = _truncate(Qb @ Uc, S, Qa @ Wch.mT, shape)
    return Spectrum(U=U, S=S, fro_sq=fro_sq, shape=shape, W=W)
