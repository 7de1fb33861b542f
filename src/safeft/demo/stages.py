"""Stage bookkeeping: run a list of stages in order, skip the ones already finished, show progress.

A stage is finished when ``<out>/<stage>/stage.json`` exists; it is written (atomically) only after
the stage's function returned, so an interrupted stage runs again on the next call (and its own
checkpoints — trainer checkpoints, the generation cache — make that rerun cheap). Timings of every
call are appended to ``<out>/stages.json``.

Progress: one line per stage with an overall bar, the time spent and an ETA. The ETA is the sum of
the remaining stages' estimates, scaled by how fast the finished stages of this call ran compared
with their own estimates (so it corrects itself as the run goes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

MARKER = "stage.json"


@dataclass
class Stage:
    """``run(folder)`` does the work and returns a JSON-able summary; ``estimate_s`` plans the ETA."""

    name: str
    title: str
    run: Callable[[Path], dict[str, Any]]
    estimate_s: float = 10.0


@dataclass
class StageRecord:
    name: str
    status: str  # done | skipped
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def stage_dir(out: Path, name: str) -> Path:
    return out / name


def is_done(out: Path, name: str) -> bool:
    return (stage_dir(out, name) / MARKER).is_file()


def read_marker(out: Path, name: str) -> dict[str, Any]:
    return json.loads((stage_dir(out, name) / MARKER).read_text())


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def current_rss_mb() -> int:
    """Resident memory of this process now (MB)."""
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20)


def fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class StageRunner:
    """Runs :class:`Stage` objects in order with resume, progress lines and timing records."""

    def __init__(self, out: str | Path, stages: list[Stage], stream: TextIO | None = None) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in {names}")
        self.out = Path(out)
        self.stages = stages
        self.stream = stream or sys.stderr
        self.records: list[StageRecord] = []

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def eta(self, index: int, spent: float, spent_estimate: float) -> float:
        """Seconds left for stages ``index..`` (speed of this call's finished stages applied)."""
        remaining = sum(s.estimate_s for s in self.stages[index:] if not is_done(self.out, s.name))
        speed = spent / spent_estimate if spent_estimate > 0 else 1.0
        return remaining * min(max(speed, 0.25), 4.0)

    def run(self) -> list[StageRecord]:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        spent = spent_estimate = 0.0
        total_est = sum(s.estimate_s for s in self.stages) or 1.0
        done_est = 0.0
        n = len(self.stages)
        for i, stage in enumerate(self.stages, start=1):
            head = f"{progress_bar(done_est / total_est)} stage {i}/{n} {stage.name}"
            if is_done(self.out, stage.name):
                self._say(f"{head}: already done, skipped (delete {stage_dir(self.out, stage.name)} to redo)")
                self.records.append(
                    StageRecord(stage.name, "skipped", 0.0, read_marker(self.out, stage.name))
                )
                done_est += stage.estimate_s
                continue
            eta = self.eta(i - 1, spent, spent_estimate)
            self._say(
                f"{head}: {stage.title} (estimate {fmt_seconds(stage.estimate_s)}; "
                f"elapsed {fmt_seconds(time.time() - started)}, ETA {fmt_seconds(eta)})"
            )
            t0 = time.time()
            folder = stage_dir(self.out, stage.name)
            folder.mkdir(parents=True, exist_ok=True)
            summary = stage.run(folder) or {}
            seconds = round(time.time() - t0, 1)
            rss = current_rss_mb()
            write_json_atomic(
                folder / MARKER,
                {
                    "stage": stage.name,
                    "seconds": seconds,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "summary": summary,
                    "rss_mb_after": rss,
                },
            )
            self.records.append(StageRecord(stage.name, "done", seconds, summary))
            spent += seconds
            spent_estimate += stage.estimate_s
            done_est += stage.estimate_s
            self._say(
                f"{progress_bar(done_est / total_est)} stage {i}/{n} {stage.name}: done in "
                f"{fmt_seconds(seconds)} (memory in use {rss} MB)"
            )
        self._append_timings(time.time() - started)
        return self.records

    def _append_timings(self, total: float) -> None:
        path = self.out / "stages.json"
        history = json.loads(path.read_text()) if path.is_file() else []
        history.append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - total)),
                "seconds": round(total, 1),
                "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds} for r in self.records],
            }
        )
        write_json_atomic(path, history)
