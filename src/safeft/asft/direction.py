"""Alignment directions: what the AsFT penalty and Safe LoRA need from ``V = W_aligned - W_unaligned``.

For every targeted linear layer (weight d_out x d_in) a direction stores, never V itself:

* ``U``: the top-k left singular vectors U_k of V (d_out x k) — the ``svd`` projector C = U_k U_k^T;
* ``S``: all non-zero singular values of V (descending) — the spectrum, for the summary;
* ``W`` (directions built since the anti-direction penalty): the top-k right singular vectors W_k
  (d_in x k), so that V_k = U_k diag(S_k) W_k^T, the rank-k part of V, is available for inner
  products <dW, V_k>_F (older files lack it; only ``anti_direction_lambda`` needs it);
* ``F`` (optional, ``paper``): the left factor U diag(S) of V's thin SVD (d_out x rank(V)), so that
  the paper's C = V V^T / ||V||_F = F F^T / ||F||_F;
* scalars: ||V||_F, ||W_aligned||_F and ||W_unaligned||_F (to recognise the model it belongs to).

On disk a direction is a folder with ``direction.safetensors`` (tensors ``<module>.U``,
``<module>.S``, ``<module>.F``, ``<module>.W``; the JSON summary in the header metadata) and
``direction.json`` (the same summary, human readable: per layer ||V||_F, energy captured by k =
sum_{i<=k} S_i^2 / ||V||_F^2, S_1^2 / ||V||_F^2, shapes, and the model names/fingerprints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from safeft.asft.projectors import PaperProjector, Projector, SVDProjector

FORMAT = "safeft-asft-direction/1"
TENSOR_FILE = "direction.safetensors"
SUMMARY_FILE = "direction.json"


class DirectionError(ValueError):
    """A direction file is unreadable, incomplete, or does not belong to the model at hand."""


@dataclass
class LayerDirection:
    """The stored part of V for one linear layer (see the module docstring)."""

    name: str
    shape: tuple[int, int]
    U: Tensor
    S: Tensor
    fro_norm: float
    aligned_norm: float
    unaligned_norm: float
    source: str = "dense"  # dense: two models; lora: a model plus a LoRA adapter (exact low rank)
    F: Tensor | None = None
    W: Tensor | None = None  # top-k right singular vectors (d_in x k)

    @property
    def k(self) -> int:
        return int(self.U.shape[1])

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    def energy(self, k: int | None = None) -> float:
        """sum_{i<=k} S_i^2 / ||V||_F^2 (k defaults to the stored k)."""
        k = self.k if k is None else k
        if self.fro_norm == 0.0:
            return 0.0
        return float((self.S[:k].double() ** 2).sum()) / self.fro_norm**2

    def summary(self) -> dict[str, Any]:
        s1 = float(self.S[0]) if self.rank else 0.0
        return {
            "shape": list(self.shape),
            "k": self.k,
            "rank": self.rank,
            "fro_norm": self.fro_norm,
            "energy_k": self.energy(),
            "sigma1_sq_ratio": (s1 * s1 / self.fro_norm**2) if self.fro_norm else 0.0,
            "aligned_norm": self.aligned_norm,
            "unaligned_norm": self.unaligned_norm,
            "source": self.source,
            "paper": self.F is not None,
        }

    def projector(self, variant: str, k: int | None = None) -> Projector:
        """C of this layer: ``svd`` (U_k U_k^T, k <= stored k), ``paper`` (V V^T / ||V||_F) or ``none``
        (C = 0, the L2 control)."""
        if variant == "svd":
            if k is not None and k > self.k:
                raise DirectionError(
                    f"rank {k} exceeds the {self.k} directions stored for {self.name}; recompute the "
                    f"direction with a larger --rank"
                )
            return SVDProjector(self.U[:, : (self.k if k is None else k)])
        if variant == "none":  # C = 0: the L2 control (see safeft.asft.projectors)
            return SVDProjector(torch.zeros(self.shape[0], 1, dtype=self.U.dtype))
        if variant == "paper":
            if self.F is None:
                raise DirectionError(
                    f"the direction has no 'paper' factors for {self.name}; recompute it with "
                    "`safeft direction ... --paper` or use the svd projector"
                )
            return PaperProjector(self.F, torch.tensor(self.fro_norm, dtype=self.F.dtype))
        raise DirectionError(f"unknown projector {variant!r}; expected 'svd', 'paper' or 'none'")

    def unit_lowrank(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """``(P, W_k)`` with ``P = U_k diag(S_k) / ||V_k||_F`` (d_out x k) and W_k (d_in x k), so that
        ``P W_k^T = V_k / ||V_k||_F``, the unit vector along the rank-k part of V."""
        if self.W is None:
            raise DirectionError(
                f"the direction has no right singular vectors for {self.name} (built by an older "
                "safeft); recompute it with `safeft direction` to use anti_direction_lambda"
            )
        k = self.k if k is None else k
        if k > self.k:
            raise DirectionError(
                f"rank {k} exceeds the {self.k} directions stored for {self.name}; recompute the "
                f"direction with a larger --rank"
            )
        S = self.S[:k]
        P = self.U[:, :k] * (S / S.double().square().sum().sqrt().to(S.dtype)).unsqueeze(0)
        return P, self.W[:, :k]


@dataclass
class Direction:
    """All layers of one alignment direction plus where it came from (``info``)."""

    layers: dict[str, LayerDirection]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_right_vectors(self) -> bool:
        return bool(self.layers) and all(layer.W is not None for layer in self.layers.values())

    @property
    def has_paper(self) -> bool:
        return bool(self.layers) and all(layer.F is not None for layer in self.layers.values())

    def summary(self) -> dict[str, Any]:
        energies = [layer.energy() for layer in self.layers.values()]
        return {
            **self.info,
            "format": FORMAT,
            "n_layers": len(self.layers),
            "paper": self.has_paper,
            "energy_k_mean": sum(energies) / len(energies) if energies else 0.0,
            "energy_k_min": min(energies) if energies else 0.0,
            "layers": {name: layer.summary() for name, layer in self.layers.items()},
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``direction.safetensors`` + ``direction.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            tensors[f"{name}.U"] = layer.U.to(torch.float32).contiguous()
            tensors[f"{name}.S"] = layer.S.to(torch.float32).contiguous()
            if layer.F is not None:
                tensors[f"{name}.F"] = layer.F.to(torch.float32).contiguous()
            if layer.W is not None:
                tensors[f"{name}.W"] = layer.W.to(torch.float32).contiguous()
        summary = self.summary()
        save_file(tensors, out / TENSOR_FILE, metadata={"format": FORMAT, "summary": json.dumps(summary)})
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction folder (or its ``direction.safetensors``)."""
        p = Path(path)
        file = p / TENSOR_FILE if p.is_dir() else p
        if not file.is_file():
            raise DirectionError(
                f"no direction at {p} (expected {TENSOR_FILE}; make one with `safeft direction`)"
            )
        try:
            handle = safe_open(file, framework="pt")
        except Exception as exc:  # SafetensorError: not a safetensors file
            raise DirectionError(f"{file}: not a readable safetensors file ({exc})") from None
        with handle as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise DirectionError(f"{file} is not a safeft direction (format {meta.get('format')!r})")
            summary = json.loads(meta["summary"])
            keys = set(f.keys())
            layers = {}
            for name, s in summary["layers"].items():
                missing = [f"{name}.{t}" for t in ("U", "S") if f"{name}.{t}" not in keys]
                if missing:
                    raise DirectionError(f"{file} is incomplete: tensor {missing[0]} is missing")
                layers[name] = LayerDirection(
                    name=name,
                    shape=(int(s["shape"][0]), int(s["shape"][1])),
                    U=f.get_tensor(f"{name}.U"),
                    S=f.get_tensor(f"{name}.S"),
                    F=f.get_tensor(f"{name}.F") if f"{name}.F" in keys else None,
                    W=f.get_tensor(f"{name}.W") if f"{name}.W" in keys else None,
                    fro_norm=float(s["fro_norm"]),
                    aligned_norm=float(s["aligned_norm"]),
                    unaligned_norm=float(s["unaligned_norm"]),
                    source=s.get("source", "dense"),
                )
        info = {k: v for k, v in summary.items() if k not in ("layers", "n_layers", "paper", "format")}
        info = {k: v for k, v in info.items() if not k.startswith("energy_k_")}
        return cls(layers=layers, info=info)

    def check_weight(self, name: str, weight: Tensor, rtol: float = 1e-3) -> None:
        """Refuse a model whose layer ``name`` is not the aligned weight this direction was built on.

        Shapes must match exactly; ||W||_F must match the recorded ||W_aligned||_F within ``rtol``
        (bf16 storage changes it by ~1e-5, a different model by far more).
        """
        layer = self.layers[name]
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        if shape != layer.shape:
            raise DirectionError(
                f"direction built for another model: layer {name} is {shape} in the model but "
                f"{layer.shape} in the direction ({self.info.get('aligned', '?')})"
            )
        norm = float(weight.detach().float().norm())
        if abs(norm - layer.aligned_norm) <= rtol * layer.aligned_norm:
            return
        hint = ""
        if abs(norm - layer.unaligned_norm) <= rtol * max(layer.unaligned_norm, 1e-12):
            hint = " It matches the *unaligned* model: AsFT fine-tunes the aligned model."
        raise DirectionError(
            f"direction built for another model: layer {name} has ||W||_F = {norm:.6g} but the direction "
            f"was computed for aligned weights with ||W||_F = {layer.aligned_norm:.6g} "
            f"({self.info.get('aligned', '?')}).{hint}"
        )
