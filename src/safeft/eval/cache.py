"""Append-only JSONL cache of generations, so an interrupted eval resumes without regenerating.

One line per generation: ``{"key", "fingerprint", "attack", "prompt_id", "gen", "response", ...}``.
The key is the SHA-256 of (model fingerprint, attack key, prompt id, generation settings that
change outputs, and the conversation itself — so editing a prompt or an attack option never
returns a stale answer). Lines are flushed and fsynced per batch; a torn last line left by a
crash is skipped on load (and logged), and later lines with the same key win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safeft.eval.generation import Conversation

log = logging.getLogger(__name__)


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (``fcntl.flock``) for the block: two processes that would
    fill the same cache (two sweep points with ``--jobs 2``) take turns, and the second reads what the first
    wrote instead of generating it again. Where ``fcntl`` is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:  # flock needs no write access: only the first process creates the file (a reader writes nothing)
        fh = open(lock)  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        fh = open(lock, "a")  # noqa: SIM115
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def generation_key(
    fingerprint: str, attack: str, prompt_id: str, gen: dict[str, Any], conversation: Conversation
) -> str:
    payload = json.dumps(
        [fingerprint, attack, prompt_id, gen, conversation.to_dict()], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._needs_newline = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        # a crash can tear the last line mid-character: its undecodable bytes make it unparsable, skipped
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: skipping a torn or malformed cache line", self.path, lineno)
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                self._needs_newline = fh.read(1) != b"\n"  # a torn last line: start a fresh one
        log.info("generation cache %s: %d entries", self.path, len(self.entries))

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return None if entry is None else entry["response"]

    def put_many(self, entries: list[dict]) -> None:
        """Append entries (each with ``key`` and ``response``) and make them durable."""
        if not entries:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            if self._needs_newline:
                fh.write("\n")
                self._needs_newline = False
            for entry in entries:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self.entries[entry["key"]] = entry
            fh.flush()
            os.fsync(fh.fileno())
