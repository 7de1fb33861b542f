"""AsFT / Safe LoRA linear algebra against brute-force d x d computations (float64, tiny tensors)."""

from __future__ import annotations

import pytest
import torch

from safeft.asft.penalty import lora_alignment_cosine, lora_residual, naive_residual
from safeft.asft.projectors import PaperProjector, SVDProjector
from safeft.asft.spectral import dense_spectrum, lowrank_spectrum

D_OUT, D_IN, R, K = 24, 16, 4, 5


def rand(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def brute_svd(V: torch.Tensor, k: int) -> torch.Tensor:
    U, _, _ = torch.linalg.svd(V)
    return U[:, :k] @ U[:, :k].T


def close(a, b, rtol=1e-5, atol=1e-9):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=rtol, atol=atol)


def test_dense_spectrum_matches_svd_and_energy():
    V = rand(D_OUT, D_IN, seed=0)
    spec = dense_spectrum(V)
    S = torch.linalg.svdvals(V)
    close(spec.S, S)
    close(spec.U[:, :K] @ spec.U[:, :K].T, brute_svd(V, K))
    close(spec.fro_sq, float((V**2).sum()))
    close(spec.energy(K), float((S[:K] ** 2).sum() / (V**2).sum()))
    close(spec.left_factor() @ spec.left_factor().T, V @ V.T)


def test_lowrank_spectrum_is_exact_for_a_lora_delta():
    B, A, s = rand(D_OUT, R, seed=1), rand(R, D_IN, seed=2), 2.5
    V = s * B @ A
    low, dense = lowrank_spectrum(B, A, s), dense_spectrum(V)
    assert low.rank == R == dense.rank  # numerical rank of a rank-R product
    close(low.S, dense.S)
    close(low.U @ low.U.T, dense.U @ dense.U.T)  # same subspace (signs may differ)
    close(low.left_factor() @ low.left_factor().T, V @ V.T)
    close(low.fro_sq, float((V**2).sum()))


def test_zero_delta_has_empty_spectrum():
    spec = dense_spectrum(torch.zeros(4, 3, dtype=torch.float64))
    assert spec.rank == 0 and spec.fro_sq == 0.0 and spec.U.shape == (4, 0)


def test_svd_projector_is_idempotent_and_symmetric():
    U = dense_spectrum(rand(D_OUT, D_IN, seed=3)).U[:, :K]
    C = SVDProjector(U).dense()
    close(C @ C, C)
    close(C, C.T)
    close(torch.linalg.matrix_rank(C), torch.tensor(K))


def test_paper_matrix_is_not_a_projector_and_scales_with_v():
    V = rand(D_OUT, D_IN, seed=4)
    spec = dense_spectrum(V)
    P = PaperProjector(spec.left_factor(), torch.tensor(spec.fro_sq**0.5, dtype=torch.float64))
    C = P.dense()
    close(C, V @ V.T / torch.linalg.norm(V))  # the official code's matrix
    assert not torch.allclose(C @ C, C)
    eig = torch.linalg.eigvalsh(C).flip(0)[: spec.rank]
    close(eig, spec.S**2 / spec.fro_sq**0.5)  # eigenvalues S_i^2 / ||V||_F, not 0/1
    s2 = dense_spectrum(2 * V)
    P2 = PaperProjector(s2.left_factor(), torch.tensor(s2.fro_sq**0.5, dtype=torch.float64))
    close(P2.dense(), 2 * C)  # C(2V) = 2 C(V): not scale-invariant


