"""Which linear layers a list of target module names selects (PEFT's list semantics)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: AsFT / Safe LoRA default targets (the paper's q/v LoRA)
DEFAULT_TARGETS = ("q_proj", "v_proj")

#: prefix PEFT puts in front of the wrapped model's module names
PEFT_PREFIX = "base_model.model."


class TargetError(ValueError):
    """A target module name selects no layer, or the selected layers disagree between two models."""


def parse_targets(text: str | Sequence[str] | None) -> list[str]:
    """``"q_proj,v_proj"`` or a list -> a clean, non-empty list of target names."""
    if text is None:
        return list(DEFAULT_TARGETS)
    items = text.split(",") if isinstance(text, str) else list(text)
    targets = [t.strip() for t in items if t and t.strip()]
    if not targets:
        raise TargetError("no target modules given (expected e.g. q_proj,v_proj)")
    return targets


def matches(module: str, target: str) -> bool:
    """PEFT semantics for a list entry: the module is the target or ends with ``.target``."""
    return module == target or module.endswith("." + target)


def module_of(weight_name: str) -> str | None:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else None


def strip_peft_prefix(module: str) -> str:
    return module[len(PEFT_PREFIX) :] if module.startswith(PEFT_PREFIX) else module


def select_modules(modules: Iterable[str], targets: Sequence[str], where: str) -> list[str]:
    """The modules any target selects, in input order; every target must select at least one."""
    modules = list(modules)
    chosen = [m for m in modules if any(matches(m, t) for t in targets)]
    unmatched = [t for t in targets if not any(matches(m, t) for m in modules)]
    if unmatched:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
        raise TargetError(
            f"target module(s) {unmatched} match no linear layer of {where}; "
            f"its linear layers end in: {', '.join(leaves) or '(none)'}"
        )
    return chosen
