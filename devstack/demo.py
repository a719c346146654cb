"""Demo data and set-up for `python -m devstack up`: after this, the stack syncs live.

It gives Dataverse two users whose e-mails match BC salespeople (a third salesperson stays
uncoupled on purpose, so its customers show the named error), seeds a few dozen BC customers and
a few of their contacts,
runs the operator's set-up (checks, webhook registration in both sandboxes, salespeople coupled by
e-mail) and the initial sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from devstack.stack import INTEGRATION_TOKEN, Stack

if TYPE_CHECKING:
    from shared.runtime import Runtime

DATAVERSE_ADMIN_TOKEN = "admin-user"  # the sandbox's System Administrator (devstack/dataverse/config.py)

DEMO_USERS = (
    ("jim-olive", "a1b2c3d4-0000-4000-8000-00000000a001", "Jim Olive", "jim.olive@contoso.example"),
    ("peter-saddow", "a1b2c3d4-0000-4000-8000-00000000a002", "Peter Saddow", "peter.saddow@contoso.example"),
)
DEMO_CUSTOMERS = 40
# Customers of salesperson OF, who has no Dataverse user: under person ownership they fail to sync,
# saying why (couple the salesperson, then retry them), as the demo announces.
DEMO_OF_CUSTOMERS = ("Falls Outdoor Supplies", "Otis Bikes")
# Person contacts of the first demo customers, each under its customer's company contact, as in BC.
DEMO_PEOPLE = ("Ann Beck", "Luis Ortega", "Mia Chen", "Tom Wright", "Sara Nilsen")
# Open opportunities of the first two demo contacts: the initial sync brings them to Sales linked to them.
DEMO_OPPORTUNITIES = (("Ann Beck", "Showroom refit", 18500), ("Luis Ortega", "Conference chairs", 7200))
DEMO_INVOICES = 3
DEMO_INVOICE_CUSTOMERS = ("Adatum Corporation", "Trey Research")
DEMO_STOCK = (
    {"itemNumber": "I00010", "quantity": 30, "entryType": "Purchase", "documentNumber": "107001"},
    {"itemNumber": "I00010", "quantity": -6, "entryType": "Sale", "documentNumber": "102001"},
    {"itemNumber": "I00020", "quantity": 120, "entryType": "Purchase", "documentNumber": "107002"},
    {"itemNumber": "I00020", "quantity": -2, "entryType": "Negative Adjmt.", "documentNumber": "T00001"},
)


def start_demo(stack: Stack) -> Iterator[str]:
    from devstack.dataverse.config import SandboxUser
    from shared.connectors.credentials import StaticTokenCredential
    from shared.ops.setup import AdminCredentials, run_setup
    from shared.runtime import get_runtime
    from shared.sales.statistics import push_statistics
    from shared.sales.stock import refresh_stock
    from shared.sync import bulk

    dv_sandbox = stack.dataverse_app.state.sandbox
    for token, user_id, name, email in DEMO_USERS:
        dv_sandbox.add_user(
            SandboxUser(token=token, systemuserid=user_id, fullname=name, internalemailaddress=email)
        )
    bc_sandbox = stack.bc_app.state.sandbox
    customers = bc_sandbox.seed_customers(DEMO_CUSTOMERS, company_contacts=True)
    people = [
        {"type": "Person", "displayName": name, "email": name.lower().replace(" ", ".") + "@customer.example",
         "companyNumber": bc_sandbox.company_contact(customer)["number"]}
        for name, customer in zip(DEMO_PEOPLE, customers, strict=False)
    ]  # fmt: skip
    person_ids = bc_sandbox.seed("contacts", people)
    numbers = {
        bc_sandbox.get("contacts", i)["displayName"]: bc_sandbox.get("contacts", i)["number"]
        for i in person_ids
    }
    for contact, description, value in DEMO_OPPORTUNITIES:
        [opportunity] = bc_sandbox.seed(
            "opportunities", [{"contactNumber": numbers[contact], "description": description}]
        )
        bc_sandbox.store.system_update(  # the sales cycle's estimate, which the API cannot write
            bc_sandbox.company_id, "opportunities", opportunity, {"estimatedValue": value}, "SEED"
        )
    bc_sandbox.seed("customers", [{"displayName": n, "salespersonCode": "OF"} for n in DEMO_OF_CUSTOMERS])
    # Opening stock, posted as BC posts it (item ledger entries); `inventory` is their sum.
    bc_sandbox.post_item_entries(DEMO_STOCK, user="SEED")
    # Posted sales invoices of the sample customers: the initial sync brings them to Sales with lines.
    samples = [c["number"] for c in bc_sandbox.store.rows(bc_sandbox.company_id, "customers")
               if c["displayName"] in DEMO_INVOICE_CUSTOMERS]  # fmt: skip
    bc_sandbox.seed_posted_invoices(samples, ["I00010", "I00020"], DEMO_INVOICES, 2)
    yield (
        f"demo data: {len(DEMO_USERS)} Dataverse users, {DEMO_CUSTOMERS} extra BC customers, "
        f"{len(DEMO_PEOPLE)} of their contacts, {len(DEMO_OPPORTUNITIES)} open opportunities, "
        f"{len(DEMO_OF_CUSTOMERS)} customers of salesperson OF, "
        f"stock of {len({e['itemNumber'] for e in DEMO_STOCK})} items "
        f"from {len(DEMO_STOCK)} item ledger entries"
    )

    # The operator's set-up, as `bcsync setup` runs it: checks, registration, salespeople.
    rt = get_runtime()
    # Dataverse's System Administrator imports the solution; the BC sandbox lets the integration user
    # create subscriptions.
    admin = AdminCredentials(
        dataverse=StaticTokenCredential(DATAVERSE_ADMIN_TOKEN), bc=StaticTokenCredential(INTEGRATION_TOKEN)
    )
    report = run_setup(rt, admin)
    coupled = [p.code for p in report.salespeople if p.status in ("coupled", "already_coupled")]
    missing = [f"{p.code} ({p.reason})" for p in report.salespeople if p.status == "not_coupled"]
    yield f"set-up: {len(report.created)} registrations created, {len(report.failed)} failed"
    # What an administrator does next in the Power Platform admin center: give the salespeople the
    # solution's roles that set-up listed as missing.
    from devstack.dataverse.config import SALES_USER_ID
    from shared.sales.solution import ROLE_AVAILABILITY, ROLE_USER

    for user_id in (SALES_USER_ID, *(u[1] for u in DEMO_USERS)):
        for role in (ROLE_USER, ROLE_AVAILABILITY):
            dv_sandbox.assign_role(user_id, role)
    yield f"security roles {ROLE_USER} and {ROLE_AVAILABILITY} given to sales-user and the demo users"
    yield f"salespeople coupled by e-mail: {', '.join(coupled) or 'none'}"
    yield f"salespeople not coupled (their customers fail, saying so): {', '.join(missing) or 'none'}"
    for name in rt.mappings.sync_order():
        if name == "SALESPEOPLE":
            continue
        run = bulk.run_full_resync(rt.engine, name)
        yield f"initial sync {name}: {_counts(run.counts)}"
    yield from _demo_orders(stack, rt)
    # Stock posted from now on reaches Sales at each delta poll: start its cursor at the newest entry.
    stock = refresh_stock(rt)
    started = ", ".join(stock.baselines) or "new item ledger entries (the delta poll started the cursor)"
    yield f"stock: quantityonhand follows {started}"
    statistics = push_statistics(rt)
    yield f"customer statistics: {statistics.written} rows in bcs_customerstatistics (then every 30 minutes)"
    # Coupling from Sales: a BC customer the service has not seen yet, and a salesperson who types its
    # number into a new account (the service couples them and brings BC's values).
    [typed_id] = bc_sandbox.seed("customers", [{"displayName": "Fabrikam Typed Inc", "city": "Seattle"}])
    number = bc_sandbox.get("customers", typed_id)["number"]
    dv_api = stack.env["DATAVERSE_URL"] + "/api/data/v9.2/"
    created = httpx.post(
        dv_api + "accounts",
        json={"name": "Fabrikam (lead)", "customertypecode": 3, "bcs_bcnumber": number},
        headers={"Authorization": "Bearer sales-user", "Prefer": "return=representation"},
        timeout=30,
    )
    created.raise_for_status()
    yield (
        f"coupling from Sales: sales-user typed BC number {number} into the new account 'Fabrikam (lead)' "
        f"({created.json()['accountid']}); the service couples it and writes BC's name, link and status"
    )
    uncoupled = {p.code for p in report.salespeople if p.status == "not_coupled"}
    held = [c["displayName"] for c in bc_sandbox.store.rows(bc_sandbox.company_id, "customers")
            if c.get("salespersonCode") in uncoupled]  # fmt: skip
    if held:
        yield (
            f"customers of uncoupled salespeople, not synced: {', '.join(sorted(held))} "
            "(`python -m bcsync errors CUSTOMER` shows why)"
        )
    yield from _try_it(stack)


def _demo_orders(stack: Stack, rt: Runtime) -> Iterator[str]:
    """Two Sales orders of the first sample customer, entered by a Sales user: one submitted (it becomes
    a BC sales order with its lines within seconds), one still a draft (not BC's business yet)."""
    import httpx

    bc_sandbox = stack.bc_app.state.sandbox
    rows = bc_sandbox.store.rows(bc_sandbox.company_id, "customers")
    customer = next(c for c in rows if c["displayName"] == DEMO_INVOICE_CUSTOMERS[0])
    account = rt.couplings.get("CUSTOMER", "bc", customer["id"])
    items = {i["number"]: i for i in bc_sandbox.store.rows(bc_sandbox.company_id, "items")}
    products = [rt.couplings.get("ITEM-PRODUCT", "bc", items[n]["id"]) for n in ("I00010", "I00020")]
    unit = next(
        u for u in bc_sandbox.store.rows(bc_sandbox.company_id, "unitsOfMeasure") if u["code"] == "PCS"
    )
    uom = rt.couplings.get("UNIT", "bc", unit["id"])
    if account is None or uom is None or None in products:
        yield "sales orders: not created (the sample customer, items or unit are not coupled)"
        return
    base = stack.env["DATAVERSE_URL"] + "/api/data/v9.2/"
    made = []
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer sales-user"}, timeout=30) as dv:
        for name, submit in (("Desks for Atlanta", True), ("Chairs (draft)", False)):
            details = [
                {"productid@odata.bind": f"/products({p.dv_id})", "uomid@odata.bind": f"/uoms({uom.dv_id})",
                 "quantity": q, "priceperunit": 100.0, "ispriceoverridden": True}
                for p, q in zip(products, (2, 4), strict=True) if p is not None
            ]  # fmt: skip
            body = {"name": name, "customerid_account@odata.bind": f"/accounts({account.dv_id})",
                    "order_details": details}  # fmt: skip
            created = dv.post("salesorders", json=body, headers={"Prefer": "return=representation"})
            created.raise_for_status()
            if submit:
                order_id = created.json()["salesorderid"]
                dv.patch(f"salesorders({order_id})", json={"statecode": 1, "statuscode": 3},
                         headers={"If-Match": "*"}).raise_for_status()  # fmt: skip
            made.append(name)
    yield (
        f"sales orders entered in Sales by a user: {', '.join(made)}; the submitted one becomes a BC "
        "sales order with its lines, the draft does not"
    )


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
    yield (
        f"  curl -s -H 'Authorization: Bearer sales-user' "
        f"'{dv}/accounts?$select=name,bcs_bcnumber,bcs_bcurl,bcs_bccouplingstatus&$top=3'"
        "   (BC number, link, status)"
    )
    yield f"  curl -s -H 'Authorization: Bearer sales-user' '{dv}/bcs_customerstatistics?$top=3'"
    yield (
        f"  curl -s -H 'Authorization: Bearer sales-user' "
        f"'{dv}/products?$select=name,quantityonhand,bcs_quantityasof'"
    )
    yield f"  curl -s -H 'Authorization: Bearer sales-user' '{bc}/companies({company})/itemLedgerEntries'"
    yield (
        f'  curl -s -X POST -H \'Content-Type: application/json\' -d \'{{"entries": [{{"itemNumber": '
        f'"I00010", "quantity": 5}}]}}\' \'{bc.split("/v2.0/")[0]}/_sandbox/itemLedgerEntries/post\''
        "   (posts stock: quantityonhand follows at the next delta poll)"
    )
    yield f"  curl -s '{host}/api/health'"
    yield "A BC change reaches Dataverse about 2 s later (the sandbox coalesces notifications for 2 s,"
    yield "real BC for 30 s); a Dataverse change reaches BC within a second."
