"""Safe LoRA (Hsu et al., 2024): post-hoc projection of a fine-tuned LoRA adapter.

For every LoRA layer, with dW = s B A and the layer's alignment matrix C:

    cos_l = <C dW, dW>_F / (||C dW||_F ||dW||_F)
          = <B^T C B, A A^T>_F / sqrt(<B^T C^2 B, A A^T>_F <B^T B, A A^T>_F)

(factorised through r x r Grams, s cancels). Layers whose update points away from the alignment
subspace — cos_l < tau (``threshold``), or the n layers with the smallest cos_l (``top_layers``) — get
B <- C B, so dW <- C dW. Safe LoRA's own C is the ``paper`` matrix V V^T / ||V||_F; the ``svd``
projector U_k U_k^T is the exact orthogonal projection onto the top-k alignment directions.
Layers with dW = 0 have no defined cosine and are never projected.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from safeft.asft.adapter import LoraAdapter
from safeft.asft.direction import Direction, DirectionError
from safeft.asft.penalty import lora_alignment_cosine

log = logging.getLogger(__name__)

REPORT_FILE = "safelora_report.json"


@dataclass(frozen=True)
class LayerDecision:
    name: str
    cos: float
    projected: bool


def resolve_variant(direction: Direction, variant: str) -> str:
    """``auto``: Safe LoRA's own ``paper`` matrix when the direction stores it, else ``svd``."""
    if variant == "auto":
        return "paper" if direction.has_paper else "svd"
    if variant not in ("svd", "paper"):
        raise DirectionError(f"unknown projector {variant!r}; expected auto, svd or paper")
    return variant


def adapter_cosines(adapter: LoraAdapter, direction: Direction, variant: str) -> dict[str, float]:
    """cos(C dW, dW) of every adapter layer (NaN where dW = 0)."""
    missing = [m for m in adapter.modules if m not in direction.layers]
    if missing:
        raise DirectionError(
            f"the direction has no entry for adapter layer {missing[0]} ({len(missing)} of "
            f"{len(adapter.modules)} missing; it covers targets {direction.info.get('targets')})"
        )
    out = {}
    for name in adapter.modules:
        A, B, _ = adapter.factors(name)
        layer = direction.layers[name]
        if (int(B.shape[0]), int(A.shape[1])) != layer.shape:
            raise DirectionError(
                f"direction built for another model: adapter layer {name} is {B.shape[0]} x {A.shape[1]}, "
                f"the direction has {layer.shape}"
            )
        out[name] = float(lora_alignment_cosine(A, B, layer.projector(variant)))
    return out


def choose_layers(
    cosines: dict[str, float], threshold: float | None = None, top_layers: int | None = None
) -> set[str]:
    """Layers to project: cos < threshold, or the ``top_layers`` least similar (exactly one rule)."""
    if (threshold is None) == (top_layers is None):
        raise ValueError("give exactly one of --threshold and --top-layers")
    valid = {n: c for n, c in cosines.items() if not math.isnan(c)}
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"--threshold is a cosine, expected a value in [-1, 1], got {threshold}")
        return {n for n, c in valid.items() if c < threshold}
    assert top_layers is not None
    if top_layers < 0 or top_layers > len(cosines):
        raise ValueError(
            f"--top-layers must be in [0, {len(cosines)}] (the adapter's layers), got {top_layers}"
        )
    return set(sorted(valid, key=valid.__getitem__)[:top_layers])


def safelora_project(
    adapter_dir: str | Path,
    direction: Direction,
    out_dir: str | Path,
    threshold: float | None = None,
    top_layers: int | None = None,
    variant: str = "auto",
) -> list[LayerDecision]:
    """Write the Safe-LoRA-projected copy of ``adapter_dir`` to ``out_dir``; return per-layer decisions."""
    adapter = LoraAdapter(adapter_dir)
    variant = resolve_variant(direction, variant)
    cosines = adapter_cosines(adapter, direction, variant)
    chosen = choose_layers(cosines, threshold, top_layers)
    tensors = adapter.all_tensors()
    with torch.no_grad():
        for name in chosen:
            key = adapter.modules[name].b_key
            B = tensors[key]
            projected = direction.layers[name].projector(variant).apply(B.float())
            tensors[key] = projected.to(B.dtype)
    adapter.save_copy(out_dir, tensors)
    decisions = [LayerDecision(n, cosines[n], n in chosen) for n in adapter.modules]
    report = {
        "adapter": str(adapter_dir),
        "direction": direction.info.get("aligned"),
        "projector": variant,
        "threshold": threshold,
        "top_layers": top_layers,
        "n_layers": len(decisions),
        "n_projected": len(chosen),
        "layers": [{**asdict(d), "cos": None if math.isnan(d.cos) else d.cos} for d in decisions],
    }
    (Path(out_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("Safe LoRA (%s): projected %d of %d layers", variant, len(chosen), len(decisions))
    return decisions
