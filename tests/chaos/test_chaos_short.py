"""The short, seeded chaos run (`python -m bench.chaos`) in `make test`: two dev hosts, faults on
both sandboxes, a SIGKILL and restart, then every coupled pair compared. Must end with nothing
diverged, duplicated or lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devstack.stack import REPO

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_short_chaos_run_converges_without_loss_or_duplicates() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--seed", "3", "--edits", "30", "--seconds", "8",
         "--customers", "8", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert report["edits"] >= 10, report
    assert report["duplicates"] == 0, report["details"]
    assert report["lost"] == 0, report["details"]
    assert report["diverged"] == 0, report["details"]
    assert report["ok"] and done.returncode == 0, report
