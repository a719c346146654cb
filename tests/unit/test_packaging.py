"""pyproject.toml's dependencies and requirements.txt list the same runtime set (plus the CLI's)."""

from __future__ import annotations

import ast
import fnmatch
import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"typer>=0.12,<1", "rich>=13,<16"}


def test_pyproject_dependencies_are_requirements_txt_plus_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    runtime = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert set(project["dependencies"]) == runtime | CLI_ONLY


# --- .funcignore: a deployment ships only what runs ------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: Path, patterns: list[str]) -> bool:
    """The subset of gitignore syntax .funcignore uses: a pattern matches a file or folder name at
    any depth, and everything under a matched folder."""
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in patterns)


def _shipped() -> set[Path]:
    patterns = _ignore_patterns()
    shipped: set[Path] = set()
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not _ignored(here / d, patterns)]
        shipped |= {here / f for f in files if not _ignored(here / f, patterns)}
    return shipped


def test_a_deployment_ships_the_app_and_nothing_of_the_development_tools() -> None:
    top = {path.parts[0] for path in _shipped()}
    assert top == {"function_app.py", "host.json", "requirements.txt", "shared", "sync_functions", "mappings"}


def test_every_module_function_app_imports_is_shipped() -> None:
    shipped = _shipped()
    seen: set[Path] = set()
    todo = [Path("function_app.py")]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        assert path in shipped, f"{path} is imported by the app but left out by .funcignore"
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            )  # fmt: skip
            for name in names:
                for candidate in (
                    Path(*name.split(".")).with_suffix(".py"),
                    Path(*name.split("."), "__init__.py"),
                ):
                    if (ROOT / candidate).is_file():
                        todo.append(candidate)
    assert Path("shared/sync/engine.py") in seen  # the walk reached the library
    # what the app reads at run time besides code
    assert {Path("host.json"), Path("requirements.txt"), Path("mappings/default.yaml")} <= shipped
