"""pyproject.toml's dependencies and requirements.txt list the same runtime set (plus the CLI's)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"typer>=0.12,<1", "rich>=13,<16"}


def test_pyproject_dependencies_are_requirements_txt_plus_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    runtime = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert set(project["dependencies"]) == runtime | CLI_ONLY
