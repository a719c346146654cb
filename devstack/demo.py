"""Demo data and set-up for `python -m devstack up`: after this, the stack syncs live.

It gives Dataverse two users whose e-mails match BC salespeople (a third salesperson stays
uncoupled on purpose, so its customers show the named error), seeds a few dozen BC customers,
registers the webhooks in both sandboxes, couples salespeople by e-mail and runs the initial sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from devstack.stack import Stack

DEMO_USERS = (
    ("jim-olive", "a1b2c3d4-0000-4000-8000-00000000a001", "Jim Olive", "jim.olive@contoso.example"),
    ("peter-saddow", "a1b2c3d4-0000-4000-8000-00000000a002", "Peter Saddow", "peter.saddow@contoso.example"),
)
DEMO_CUSTOMERS = 40


def start_demo(stack: Stack) -> Iterator[str]:
    from devstack.dataverse.config import SandboxUser
    from shared import bulk
    from shared.registration import ensure_bc_subscriptions, ensure_dataverse_webhooks
    from shared.runtime import get_runtime

    dv_sandbox = stack.dataverse_app.state.sandbox
    for token, user_id, name, email in DEMO_USERS:
        dv_sandbox.add_user(
            SandboxUser(token=token, systemuserid=user_id, fullname=name, internalemailaddress=email)
        )
    bc_sandbox = stack.bc_app.state.sandbox
    bc_sandbox.seed_customers(DEMO_CUSTOMERS)
    yield f"demo data: {len(DEMO_USERS)} Dataverse users, {DEMO_CUSTOMERS} extra BC customers"

    rt = get_runtime()
    rt.storage.ensure()
    registered = ensure_dataverse_webhooks(rt.dataverse, rt.settings, rt.mappings)
    registered.merge(
        ensure_bc_subscriptions(rt.bc, rt.settings, rt.mappings, rt.storage.table("Subscriptions"))
    )
    yield f"webhooks: {len(registered.created)} created, {len(registered.unchanged)} already there"

    report = bulk.match_coupling(rt.engine, "SALESPEOPLE", dry_run=False)
    yield (
        f"salespeople coupled by e-mail: {len(report.would_couple)}; not coupled: {len(report.no_match)} "
        "(customers owned by them fail with a message saying so)"
    )
    for name in rt.mappings.sync_order():
        if name == "SALESPEOPLE":
            continue
        run = bulk.run_full_resync(rt.engine, name)
        yield f"initial sync {name}: {_counts(run.counts)}"
    yield from _try_it(stack)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to do"


def _try_it(stack: Stack) -> Iterator[str]:
    bc = stack.env["BC_API_URL"]
    company = stack.env["BC_COMPANY_IDS"]
    dv = stack.env["DATAVERSE_URL"] + "/api/data/v9.2"
    host = stack.env["SERVICE_PUBLIC_URL"]
    yield ""
    yield "Try it (as an ordinary user of each system):"
    yield f"  curl -s -H 'Authorization: Bearer sales-user' '{bc}/companies({company})/customers?$top=3'"
    yield (
        f"  curl -s -X POST -H 'Authorization: Bearer sales-user' -H 'Content-Type: application/json' "
        f"-d '{{\"displayName\": \"Fabrikam Inc\"}}' '{bc}/companies({company})/customers'"
    )
    yield f"  curl -s -H 'Authorization: Bearer sales-user' '{dv}/accounts?$select=name,accountnumber&$top=3'"
    yield f"  curl -s '{host}/api/health'"
    yield "A BC change reaches Dataverse about 2 s later (the sandbox coalesces notifications for 2 s,"
    yield "real BC for 30 s); a Dataverse change reaches BC within a second."
