"""`bcsync pack-solution`: the zip an administrator imports by hand, the same bytes every time."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from bcsync.cli import app
from shared.sales.solution import pack, read_info


def test_pack_solution_writes_the_deterministic_zip(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--json", "pack-solution", "--out", str(tmp_path)], env={})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    target = tmp_path / read_info().zip_name()
    assert report["file"] == str(target) and target.read_bytes() == pack()
    again = runner.invoke(app, ["--json", "pack-solution", "--out", str(tmp_path)], env={})
    assert json.loads(again.output)["sha256"] == report["sha256"]


def test_a_broken_source_fails_naming_the_file(tmp_path: Path) -> None:
    source = tmp_path / "solution"
    (source / "Other").mkdir(parents=True)
    (source / "Other" / "Solution.xml").write_text("<ImportExportXml><SolutionManifest>")
    result = CliRunner().invoke(
        app, ["pack-solution", "--source", str(source), "--out", str(tmp_path)], env={}
    )
    assert result.exit_code == 1 and "no element found" in result.output


def test_the_written_zip_opens_with_a_standard_zip_tool(tmp_path: Path) -> None:
    """Info-ZIP's `unzip` (what admins and the Power Platform's own tooling expect: plain deflate, no
    zip64, no data descriptors) tests every entry's CRC and lists the three files."""
    runner = CliRunner()
    assert runner.invoke(app, ["pack-solution", "--out", str(tmp_path)], env={}).exit_code == 0
    target = tmp_path / read_info().zip_name()
    unzip = shutil.which("unzip")
    assert unzip, "install Info-ZIP unzip (apt-get install unzip) to run this test"
    tested = subprocess.run([unzip, "-t", str(target)], capture_output=True, text=True, timeout=30)
    assert tested.returncode == 0 and "No errors detected" in tested.stdout, tested.stdout + tested.stderr
    listed = subprocess.run([unzip, "-Z1", str(target)], capture_output=True, text=True, timeout=30)
    assert sorted(listed.stdout.split()) == ["[Content_Types].xml", "customizations.xml", "solution.xml"]
