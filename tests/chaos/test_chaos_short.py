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


class KnownDivergence(AssertionError):
    """Only the divergence already reported (see the xfail reason), nothing else."""


# Fields BC assigns or defaults when the service creates a BC customer from a Dataverse account.
BC_ASSIGNED = ("number:", "currencyCode:", "creditLimit:")


@pytest.mark.xfail(
    raises=KnownDivergence,
    strict=False,  # seeds whose run creates no Dataverse account pass
    reason="finding of the chaos run: an account created in Dataverse gets its BC customer, but the "
    "values BC assigns (number -> accountnumber, currencyCode, creditLimit) are never written back to "
    "Dataverse (Engine._create_in_bc stores the snapshot from both records as they are)",
)
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
    diverged = [d for d in report["details"] if d.startswith("diverged")]
    assert len(diverged) == report["diverged"]
    unknown = [d for d in diverged if not all(part.strip().startswith(BC_ASSIGNED) for part in
                                               d.split("): ", 1)[1].split(";"))]  # fmt: skip
    assert not unknown, unknown
    if diverged:
        raise KnownDivergence("\n".join(diverged))
    assert report["ok"] and done.returncode == 0, report
