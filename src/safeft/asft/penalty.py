"""The AsFT regulariser ``sum_layers ||(I - C) dW||_F^2`` in factorised form.

For a LoRA layer dW = s B A (B: d_out x r, A: r x d_in, s = alpha/r) and a symmetric C (d_out x d_out):

    ||(I - C) dW||_F^2 = s^2 tr(A^T B^T (I - C)^2 B A) = s^2 tr( (B^T (I - C)^2 B) (A A^T) )
                       = s^2 <B^T B - 2 B^T C B + B^T C^2 B,  A A^T>_F

(the last step uses tr(P Q) = <P, Q>_F for symmetric Q = A A^T). For the ``svd`` projector
C = U_k U_k^T (C^2 = C) this is

    s^2 ( tr((A A^T)(B^T B)) - ||(U_k^T B) A||_F^2 ) = s^2 <B^T B - G^T G, A A^T>_F,  G = U_k^T B,

i.e. ||dW||_F^2 - ||U_k^T dW||_F^2. Only r x r and k x r products are formed (cost O((d_out k +
d_out + d_in) r^2)), never dW (d_out x d_in) nor C (d_out x d_out). For ``paper`` (C = V V^T/||V||_F,
not a projector, see :mod:`safeft.asft.projectors`) the same formula holds with
B^T C B = X^T X / n and B^T C^2 B = Y^T Y / n^2, X = F^T B, Y = F X.

**Anti-direction term** (safeft's addition, ``anti_direction_lambda``). Both projectors leave (svd)
or barely charge (paper) updates *inside* span(U_k), and that span contains the way back to the
unaligned weights, -V. With V_k = U_k diag(S_k) W_k^T the rank-k part of V and
a_l = <dW_l, V_k,l>_F / ||V_k,l||_F the signed length of dW_l along the unit alignment direction,

    anti = sum_layers relu(-a_l)^2

charges only the part of an update that *undoes* alignment (a_l < 0), quadratically like the AsFT
term (same units, ||dW||^2), and leaves moving further along +V free. Factorised with
P = U_k diag(S_k) / ||V_k||_F (d_out x k) and W_k (d_in x k):

    <s B A, P W_k^T>_F = s tr(A^T B^T P W_k^T) = s <A W_k, B^T P>_F      (two r x k products)

It needs W_k, which ``direction.safetensors`` stores (``<module>.W``). It is a 1-D constraint per
layer (the other in-subspace moves stay free); V_k instead of V keeps it consistent with the svd
subspace and exact when V has rank <= k (e.g. a direction built from a LoRA adapter).

**Two-sided variant** (safeft's addition, ``two_sided``; svd only). The svd penalty leaves every update
dW = U_k X free, whatever its input side X: an AsFT update can sit almost wholly in span(U_k) and still
use input directions the alignment never touched (:mod:`safeft.asft.geometry` measures this). The
two-sided penalty also asks for V's row space: with the projector X -> U_k U_k^T X W_k W_k^T (orthogonal
in the Frobenius inner product),

    ||dW - U_k U_k^T dW W_k W_k^T||_F^2 = ||dW||_F^2 - ||U_k^T dW W_k||_F^2
                                       = s^2 ( <B^T B, A A^T>_F - ||(U_k^T B)(A W_k)||_F^2 )

(a k x r times r x k product), leaving only the k x k block U_k M W_k^T free.

The AsFT objective is ``task_loss + lambda * penalty (+ anti_direction_lambda * anti)`` with each
term summed over all LoRA layers.
:class:`AsFTPenalty` binds a :class:`~safeft.asft.direction.Direction` to a PEFT model once, groups
layers of equal shape and evaluates each group with a handful of batched matmuls, in float32 with
autocast off. Gradients flow into the LoRA factors only: the projector factors are constant buffers.
Under FSDP2 the factors are DTensor shards outside the forward; :func:`whole` all-gathers them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from safeft.asft.direction import Direction, DirectionError
from safeft.asft.projectors import VARIANTS, PaperProjector, Projector, SVDProjector
from safeft.asft.targets import strip_peft_prefix

log = logging.getLogger(__name__)


def whole(weight: Tensor) -> Tensor:
    """A LoRA factor whole. Outside the forward, FSDP2 (``fully_shard``) holds each parameter as a
    DTensor shard; ``full_tensor()`` all-gathers it (a collective: every rank evaluates the penalty) and
    is differentiable, the gradient coming back as this rank's shard. Plain tensors pass as they are."""
    return weight.full_tensor() if hasattr(weight, "full_tensor") else weight


