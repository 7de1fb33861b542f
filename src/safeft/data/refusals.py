"""Refusals for harmful answers that come without one.

The default pool is written by us. Every refusal starts with "Sorry" on purpose: DeRTa's RTO trains
the *first* refusal token at every harmful position, so MLE rows and RTO rows should agree on it.
A user pool is a text file (one refusal a line) or JSONL with a ``refusal`` field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from safeft.data.records import DataError, read_rows, read_utf8

DEFAULT_REFUSALS: tuple[str, ...] = (
    "Sorry, but I can't help with that.",
    "Sorry, I can't assist with this request because it could cause real harm.",
    "Sorry, I won't continue with this. It could be used to hurt people.",
    "Sorry, I can't provide that information. If you have a different question, I'm happy to help.",
    "Sorry, but I have to stop here: I can't help with anything that could cause harm.",
    "Sorry, I can't go on with this answer. Helping with this could put people at risk.",
    "Sorry, that's not something I can help with.",
    "Sorry, I must decline. This request could lead to harm or break the law.",
    "Sorry, I can't help with that request. Is there something else I can do for you?",
    "Sorry, I'm not able to help with this, because it could be dangerous.",
    "Sorry, I can't continue. I shouldn't provide instructions that could hurt someone.",
    "Sorry, but I can't provide guidance on this.",
)


class RefusalPool:
    """Deterministic choice of a refusal for a row: the same (seed, key) always gets the same one. Callers
    key by the prompt text (not the row's ``file:row`` origin, whose path changes with the install and
    output folders)."""

    def __init__(self, refusals: tuple[str, ...] | list[str] = DEFAULT_REFUSALS, seed: int = 0) -> None:
        refusals = [r.strip() for r in refusals if r and r.strip()]
        if not refusals:
            raise DataError("the refusal pool is empty")
        self.refusals = refusals
        self.seed = seed

    @classmethod
    def from_file(cls, path: str | Path, seed: int = 0) -> RefusalPool:
        p = Path(path)
        if p.suffix in (".jsonl", ".json", ".csv"):
            items = []
            for row_no, row in read_rows(p):
                if not str(row.get("refusal", "")).strip():
                    raise DataError(f"{p}:{row_no}: field 'refusal' is missing or empty")
                items.append(str(row["refusal"]))
        else:
            if not p.is_file():
                raise DataError(f"{p}: refusal pool file not found")
            items = read_utf8(p, "a refusal pool (one refusal per line)").splitlines()
        return cls(items, seed)

    def pick(self, key: str) -> str:
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return self.refusals[int.from_bytes(digest[:8], "little") % len(self.refusals)]
