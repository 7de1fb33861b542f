"""Attack registry: each attack is one module and a pure transform record -> Conversation.

``get_attack(name, **options)`` builds one; unknown names list the valid ones. Options a given
attack does not take are ignored, so one option mapping can serve a whole suite.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from safeft.eval.attacks.autodan import AutoDANAttack
from safeft.eval.attacks.base import Attack, BaseAttack
from safeft.eval.attacks.cipher import CipherAttack
from safeft.eval.attacks.codeattack import CodeAttack
from safeft.eval.attacks.completion import CompletionAttack
from safeft.eval.attacks.direct import DirectAttack
from safeft.eval.attacks.jailbreak_template import JailbreakTemplateAttack
from safeft.eval.attacks.pair import PairAttack
from safeft.eval.attacks.prefill_harmful import DEFAULT_KS, PrefillHarmfulAttack

ATTACKS: dict[str, type[BaseAttack]] = {
    "direct": DirectAttack,
    "completion": CompletionAttack,
    "prefill-harmful-k": PrefillHarmfulAttack,
    "codeattack": CodeAttack,
    "cipher": CipherAttack,
    "jailbreak-template": JailbreakTemplateAttack,
    "pair": PairAttack,
    "autodan": AutoDANAttack,
}


def check_attack_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; valid attacks: {', '.join(ATTACKS)}")


def get_attack(name: str, **options: Any) -> BaseAttack:
    """Build attack ``name`` from the options its dataclass declares (others are ignored)."""
    check_attack_names([name])
    cls = ATTACKS[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")} - {"name"}
    return cls(**{k: v for k, v in options.items() if k in fields})


def expand_attacks(names: list[str], options: dict[str, Any] | None = None) -> list[BaseAttack]:
    """Attack instances for ``names``; ``prefill-harmful-k`` becomes one attack per k in ``ks``."""
    options = dict(options or {})
    check_attack_names(names)
    out: list[BaseAttack] = []
    for name in names:
        if name == "prefill-harmful-k":
            ks = options.get("ks") or list(DEFAULT_KS)
            out.extend(PrefillHarmfulAttack(k=int(k)) for k in ks)
        else:
            out.append(get_attack(name, **options))
    return out


__all__ = ["ATTACKS", "Attack", "BaseAttack", "check_attack_names", "expand_attacks", "get_attack"]
