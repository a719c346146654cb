"""`python -m devstack up` (what `make run` runs): the stack answers health 200, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from devstack.bc import DEFAULT_COMPANY_ID
from devstack.serve import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                text = (proc / "stat").read_text()
            except OSError:
                continue
            # `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found |= {int(proc.name)} | _children(int(proc.name))
    return found


def _without_service_settings() -> dict[str, str]:
    # An earlier test's stack may leave its app settings (AUTH_*, an exporter) in this process's
    # environment; `up` would take them as the operator's own.
    dropped = ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL", "TELEMETRY_FILE",
               "OTEL_EXPORTER_OTLP_ENDPOINT", "APPLICATIONINSIGHTS_CONNECTION_STRING")  # fmt: skip
    return {k: v for k, v in os.environ.items() if k not in dropped}


def test_up_serves_health_and_ctrl_c_leaves_nothing_behind() -> None:
    ports = [str(free_port()) for _ in range(6)]
    args = ["--port", ports[0], "--dataverse-port", ports[1], "--bc-port", ports[2],
            "--blob-port", ports[3], "--queue-port", ports[4], "--table-port", ports[5]]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**_without_service_settings(), "PYTHONUNBUFFERED": "1"},
        # A suite started in the background (`make test &`) ignores SIGINT, and children inherit that:
        # `up` must see Ctrl-C as a person's terminal sends it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Press Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.2)
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{ports[0]}/api/health", timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, "health did not answer 200"
        assert answer.json()["storage"] == "reachable"
        # The demo's stock is posted as item ledger entries and reached Sales with the initial sync.
        products = httpx.get(
            f"http://127.0.0.1:{ports[1]}/api/data/v9.2/products?$select=productnumber,quantityonhand",
            headers={"Authorization": "Bearer sales-user"},
            timeout=10,
        ).json()["value"]
        stock = {p["productnumber"]: p["quantityonhand"] for p in products}
        assert (stock.get("I00010"), stock.get("I00020")) == (24, 118), stock
        # The Sales side as a salesperson sees it through the Web API (issue 14): a customer's statistics
        # row, its account's BC number and a link that opens the card, and the account coupled by the BC
        # number the demo typed into it.
        dv_api, seller = f"http://127.0.0.1:{ports[1]}/api/data/v9.2/", {"Authorization": "Bearer sales-user"}
        rows = httpx.get(
            dv_api + "bcs_customerstatistics?$select=bcs_customerno,_bcs_accountid_value,bcs_asofdate",
            headers=seller, timeout=10,
        ).json()["value"]  # fmt: skip
        assert rows and rows[0]["bcs_asofdate"], rows
        account = httpx.get(
            dv_api + f"accounts({rows[0]['_bcs_accountid_value']})?$select=bcs_bcnumber,bcs_bcurl",
            headers=seller, timeout=10,
        ).json()  # fmt: skip
        assert account["bcs_bcnumber"] == rows[0]["bcs_customerno"], account
        assert httpx.get(account["bcs_bcurl"], timeout=10).status_code == 200, account
        typed: list[dict[str, object]] = []
        while not typed:
            assert time.monotonic() < deadline, "the account typed with a BC number was not coupled"
            coupled = "name eq 'Fabrikam Typed Inc' and bcs_bcurl ne null"
            typed = httpx.get(
                dv_api + f"accounts?$filter={coupled}&$select=bcs_bcnumber", headers=seller, timeout=10
            ).json()["value"]
            time.sleep(0.2)
        # The demo started the stock cursor, or said that the delta poll's timer had started it first
        # (on a busy machine the timer can run before the demo reaches that step).
        assert any("stock: quantityonhand follows" in line for line in lines), "".join(lines)[-2000:]
        # The operator page opens to the local token `up` printed; the traces of the demo's sync are there.
        printed = "".join(lines)
        found = re.search(r"Operator page\s+(\S+)\s+\(sign in with the token in (\S+)\)", printed)
        assert found, printed[-2000:]
        page, token_file = found.groups()
        token = Path(token_file).read_text().strip()
        status = httpx.get(page, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert status.status_code == 200 and "Status per mapping" in status.text, status.text[:500]
        assert httpx.get(page, timeout=30).status_code == 401  # no token: the sign-in form
        # A person's change in BC, then its trace from the webhook to the Dataverse write.
        exported = re.search(r"python -m devstack traces (\S+)", printed)
        assert exported, printed[-2000:]
        company = (
            f"http://127.0.0.1:{ports[2]}/v2.0/contoso/production/api/v2.0/companies({DEFAULT_COMPANY_ID})"
        )
        person = {"Authorization": "Bearer sales-user"}
        customer = httpx.get(f"{company}/customers", headers=person, timeout=10).json()["value"][0]
        changed = httpx.patch(
            f"{company}/customers({customer['id']})", json={"phoneNumber": "555-0999"},
            headers={**person, "If-Match": "*"}, timeout=10,
        )  # fmt: skip
        assert changed.status_code == 200, changed.text
        command = [sys.executable, "-m", "devstack", "traces", exported.group(1), "--last", "50"]
        shown = ""
        # Other traces (the demo's Sales changes) also write accounts: wait for the BC change's own.
        while not ("bc webhook" in shown and "Dataverse PATCH accounts" in shown) and (
            time.monotonic() < deadline + 30
        ):
            shown = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60).stdout
            time.sleep(0.5)
        assert "bc webhook" in shown and "Dataverse PATCH accounts" in shown, shown[-2000:]
        started = _children(proc.pid)
        assert started, "up should have started Azurite as a child process"
    finally:
        everything = _children(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            # A failing run must not leave a stack behind: stop what this test started, by PID.
            for pid in [*everything, proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output[-2000:]
    assert "NOT the Azure Functions runtime" in output
    assert "stock of 2 items from 4 item ledger entries" in output
    # The demo started the stock cursor after the 4 entries, or the delta poll's timer did it first
    # on a busy machine (as checked above).
    assert (
        "quantityonhand follows ITEM-PRODUCT: item ledger entries after 4" in output
        or "quantityonhand follows new item ledger entries (the delta poll started the cursor)" in output
    ), output[-2000:]
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in started), "a child process outlived Ctrl-C"


def test_a_taken_port_gives_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "devstack", "dataverse", "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
