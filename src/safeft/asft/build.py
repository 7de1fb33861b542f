"""Compute an alignment direction layer by layer (``safeft direction``).

Two same-architecture models: for each targeted layer, read W_aligned and W_unaligned (streamed from
safetensors when the model is a directory, see :mod:`safeft.asft.weights`), form V = W_a - W_u for
that one layer, take its SVD (:func:`~safeft.asft.spectral.dense_spectrum`), keep U_k / S / W_k (/ F),
and drop V before the next layer. Peak memory: at most one loaded model plus one layer.

A model plus a LoRA adapter (``--aligned ADAPTER --unaligned BASE``, or the other way round): V is
the adapter's delta ±s B A, whose SVD is computed exactly from the factors
(:func:`~safeft.asft.spectral.lowrank_spectrum`); the base model is read only for shapes and norms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from safeft.asft.adapter import LoraAdapter, is_adapter_dir
from safeft.asft.direction import Direction, DirectionError, LayerDirection
from safeft.asft.spectral import Spectrum, dense_spectrum, lowrank_spectrum
from safeft.asft.targets import TargetError, matches, select_modules
from safeft.asft.weights import WeightSource, can_stream, open_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectionRequest:
    aligned: str
    unaligned: str
    targets: Sequence[str]
    rank: int = 8
    paper: bool = False
    device: str = "cpu"
    trust_remote_code: bool = False


def _check_rank(rank: int, name: str, shape: tuple[int, int]) -> None:
    if rank < 1:
        raise DirectionError(f"--rank must be >= 1, got {rank}")
    if rank > min(shape):
        raise DirectionError(
            f"--rank {rank} is larger than layer {name} allows: its weight is {shape[0]} x {shape[1]}, "
            f"so V has at most {min(shape)} singular directions"
        )


def _check_same_layers(a: WeightSource, u: WeightSource, wanted: list[str]) -> None:
    if a.model_type and u.model_type and a.model_type != u.model_type:
        raise DirectionError(
            f"architectures differ: aligned {a.description} is {a.model_type!r}, "
            f"unaligned {u.description} is {u.model_type!r}"
        )
    u_modules = set(u.modules())
    missing = [m for m in wanted if m not in u_modules]
    if missing:
        raise DirectionError(
            f"layer {missing[0]} of the aligned model is missing from the unaligned model "
            f"{u.description} ({len(missing)} of {len(wanted)} targeted layers missing)"
        )
    for m in wanted:
        if a.shape(m) != u.shape(m):
            raise DirectionError(
                f"shape mismatch at {m}: aligned {a.shape(m)} vs unaligned {u.shape(m)} "
                "(different architectures or sizes)"
            )
    if a.dtype(wanted[0]) != u.dtype(wanted[0]):
        log.warning(
            "aligned weights are %s but unaligned weights are %s: V then includes the rounding error "
            "of the lower precision, which can swamp a small alignment delta",
            a.dtype(wanted[0]),
            u.dtype(wanted[0]),
        )


def _layer(
    name: str, spec: Spectrum, rank: int, paper: bool, w_aligned: Tensor, w_unaligned: Tensor, source: str
) -> LayerDirection:
    if spec.fro_sq == 0.0:
        raise DirectionError(
            f"V = 0 at layer {name}: the aligned and unaligned weights are identical there. Are these "
            "the same model? Restrict --targets to the modules alignment changed."
        )
    k = min(rank, spec.rank)
    if k < rank:
        log.warning(
            "%s: V has numerical rank %d < --rank %d; keeping %d directions", name, spec.rank, rank, k
        )
    return LayerDirection(
        name=name,
        shape=spec.shape,
        U=spec.U[:, :k].to("cpu", torch.float32).contiguous(),
        S=spec.S.to("cpu", torch.float32).contiguous(),
        W=spec.W[:, :k].to("cpu", torch.float32).contiguous() if spec.W is not None else None,
        F=spec.left_factor().to("cpu", torch.float32).contiguous() if paper else None,
        fro_norm=spec.fro_sq**0.5,
        aligned_norm=float(w_aligned.norm()),
        unaligned_norm=float(w_unaligned.norm()),
        source=source,
    )


def _fingerprint(name: str) -> str | None:
    from safeft.models import model_fingerprint

    try:
        return model_fingerprint(name)
    except (ValueError, OSError):
        return None


def _from_two_models(req: DirectionRequest) -> tuple[dict[str, LayerDirection], str | None]:
    keep = lambda module: any(matches(module, t) for t in req.targets)  # noqa: E731
    # Load the non-streamable model(s) first (keeping only targeted weights), then open the streamed one:
    # at no point are two full models resident.
    order = sorted([req.aligned, req.unaligned], key=can_stream)
    opened = {n: open_weights(n, keep, req.trust_remote_code) for n in dict.fromkeys(order)}
    a, u = opened[req.aligned], opened[req.unaligned]
    try:
        wanted = select_modules(a.modules(), req.targets, f"aligned model {a.description}")
        _check_same_layers(a, u, wanted)
        for m in wanted:
            _check_rank(req.rank, m, a.shape(m))
        layers = {}
        for i, m in enumerate(wanted):
            w_a, w_u = a.take(m), u.take(m)
            V = (w_a.to(req.device) - w_u.to(req.device)).to(torch.float32)
            layers[m] = _layer(m, dense_spectrum(V), req.rank, req.paper, w_a, w_u, "dense")
            del V, w_a, w_u
            if (i + 1) % 20 == 0 or i + 1 == len(wanted):
                log.info("direction: %d/%d layers", i + 1, len(wanted))
        return layers, a.model_type
    finally:
        for src in opened.values():
            src.close()


def _from_adapter(req: DirectionRequest) -> tuple[dict[str, LayerDirection], str | None]:
    aligned_is_adapter = is_adapter_dir(req.aligned)
    adapter = LoraAdapter(req.aligned if aligned_is_adapter else req.unaligned)
    base_name = req.unaligned if aligned_is_adapter else req.aligned
    sign = 1.0 if aligned_is_adapter else -1.0  # V = W_a - W_u = +sBA or -sBA
    wanted = select_modules(list(adapter.modules), req.targets, f"adapter {adapter.path}")
    keep = set(wanted).__contains__
    base = open_weights(base_name, keep, req.trust_remote_code)
    try:
        base_modules = set(base.modules())
        layers = {}
        for m in wanted:
            if m not in base_modules:
                raise DirectionError(
                    f"adapter layer {m} does not exist in the base model {base.description}: "
                    "the adapter belongs to another model"
                )
            A, B, s = adapter.factors(m)
            shape = (int(B.shape[0]), int(A.shape[1]))
            if shape != base.shape(m):
                raise DirectionError(
                    f"shape mismatch at {m}: adapter delta is {shape}, base weight is {base.shape(m)}"
                )
            _check_rank(req.rank, m, shape)
            A, B = A.to(req.device), B.to(req.device)
            spec = lowrank_spectrum(sign * B, A, s)
            w_base = base.take(m)
            w_other = w_base + sign * s * (B.cpu() @ A.cpu())  # one layer, only for its norm
            w_a, w_u = (w_other, w_base) if aligned_is_adapter else (w_base, w_other)
            layers[m] = _layer(m, spec, req.rank, req.paper, w_a, w_u, "lora")
        return layers, base.model_type
    finally:
        base.close()


def compute_direction(req: DirectionRequest) -> Direction:
    """Build the :class:`Direction` of ``req`` (see the module docstring)."""
    if str(req.aligned) == str(req.unaligned):
        raise DirectionError(f"--aligned and --unaligned are the same model ({req.aligned}): V would be 0")
    if is_adapter_dir(req.aligned) and is_adapter_dir(req.unaligned):
        raise DirectionError("both --aligned and --unaligned are adapters; one of them must be a model")
    if not req.targets:
        raise TargetError("no target modules given")
    if req.rank < 1:
        raise DirectionError(f"--rank must be >= 1, got {req.rank}")
    with torch.no_grad():
        if is_adapter_dir(req.aligned) or is_adapter_dir(req.unaligned):
            layers, model_type = _from_adapter(req)
        else:
            layers, model_type = _from_two_models(req)
    info = {
        "aligned": req.aligned,
        "unaligned": req.unaligned,
        "aligned_fingerprint": None if is_adapter_dir(req.aligned) else _fingerprint(req.aligned),
        "unaligned_fingerprint": None if is_adapter_dir(req.unaligned) else _fingerprint(req.unaligned),
        "model_type": model_type,
        "targets": list(req.targets),
        "rank": req.rank,
    }
    return Direction(layers=layers, info=info)