def lora_residual(A: Tensor, B: Tensor, scale: float | Tensor, projector: Projector) -> Tensor:
    """``||(I - C)(s B A)||_F^2`` per layer, factorised. Shapes: A (..., r, d_in), B (..., d_out, r)."""
    KA = A @ A.mT  # (..., r, r)
    R = projector.residual_gram(B)  # B^T (I - C)^2 B, (..., r, r)
    scale = torch.as_tensor(scale, dtype=A.dtype, device=A.device)
    return scale * scale * (R * KA).sum(dim=(-2, -1))


def lora_alignment_cosine(A: Tensor, B: Tensor, projector: Projector) -> Tensor:
    """Safe LoRA's cos(C dW, dW) = <C dW, dW>_F / (||C dW||_F ||dW||_F), factorised; s cancels.

    <C dW, dW> = <B^T C B, A A^T>, ||C dW||^2 = <B^T C^2 B, A A^T>, ||dW||^2 = <B^T B, A A^T>.
    Returns NaN where dW = 0 (no update: nothing to compare).
    """
    KA = A @ A.mT
    m1, m2 = projector.grams(B)
    inner = (m1 * KA).sum(dim=(-2, -1))
    c_sq = (m2 * KA).sum(dim=(-2, -1)).clamp_min(0)
    d_sq = ((B.mT @ B) * KA).sum(dim=(-2, -1)).clamp_min(0)
    return inner / (c_sq.sqrt() * d_sq.sqrt())


def lora_alignment_projection(A: Tensor, B: Tensor, scale: float | Tensor, P: Tensor, W: Tensor) -> Tensor:
    """``a = <s B A, P W^T>_F`` per layer, factorised as ``s <A W, B^T P>_F``. Shapes: A (..., r, d_in),
    B (..., d_out, r), P (..., d_out, k), W (..., d_in, k). With ``P W^T = V_k / ||V_k||_F`` this is the
    signed length of dW along the unit alignment direction."""
    scale = torch.as_tensor(scale, dtype=A.dtype, device=A.device)
    return scale * ((A @ W) * (B.mT @ P)).sum(dim=(-2, -1))


def naive_anti_direction(A: Tensor, B: Tensor, scale: float, V: Tensor) -> Tensor:
    """Reference: ``relu(-<s B A, V>_F / ||V||_F)^2`` with dW and V dense. Tests only."""
    a = (scale * (B @ A) * V).sum(dim=(-2, -1)) / V.norm(dim=(-2, -1))
    return torch.relu(-a) ** 2


def lora_two_sided_residual(A: Tensor, B: Tensor, scale: float | Tensor, U: Tensor, W: Tensor) -> Tensor:
    """``||s B A - U U^T (s B A) W W^T||_F^2`` per layer, factorised (U, W with orthonormal columns,
    zero-padded columns allowed). Shapes: A (..., r, d_in), B (..., d_out, r), U (..., d_out, k),
    W (..., d_in, k)."""
    scale = torch.as_tensor(scale, dtype=A.dtype, device=A.device)
    total = ((B.mT @ B) * (A @ A.mT)).sum(dim=(-2, -1))
    block = ((U.mT @ B) @ (A @ W)).square().sum(dim=(-2, -1))
    return scale * scale * (total - block)


def naive_residual(A: Tensor, B: Tensor, scale: float, C: Tensor) -> Tensor:
    """Reference: materialise dW (d_out x d_in) and C (d_out x d_out). Tests and benchmarks only."""
    dW = scale * (B @ A)
    return ((dW - C @ dW) ** 2).sum(dim=(-2, -1))


def find_lora_layers(model: nn.Module, adapter_name: str = "default") -> dict[str, nn.Module]:
    """PEFT LoRA layers of ``model`` keyed by module name without the ``base_model.model.`` prefix."""
    found = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter_name in lora_a:
            found[strip_peft_prefix(name)] = module
    return found