@pytest.mark.parametrize("variant", ["svd", "paper"])
def test_factorised_penalty_equals_brute_force(variant):
    V = rand(D_OUT, D_IN, seed=5)
    A, B, s = rand(R, D_IN, seed=6), rand(D_OUT, R, seed=7), 4.0
    spec = dense_spectrum(V)
    if variant == "svd":
        proj = SVDProjector(spec.U[:, :K])
        C = brute_svd(V, K)
    else:
        proj = PaperProjector(spec.left_factor(), torch.tensor(spec.fro_sq**0.5, dtype=torch.float64))
        C = V @ V.T / torch.linalg.norm(V)
    dW = s * B @ A
    expected = torch.linalg.norm((torch.eye(D_OUT, dtype=torch.float64) - C) @ dW) ** 2
    close(lora_residual(A, B, s, proj), expected)
    close(naive_residual(A, B, s, C), expected)
    if variant == "svd":  # the closed form of the issue: s^2 (tr((A A^T)(B^T B)) - ||(U_k^T B) A||_F^2)
        U = spec.U[:, :K]
        closed = s**2 * (torch.trace((A @ A.T) @ (B.T @ B)) - torch.linalg.norm((U.T @ B) @ A) ** 2)
        close(closed, expected)


def test_penalty_is_zero_inside_the_subspace_and_full_outside():
    U = dense_spectrum(rand(D_OUT, D_IN, seed=8)).U
    A = rand(R, D_IN, seed=9)
    inside = U[:, :K] @ rand(K, R, seed=10)
    outside = U[:, K:] @ rand(U.shape[1] - K, R, seed=11)
    proj = SVDProjector(U[:, :K])
    close(lora_residual(A, inside, 1.0, proj), torch.tensor(0.0, dtype=torch.float64), atol=1e-9)
    close(lora_residual(A, outside, 1.0, proj), torch.linalg.norm(outside @ A) ** 2)


@pytest.mark.parametrize("variant", ["svd", "paper"])
def test_penalty_gradients_match_brute_force(variant):
    V = rand(D_OUT, D_IN, seed=12)
    spec = dense_spectrum(V)
    if variant == "svd":
        proj = SVDProjector(spec.U[:, :K])
    else:
        proj = PaperProjector(spec.left_factor(), torch.tensor(spec.fro_sq**0.5, dtype=torch.float64))
    C = proj.dense()
    grads = []
    for fn in (lambda a, b: lora_residual(a, b, 2.0, proj), lambda a, b: naive_residual(a, b, 2.0, C)):
        A = rand(R, D_IN, seed=13).requires_grad_()
        B = rand(D_OUT, R, seed=14).requires_grad_()
        fn(A, B).backward()
        grads.append((A.grad, B.grad))
    close(grads[0][0], grads[1][0])
    close(grads[0][1], grads[1][1])


def test_batched_layers_match_one_by_one():
    Us = [dense_spectrum(rand(D_OUT, D_IN, seed=20 + i)).U[:, :K] for i in range(3)]
    As = [rand(R, D_IN, seed=30 + i) for i in range(3)]
    Bs = [rand(D_OUT, R, seed=40 + i) for i in range(3)]
    batched = lora_residual(torch.stack(As), torch.stack(Bs), 1.5, SVDProjector(torch.stack(Us)))
    single = torch.stack(
        [lora_residual(a, b, 1.5, SVDProjector(u)) for a, b, u in zip(As, Bs, Us, strict=True)]
    )
    close(batched, single)


@pytest.mark.parametrize("variant", ["svd", "paper"])
def test_alignment_cosine_and_apply_match_brute_force(variant):
    V = rand(D_OUT, D_IN, seed=50)
    spec = dense_spectrum(V)
    if variant == "svd":
        proj = SVDProjector(spec.U[:, :K])
    else:
        proj = PaperProjector(spec.left_factor(), torch.tensor(spec.fro_sq**0.5, dtype=torch.float64))
    C = proj.dense()
    A, B = rand(R, D_IN, seed=51), rand(D_OUT, R, seed=52)
    dW = B @ A
    cos = torch.nn.functional.cosine_similarity((C @ dW).reshape(1, -1), dW.reshape(1, -1))[0]
    close(lora_alignment_cosine(A, B, proj), cos)
    close(proj.apply(B), C @ B)
    assert torch.isnan(lora_alignment_cosine(A, torch.zeros_like(B), proj))
