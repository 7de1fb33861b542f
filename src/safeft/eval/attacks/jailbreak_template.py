"""``jailbreak-template``: wrap the prompt in role-play templates read from a file the user supplies.

The file holds templates containing the placeholder ``{prompt}``: a JSON list of strings, JSON
lines with a ``template`` field, or plain text with templates separated by lines that hold only
``---``. Each record gets one template, chosen by a stable hash of its id, so every template is
used about equally often and reruns pick the same one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from safeft.data.records import read_utf8
from safeft.eval.attacks.base import BaseAttack
from safeft.eval.generation import Conversation
from safeft.eval.prompts import DataFormatError, PromptRecord

PLACEHOLDER = "{prompt}"


def load_templates(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jailbreak template file not found: {path}")
    text = read_utf8(path, "jailbreak templates")
    templates: list[tuple[int, str]] = []
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise DataFormatError(f"{path}: expected a JSON list of template strings")
        templates = [(i, t) for i, t in enumerate(items, 1)]
    elif path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    templates.append((lineno, json.loads(line)["template"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataFormatError(f'{path}:{lineno}: expected {{"template": ...}}') from None
    else:
        start, block = 1, []
        for lineno, line in enumerate([*text.splitlines(), "---"], 1):
            if line.strip() == "---":
                if "".join(block).strip():
                    templates.append((start, "\n".join(block).strip()))
                start, block = lineno + 1, []
            else:
                block.append(line)
    if not templates:
        raise DataFormatError(f"{path}: no templates found")
    for where, t in templates:
        if PLACEHOLDER not in t:
            raise DataFormatError(f"{path}:{where}: template has no {PLACEHOLDER} placeholder")
    return [t for _, t in templates]


def _stable_index(text: str, n: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % n


@dataclass
class JailbreakTemplateAttack(BaseAttack):
    templates: str | None = None  # path of the template file
    name: str = "jailbreak-template"
    _loaded: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("attack 'jailbreak-template' needs a template file: --templates FILE")
        self._loaded = load_templates(self.templates)

    def params(self) -> dict:
        digest = hashlib.sha256("\0".join(self._loaded).encode()).hexdigest()[:12]
        return {"templates": str(self.templates), "n_templates": len(self._loaded), "sha": digest}

    def apply(self, record: PromptRecord) -> Conversation:
        template = self._loaded[_stable_index(record.id, len(self._loaded))]
        return Conversation.user(template.replace(PLACEHOLDER, record.prompt))
