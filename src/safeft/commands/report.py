"""``safeft report DIR1 DIR2 ...``: several ``safeft eval`` runs side by side (e.g. before/after DeRTa).

Reads each ``DIR/results.json`` and writes ``report.md``, ``report.html`` and ``plots/*.png`` to
``--out`` (default: ``report/`` in the current folder), one colour per run.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="compare several `safeft eval` runs side by side", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="output folders of `safeft eval`")
    p.add_argument("--out", default="report", help="folder for the combined report (default: report/)")
    p.add_argument("--labels", help="comma-separated run names, in the order of the folders")
    p.add_argument("--title", help="report title")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.eval.report import load_run, write_report

    runs = [load_run(d) for d in args.runs]
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(runs):
        raise ValueError(f"--labels has {len(labels)} names for {len(runs)} runs")
    md, page = write_report(runs, args.out, labels, args.title)
    print(f"report: {page} (and {md.name})")
    return 0
