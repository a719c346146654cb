"""Nothing in the repository cites a file that is not in it (issue 10): every relative link of the
Markdown pages points to a file that exists (and to a heading that exists, for `#anchor`), every
repository path named in code, comments or docs exists, and the documents the project once cited
without having them (the seed's design document, the reference summaries cited by section sign,
the folder beside the repository they lived in) are cited nowhere.

Citations go into `docs/` or to a public URL (docs/architecture.md); a path that only exists on one
machine cannot be followed by a reader of the project.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", "third_party"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".bicep", ".txt", ".cfg", ".ini"}
TOP_DIRS = ("shared", "docs", "devstack", "tests", "bcsync", "sync_functions", "bench", "infra", "mappings",
            "solution")  # fmt: skip
# Paths that stand for a file the reader supplies, named in examples and tests.
EXAMPLES = {"mappings/test.yaml"}

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATH = re.compile(r"(?<![\w/.-])((?:" + "|".join(TOP_DIRS) + r")/[\w./-]*\w)")
# Spelled in pieces, so that this test is not itself a citation of them.
_FORBIDDEN = re.compile(
    "|".join(["DESIGN" + r"\.md", "reference " + "\u00a7", r"\.\./" + "shared/", "/work/" + "shared"])
)


def _candidates() -> list[Path]:
    """The repository's files: those git tracks and new ones it does not ignore (not the tool
    environments `make conformance` builds beside them); every file below the root without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines()  # fmt: skip
        return [ROOT / name for name in listed]
    except (OSError, subprocess.SubprocessError):
        return list(ROOT.rglob("*"))


def _files() -> list[Path]:
    found = []
    for path in _candidates():
        parts = set(path.relative_to(ROOT).parts)
        if parts & SKIP_DIRS or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name == "Makefile":
            found.append(path)
    return sorted(found)


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a file; for Markdown without its fenced blocks (examples of output, not citations)."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if path.suffix == ".md" and line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation other than `-` and `_` dropped, spaces to `-`."""
    anchors = set()
    for _, line in _prose_lines(page):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _exists(citing: Path, target: str) -> bool:
    target = target.rstrip(".")
    for base in (ROOT, citing.parent):
        candidate = base / target
        if candidate.exists() or candidate.with_suffix(".py").exists():
            return True
    return False


def test_markdown_links_point_to_files_and_headings_that_exist() -> None:
    broken = []
    for page in (p for p in _files() if p.suffix == ".md"):
        for number, line in _prose_lines(page):
            for link in _LINK.findall(line):
                if re.match(r"[a-z]+:", link):
                    continue  # a URL
                target, _, anchor = link.partition("#")
                where = f"{page.relative_to(ROOT)}:{number}: {link}"
                resolved = (page.parent / target) if target else page
                if not resolved.exists():
                    broken.append(where + " (no such file)")
                elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                    broken.append(where + " (no such heading)")
    assert not broken, "links to what is not in the repository:\n" + "\n".join(broken)


def test_repository_paths_named_anywhere_exist() -> None:
    missing = []
    for path in _files():
        for number, line in _prose_lines(path):
            for target in _PATH.findall(line):
                if any(c in target for c in "*{<") or target in EXAMPLES:
                    continue
                if not _exists(path, target):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_no_document_outside_the_repository_is_cited() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in _files()
        if path != Path(__file__)
        for number, line in _prose_lines(path)
        if _FORBIDDEN.search(line)
    ]
    assert not cited, "cite docs/ or a public URL instead:\n" + "\n".join(cited)