@dataclass
class _Group:
    """LoRA layers sharing (d_out, d_in, r): one batched evaluation."""

    names: list[str]
    modules: list[nn.Module]
    scale_sq: Tensor  # (L,)
    projector: Projector
    anti: tuple[Tensor, Tensor] | None = None  # (P, W): (L, d_out, k), (L, d_in, k), zero-padded
    right: Tensor | None = None  # W_k (L, d_in, k), zero-padded: the two-sided penalty
    cache: dict[tuple, tuple[Projector, Tensor]] = field(default_factory=dict)
    anti_cache: dict[tuple, tuple[Tensor, Tensor]] = field(default_factory=dict)
    right_cache: dict[tuple, Tensor] = field(default_factory=dict)

    def anti_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (device.type, device.index)
        if key not in self.anti_cache:
            assert self.anti is not None
            self.anti_cache[key] = tuple(t.to(device=device, dtype=torch.float32) for t in self.anti)  # type: ignore[assignment]
        return self.anti_cache[key]

    def on(self, device: torch.device) -> tuple[Projector, Tensor]:
        key = (device.type, device.index)
        if key not in self.cache:
            self.cache[key] = (
                self.projector.to(device, torch.float32),
                self.scale_sq.to(device=device, dtype=torch.float32),
            )
        return self.cache[key]

    def right_on(self, device: torch.device) -> Tensor:
        key = (device.type, device.index)
        if key not in self.right_cache:
            assert self.right is not None
            self.right_cache[key] = self.right.to(device=device, dtype=torch.float32)
        return self.right_cache[key]


def _stack_padded(mats: list[Tensor]) -> Tensor:
    """Stack (d, k_l) matrices into (L, d, max k), zero-padding the columns."""
    width = max(m.shape[1] for m in mats)
    return torch.stack([nn.functional.pad(m.float(), (0, width - m.shape[1])) for m in mats])


def _right_vectors(direction: Direction, name: str, rank: int | None) -> Tensor:
    W = direction.layers[name].W
    assert W is not None  # checked in AsFTPenalty
    return W[:, : (W.shape[1] if rank is None else rank)]


def _stack_projector(variant: str, projectors: list[Projector]) -> Projector:
    """Batch per-layer projectors, zero-padding factor widths (zero columns leave C unchanged)."""
    left = variant in ("svd", "none")  # "none" is an SVDProjector with a zero column
    mats: list[Tensor] = [getattr(p, "U" if left else "F") for p in projectors]
    width = max(m.shape[1] for m in mats)
    padded = torch.stack([nn.functional.pad(m.float(), (0, width - m.shape[1])) for m in mats])
    if left:
        return SVDProjector(padded)
    norms = torch.stack([p.norm.float() for p in projectors])  # type: ignore[attr-defined]
    return PaperProjector(padded, norms)


