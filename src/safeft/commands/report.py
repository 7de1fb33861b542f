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


#: top-level keys of results.json a report reads, and the type each must have
REQUIRED = {"model": dict, "config": dict, "judge": dict, "attacks": dict}


def check_results(results: Any, run_dir: str) -> dict:
    """``results`` if it looks like a ``safeft eval`` results.json, else a ValueError naming the field."""
    where = f"{run_dir}/results.json"
    if not isinstance(results, dict):
        raise ValueError(f"{where}: expected a JSON object written by `safeft eval`")
    for key, kind in REQUIRED.items():
        if key not in results:
            raise ValueError(f"{where}: no field {key!r} (not a `safeft eval` results file?)")
        if not isinstance(results[key], kind):
            raise ValueError(f"{where}: field {key!r} must be a {kind.__name__}")
    if "name" not in results["model"]:
        raise ValueError(f"{where}: field 'model' has no 'name'")
    return results


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.eval.report import load_run, write_report

    runs = [check_results(load_run(d), d) for d in args.runs]
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels and len(labels) != len(runs):
        raise ValueError(f"--labels has {len(labels)} names for {len(runs)} runs")
    md, page = write_report(runs, args.out, labels, args.title)
    print(f"report: {page} (and {md.name})")
    return 0
