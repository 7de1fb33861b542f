"""Every relative link of the README and of docs/*.md points to a file of the repository and, with an
anchor, to a heading of that file (GitHub's anchor rule), so moving a section never leaves a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, characters other than letters, digits, '_', '-' and spaces dropped,
    spaces turned into '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text, inside_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside_code = not inside_code
        elif not inside_code and line.startswith("#"):
            text.append(github_anchor(line.lstrip("#")))
    return set(text)


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", t)]


def test_the_anchor_rule_matches_githubs_on_headings_of_this_repository():
    assert (
        github_anchor("The selected setting at n >= 100 (2026-11-27)")
        == "the-selected-setting-at-n--100-2026-11-27"
    )
    assert github_anchor("Selection on fresh seeds: `t64_nt_self` was one lucky run") == (
        "selection-on-fresh-seeds-t64_nt_self-was-one-lucky-run"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path):
    links = relative_links(doc)
    dead = []
    for target in links:
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            dead.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target} (no heading with id {anchor!r})")
    assert not dead, f"{doc.relative_to(ROOT)}: dead links: {dead}"


def test_the_readme_links_every_moved_experiment_section():
    """The README's list of DeRTa experiments names each section of docs/derta_experiments.md."""
    readme = ROOT / "README.md"
    linked = {
        t.partition("#")[2] for t in relative_links(readme) if t.startswith("docs/derta_experiments.md#")
    }
    sections = {
        github_anchor(line[3:])
        for line in (ROOT / "docs/derta_experiments.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    assert sections and sections <= linked