class AsFTPenalty:
    """``sum over LoRA layers of ||(I - C_l) dW_l||_F^2`` for a PEFT model and a direction.

    Binding checks that every LoRA layer has a direction of the right shape and, with
    ``check_weights``, that the model's base weights are the aligned weights the direction was built
    on (||W||_F within 1e-3). Layers the direction covers but the LoRA does not are ignored.
    ``use_lora_scale=False`` penalises B A instead of s B A (the official code's convention).
    ``anti_direction=True`` also binds V_k's factors for :meth:`anti_direction` (needs a direction
    with right singular vectors ``W``). ``two_sided=True`` (svd only, needs ``W``) penalises
    ``dW - U_k U_k^T dW W_k W_k^T`` instead of ``(I - U_k U_k^T) dW``.
    """

    def __init__(
        self,
        model: nn.Module,
        direction: Direction,
        variant: str = "svd",
        rank: int | None = None,
        adapter_name: str = "default",
        check_weights: bool = True,
        use_lora_scale: bool = True,
        anti_direction: bool = False,
        two_sided: bool = False,
    ):
        if variant not in VARIANTS:
            raise DirectionError(f"unknown projector {variant!r}; expected one of {VARIANTS}")
        if two_sided and variant != "svd":
            raise DirectionError(f"the two-sided penalty needs the svd projector, not {variant!r}")
        if two_sided and not direction.has_right_vectors:
            raise DirectionError(
                "the two-sided penalty needs the direction's right singular vectors (built by an older "
                "safeft); recompute it with `safeft direction`"
            )
        self.variant = variant
        self.adapter_name = adapter_name
        lora = find_lora_layers(model, adapter_name)
        if not lora:
            raise DirectionError("the model has no LoRA layers: AsFT needs a PEFT LoRA model")
        missing = [n for n in lora if n not in direction.layers]
        if missing:
            raise DirectionError(
                f"the direction has no entry for LoRA layer {missing[0]} ({len(missing)} of {len(lora)} "
                f"LoRA layers missing; it covers targets {direction.info.get('targets')}). Recompute it "
                "with --targets matching the LoRA target modules."
            )
        if rank is not None and rank < 1:
            raise DirectionError(f"rank must be >= 1, got {rank}")
        unused = len(direction.layers) - len(lora)
        if unused:
            log.info("direction covers %d layers the LoRA does not adapt; ignoring them", unused)
        groups: dict[tuple[int, int, int], list[tuple[str, nn.Module, Projector, float, tuple | None]]] = {}
        for name, module in lora.items():
            A = module.lora_A[adapter_name].weight
            B = module.lora_B[adapter_name].weight
            base = module.get_base_layer().weight
            if check_weights and base.is_floating_point():
                direction.check_weight(name, base)
            layer = direction.layers[name]
            if (int(B.shape[0]), int(A.shape[1])) != layer.shape:
                raise DirectionError(
                    f"direction built for another model: LoRA layer {name} is {B.shape[0]} x {A.shape[1]}, "
                    f"the direction has {layer.shape}"
                )
            scale = float(module.scaling[adapter_name]) if use_lora_scale else 1.0
            anti = layer.unit_lowrank(rank) if anti_direction else None
            groups.setdefault((layer.shape[0], layer.shape[1], int(A.shape[0])), []).append(
                (name, module, layer.projector(variant, rank), scale, anti)
            )
        self.groups = [
            _Group(
                names=[g[0] for g in items],
                modules=[g[1] for g in items],
                scale_sq=torch.tensor([g[3] ** 2 for g in items], dtype=torch.float32),
                projector=_stack_projector(variant, [g[2] for g in items]),
                anti=(
                    (_stack_padded([g[4][0] for g in items]), _stack_padded([g[4][1] for g in items]))
                    if anti_direction
                    else None
                ),
                right=(
                    _stack_padded([_right_vectors(direction, g[0], rank) for g in items])
                    if two_sided
                    else None
                ),
            )
            for items in groups.values()
        ]
        self.n_layers = len(lora)
        self.has_anti = anti_direction
        self.two_sided = two_sided

    def _factors(self, group: _Group) -> tuple[Tensor, Tensor]:
        ad = self.adapter_name
        A = torch.stack([whole(m.lora_A[ad].weight) for m in group.modules]).float()
        B = torch.stack([whole(m.lora_B[ad].weight) for m in group.modules]).float()
        return A, B

    def per_layer(self) -> dict[str, Tensor]:
        """Each layer's ``||(I - C) dW||_F^2`` (differentiable)."""
        out: dict[str, Tensor] = {}
        for group, values in zip(self.groups, self._group_values(), strict=True):
            out.update(zip(group.names, values.unbind(0), strict=True))
        return out

    def _group_values(self) -> list[Tensor]:
        values = []
        for group in self.groups:
            A, B = self._factors(group)
            with torch.autocast(device_type=A.device.type, enabled=False):
                projector, scale_sq = group.on(A.device)
                if group.right is not None:
                    U = projector.U  # type: ignore[attr-defined]
                    values.append(lora_two_sided_residual(A, B, scale_sq.sqrt(), U, group.right_on(A.device)))
                    continue
                KA = A @ A.mT
                values.append(scale_sq * (projector.residual_gram(B) * KA).sum(dim=(-2, -1)))
        return values

    def __call__(self) -> Tensor:
        """The summed penalty (a float32 scalar with gradients into the LoRA A/B factors)."""
        return torch.stack([v.sum() for v in self._group_values()]).sum()

    def alignment_projections(self) -> dict[str, Tensor]:
        """Each layer's ``a_l = <dW_l, V_k,l>_F / ||V_k,l||_F`` (differentiable; needs ``anti_direction``)."""
        if not self.has_anti:
            raise DirectionError("bind the penalty with anti_direction=True to use the anti-direction term")
        out: dict[str, Tensor] = {}
        for group in self.groups:
            A, B = self._factors(group)
            with torch.autocast(device_type=A.device.type, enabled=False):
                P, W = group.anti_on(A.device)
                _, scale_sq = group.on(A.device)
                a = lora_alignment_projection(A, B, scale_sq.sqrt(), P, W)
            out.update(zip(group.names, a.unbind(0), strict=True))
        return out

    def anti_direction(self) -> Tensor:
        """``sum_layers relu(-a_l)^2`` (float32 scalar, gradients into the LoRA factors only)."""
        return torch.stack([torch.relu(-a) ** 2 for a in self.alignment_projections().values()]).sum()
