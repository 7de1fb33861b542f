"""Read and rewrite saved PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``).

A LoRA layer adds ``dW = s * B @ A`` to the base weight, with B (d_out x r), A (r x d_in) and
s = lora_alpha / r (or lora_alpha / sqrt(r) with rsLoRA); per-module r and alpha follow PEFT's
``rank_pattern`` / ``alpha_pattern``. DoRA, fan-in-fan-out (Conv1D) layers and LoRA biases add terms
that are not ``s B A`` and are refused.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from safeft.asft.targets import strip_peft_prefix

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


class AdapterError(ValueError):
    """The directory is not a LoRA adapter safeft can read exactly."""


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


def require_adapter_dir(path: str | Path) -> dict:
    """The ``adapter_config.json`` of a ``--adapter`` folder; FileNotFoundError if it is not one."""
    if not is_adapter_dir(path):
        raise FileNotFoundError(f"--adapter {path}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())


@dataclass(frozen=True)
class LoraKeys:
    a_key: str
    b_key: str
    scale: float


class LoraAdapter:
    """A saved LoRA adapter: module name (without PEFT's ``base_model.model.`` prefix) -> factors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not is_adapter_dir(self.path):
            raise AdapterError(f"{self.path} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
        self.config: dict = json.loads((self.path / ADAPTER_CONFIG).read_text())
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise AdapterError(
                f"{self.path}: {ADAPTER_WEIGHTS} is missing (only safetensors adapters are read)"
            )
        self.weights_file = weights
        self._check_supported()
        self.modules: dict[str, LoraKeys] = self._index()
        if not self.modules:
            raise AdapterError(f"{weights} holds no lora_A/lora_B weights")

    def _check_supported(self) -> None:
        cfg = self.config
        if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
            raise AdapterError(f"{self.path}: peft_type {cfg.get('peft_type')!r} is not LORA")
        for flag, why in (
            ("use_dora", "DoRA rescales the weight, so the delta is not s*B*A"),
            ("fan_in_fan_out", "fan-in-fan-out (Conv1D) layers store W transposed"),
            ("lora_bias", "a LoRA bias adds a term outside s*B*A"),
        ):
            if cfg.get(flag):
                raise AdapterError(f"{self.path}: {flag}=true is not supported ({why})")

    def scale_of(self, module: str) -> float:
        """s = alpha / r (alpha / sqrt(r) with rsLoRA), honouring rank_pattern / alpha_pattern."""
        from peft.utils.other import get_pattern_key

        cfg = self.config
        r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
        rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        if rank_pattern:
            key = get_pattern_key(rank_pattern.keys(), module)
            r = rank_pattern.get(key, r)
        if alpha_pattern:
            key = get_pattern_key(alpha_pattern.keys(), module)
            alpha = alpha_pattern.get(key, alpha)
        return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))

    def _index(self) -> dict[str, LoraKeys]:
        found: dict[str, dict[str, str]] = {}
        with safe_open(self.weights_file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                m = _LORA_KEY.match(key)
                if m:
                    found.setdefault(strip_peft_prefix(m["module"]), {})[m["which"]] = key
        out = {}
        for module, keys in found.items():
            if set(keys) != {"A", "B"}:
                raise AdapterError(f"{self.weights_file}: {module} has lora_{next(iter(keys))} only")
            out[module] = LoraKeys(keys["A"], keys["B"], self.scale_of(module))
        return out

    def factors(self, module: str) -> tuple[Tensor, Tensor, float]:
        """``(A, B, s)`` of one module, in float32."""
        keys = self.modules[module]
        with safe_open(self.weights_file, framework="pt") as f:
            A, B = f.get_tensor(keys.a_key), f.get_tensor(keys.b_key)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise AdapterError(f"{module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not fit")
        return A.float(), B.float(), keys.scale

    def all_tensors(self) -> dict[str, Tensor]:
        with safe_open(self.weights_file, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def metadata(self) -> dict[str, str] | None:
        with safe_open(self.weights_file, framework="pt") as f:
            return f.metadata()

    def save_copy(self, out_dir: str | Path, tensors: dict[str, Tensor]) -> Path:
        """Write ``tensors`` as a new adapter in ``out_dir``, copying every other file of the adapter."""
        out = Path(out_dir)
        if out.resolve() == self.path.resolve():
            raise AdapterError(f"refusing to overwrite the input adapter {self.path}; pick another --out")
        out.mkdir(parents=True, exist_ok=True)
        for item in self.path.iterdir():
            if item.is_file() and item.name != ADAPTER_WEIGHTS:
                shutil.copy2(item, out / item.name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, out / ADAPTER_WEIGHTS, self.metadata())
        return out


def lora_delta(A: Tensor, B: Tensor, scale: float) -> Tensor:
    """dW = s * B @ A (d_out x d_in). Only for tests and small checks: the math never needs it."""
    return scale * (B.to(torch.float32) @ A.to(torch.float32))
