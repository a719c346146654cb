"""The Sales-side solution: packed deterministically into a zip any zip tool opens, with well-formed
XML, declaring every `bcs_` column the service writes (derived from the mappings and the code), and
the BC web client links the service writes into it."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from devstack.dataverse.schema import build_tables
from shared.connectors.dataverse import missing_customization
from shared.connectors.errors import ValidationError
from shared.mapping.loader import load_mapping_set
from shared.mapping.lookups import StaticLookups, web_client_link
from shared.sales import statistics, stock
from shared.sales.solution import (
    ROLE_ADMINISTRATOR,
    ROLE_AVAILABILITY,
    ROLE_USER,
    SOLUTION_DIR,
    SolutionSourceError,
    declared,
    missing_columns,
    open_zip,
    pack,
    read_info,
)
from shared.sync.engine import refusal
from shared.sync.gateways import web_client_base
from shared.sync.reconcile import reconcile

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings" / "default.yaml"


def test_the_same_source_packs_to_the_same_bytes_wherever_it_is(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(SOLUTION_DIR, copy)
    assert pack() == pack() == pack(copy)
    (copy / "Other" / "Solution.xml").write_text(
        (copy / "Other" / "Solution.xml")
        .read_text()
        .replace(f"<Version>{read_info().version}<", "<Version>99.0.0.1<")
    )
    assert pack(copy) != pack()


def test_the_zip_opens_and_every_file_is_well_formed_xml() -> None:
    with zipfile.ZipFile(io.BytesIO(pack())) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["[Content_Types].xml", "customizations.xml", "solution.xml"]
        for name in archive.namelist():
            ET.fromstring(archive.read(name))  # raises on malformed XML
    info = read_info()
    assert (info.unique_name, info.publisher, info.prefix) == ("BusinessCentralSync", "bcsync", "bcs")
    assert info.zip_name() == f"BusinessCentralSync_{info.version.replace('.', '_')}.zip"


def test_a_broken_source_file_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "solution"
    shutil.copytree(SOLUTION_DIR, copy)
    broken = copy / "Entities" / "Account" / "Entity.xml"
    broken.write_text("<Entity><unclosed></Entity>")
    with pytest.raises(SolutionSourceError, match=r"Account/Entity\.xml"):
        pack(copy)


def _all_written_columns() -> set[tuple[str, str]]:
    """(table, column) the service writes to Dataverse: the mappings' fields (headers and document lines),
    their status and availability columns, the statistics rows and the stock refresh's as-of time."""
    ms = load_mapping_set(str(MAPPINGS))
    written: set[tuple[str, str]] = set()
    for m in ms.entities():
        parts = [(m.dataverse.table, m.fields)]
        if m.lines is not None:
            parts.append((m.lines.dataverse.table, m.lines.fields))
            if m.lines.availability is not None:
                written.add((m.lines.dataverse.table, m.lines.availability.column))
        for table, fields in parts:
            written |= {(table, f.dv) for f in fields if f.dv and f.writes_to("dv")}
        if m.dataverse.status_column:
            written.add((m.dataverse.table, m.dataverse.status_column))
    figures = statistics.CustomerFigures("id", "10000", "Adatum", *([0.0] * len(statistics.FIGURES)))
    row = {
        **statistics.statistics_row(figures, "acc", dt.date(2026, 1, 1)),
        **statistics.statistics_row(figures, "acc", dt.date(2026, 1, 1), by_id=True),
    }
    for key in row:
        if not key.startswith("@"):
            written.add(("bcs_customerstatistic", key.removesuffix("@odata.bind")))
    written.add((stock.AS_OF_TABLE, stock.AS_OF_COLUMN))
    return written


def _written_columns() -> set[tuple[str, str]]:
    """(table, column) the service writes to Dataverse that only the solution can add (`bcs_`)."""
    return {(t, c) for t, c in _all_written_columns() if c.startswith("bcs_") or t.startswith("bcs_")}


def test_every_column_the_service_writes_is_declared_in_the_solution() -> None:
    written = _written_columns()
    # The derivation finds what it must: a sanity check that it reads the mappings and the code.
    expected = {("account", "bcs_bcnumber"), ("account", "bcs_bcurl"), ("product", "bcs_quantityasof"),
                ("bcs_customerstatistic", "bcs_accountid"), ("contact", "bcs_bccouplingstatus"),
                ("quotedetail", "bcs_availablequantity"), ("salesorderdetail", "bcs_bclinenumber"),
                *((doc, column) for doc in ("quote", "salesorder", "invoice")
                  for column in ("bcs_bcnumber", "bcs_bcurl"))}  # fmt: skip
    assert expected <= written
    solution = declared(pack())
    assert missing_columns(solution.columns, written) == []
    assert solution.keys["bcs_customerstatistic"] == [("bcs_customerno",)]
    assert solution.forms["bcs_customerstatistic"] == ["quick"] and solution.forms["account"] == ["main"]


def test_a_salesperson_sees_every_bcs_column_on_a_form_of_its_table() -> None:
    """The number, link, coupling status and as-of time are on a main form of their table, the statistics
    on the quick view the account's form shows: the service writes nothing a salesperson cannot see."""
    _, root = open_zip(pack())
    on_forms: dict[str, set[str]] = {}
    for entity in root.iterfind("Entities/Entity"):
        table = str(entity.findtext("Name") or "").lower()
        for forms in entity.iterfind("FormXml/forms"):
            fields = {str(c.get("datafieldname")) for c in forms.iter("control") if c.get("datafieldname")}
            on_forms.setdefault(table, set()).update(fields)
    # Document lines show theirs in the document's product grid, not on a form of their own; the statistics
    # row's id, name and account are what the quick view is found by, not figures to show.
    not_on_forms = {"quotedetail", "salesorderdetail"}
    keys = {("bcs_customerstatistic", c) for c in ("bcs_customerstatisticid", "bcs_name", "bcs_accountid")}
    hidden = sorted(
        f"{t}.{c}"
        for t, c in _written_columns() - keys
        if t not in not_on_forms and c not in on_forms.get(t, set())
    )
    assert hidden == []
    assert {"bcs_bcnumber", "bcs_bcurl", "bcs_bccouplingstatus"} <= on_forms["contact"]


def test_every_other_column_the_service_writes_is_a_standard_one() -> None:
    """What the solution does not declare must be a column of the standard tables (as the Dataverse
    sandbox models them before any import): a column only some other solution adds (BC's own
    integration solution has `bcbi_businesscentralordernumber` on orders) would make every write fail."""
    standard = {t.logical_name: set(t.columns) for t in build_tables().values()}
    declared_columns = declared(pack()).columns
    unknown = sorted(
        f"{table}.{column}"
        for table, column in _all_written_columns()
        if column not in declared_columns.get(table, set())
        and not ({column, f"_{column}_value"} & standard.get(table, set()))
    )
    assert unknown == []


def test_missing_columns_names_what_is_not_declared() -> None:
    assert missing_columns(
        {"account": {"bcs_bcnumber"}}, [("account", "bcs_x"), ("account", "bcs_bcnumber")]
    ) == ["account.bcs_x"]


# Dataverse names a table's privileges after its original schema name; a sales order's are `Order`, and a
# document's lines (quote, order and invoice products) are checked against their document's privileges
# (updating a quote product needs prvWriteQuote; https://learn.microsoft.com/previous-versions/dynamicscrm-2016/
# developers-guide/gg328477(v=crm.8) lists the SalesOrder (order) entity privileges).
PRIVILEGE_TABLES = {
    "account": "Account", "contact": "Contact", "product": "Product", "opportunity": "Opportunity",
    "transactioncurrency": "TransactionCurrency", "uomschedule": "UoMSchedule", "uom": "UoM",
    "productpricelevel": "ProductPriceLevel", "bcs_customerstatistic": "bcs_CustomerStatistic",
    "quote": "Quote", "quotedetail": "Quote", "salesorder": "Order", "salesorderdetail": "Order",
    "invoice": "Invoice", "invoicedetail": "Invoice",
}  # fmt: skip


def _needed_by_the_service() -> tuple[set[str], set[str]]:
    """(privileges the service needs, the tables it deletes from), derived from the mappings."""
    ms = load_mapping_set(str(MAPPINGS))
    needed = {f"prvRead{t}" for t in ("User", "BusinessUnit", "Organization")}  # owners, set-up's checks
    needed |= {f"prv{v}PriceLevel" for v in ("Read", "Write", "Create")}  # set-up creates the price list
    needed |= {f"prv{v}bcs_CustomerStatistic" for v in ("Read", "Write", "Create", "Delete")}  # statistics
    deletes = {"bcs_CustomerStatistic"}
    for m in ms.entities():
        if not m.writes_to("dv"):
            continue
        tables = [m.dataverse.table, *([m.lines.dataverse.table] if m.lines else [])]
        for table in tables:
            name = PRIVILEGE_TABLES[table]
            needed |= {f"prvRead{name}", f"prvWrite{name}", f"prvAppend{name}"}
            if m.creates_on("dv") or table != m.dataverse.table:  # lines come and go with their document
                needed.add(f"prvCreate{name}")
            if m.owner is not None:
                needed.add(f"prvAssign{name}")
        if m.deletion == "propagate":
            deletes.add(PRIVILEGE_TABLES[m.dataverse.table])
        if m.lines is not None and m.line_mapping().writes_to("dv"):
            deletes.add(PRIVILEGE_TABLES[m.lines.dataverse.table])  # a line removed in BC
    return needed | {f"prvDelete{t}" for t in deletes}, deletes


def test_the_roles_hold_exactly_what_each_needs() -> None:
    roles = declared(pack()).roles
    user, availability, admin = roles[ROLE_USER], roles[ROLE_AVAILABILITY], roles[ROLE_ADMINISTRATOR]
    assert all(p.startswith("prvRead") for p in user | availability)  # readers only
    assert "prvReadbcs_CustomerStatistic" in user and "prvReadProduct" in availability
    assert "prvReadbcs_CustomerStatistic" not in availability  # availability is not statistics
    # Integration User reads everything the service synchronizes.
    ms = load_mapping_set(str(MAPPINGS))
    synced = {PRIVILEGE_TABLES[m.dataverse.table] for m in ms.entities() if m.writes_to("dv")}
    assert {f"prvRead{t}" for t in synced} <= user
    # The service (Integration Administrator) holds what it writes, and deletes only where it deletes:
    # statistics, price list items of items that leave BC's scope, the lines of documents.
    needed, deletes = _needed_by_the_service()
    assert needed - admin == set()
    assert {p for p in admin if p.startswith("prvDelete")} == {f"prvDelete{t}" for t in deletes}
    assert deletes == {"bcs_CustomerStatistic", "ProductPriceLevel", "Quote", "Order", "Invoice"}


@pytest.mark.parametrize(
    ("api_url", "web_client"),
    [
        (
            "https://api.businesscentral.dynamics.com/v2.0/contoso-tenant/Production/api/v2.0",
            "https://businesscentral.dynamics.com/contoso-tenant/Production/",
        ),
        (
            "http://127.0.0.1:7082/v2.0/contoso/production/api/v2.0",
            "http://127.0.0.1:7082/contoso/production/",
        ),
        ("https://bc.contoso.local:7048/BC/api/v2.0", None),  # on-premises: BC_WEB_CLIENT_URL
    ],
)
def test_the_web_client_is_derived_from_the_api_url(api_url: str, web_client: str | None) -> None:
    assert web_client_base(api_url) == web_client


def test_a_link_opens_the_card_filtered_on_the_number() -> None:
    base = "https://businesscentral.dynamics.com/t/Production/?company=CRONUS%20USA%2C%20Inc."
    assert web_client_link(base, 21, "C'10") == f"{base}&page=21&filter='No.'%20IS%20'C''10'"


def test_reconcile_writes_the_number_and_the_link_to_dataverse() -> None:
    ms = load_mapping_set(str(MAPPINGS))
    item = ms.entity("ITEM-PRODUCT")
    bc = {"id": "11111111-1111-1111-1111-111111111111", "number": "1896-S", "displayName": "Athens Desk",
          "unitPrice": 1000, "unitCost": 780, "inventory": 3, "baseUnitOfMeasureCode": None, "blocked": False,
          "lastModifiedDateTime": "2024-01-01T00:00:00Z"}  # fmt: skip
    lookups = StaticLookups(web_client="https://businesscentral.dynamics.com/t/e/?company=CRONUS")
    plan = reconcile(ms, item, snapshot=None, bc=bc, dv=None, lookups=lookups)
    assert plan.dv_write is not None
    body = plan.dv_write.body
    assert body["bcs_bcnumber"] == "1896-S"
    assert body["bcs_bcurl"] == f"{lookups.web_client}&page=30&filter='No.'%20IS%20'1896-S'"
    without = reconcile(ms, item, snapshot=None, bc=bc, dv=None, lookups=StaticLookups())
    assert without.dv_write is not None and without.dv_write.body.get("bcs_bcurl") is None


@pytest.mark.parametrize(
    ("status", "message", "missing"),
    [
        (400, "Could not find a property named 'bcs_bcnumber' on type 'Microsoft.Dynamics.CRM.account'.",
         "bcs_bcnumber"),
        (404, "Resource not found for the segment 'bcs_customerstatistics'.", "bcs_customerstatistics"),
        (400, "The property 'bcs_bcurl' does not exist on type 'Microsoft.Dynamics.CRM.product'.",
         "bcs_bcurl"),
        (400, "Could not find a property named 'websiteurl2' on type 'Microsoft.Dynamics.CRM.account'.",
         None),
        (403, "Principal user is missing prvReadbcs_CustomerStatistic privilege 'bcs_x'", None),
    ],
)  # fmt: skip
def test_a_service_never_set_up_says_to_run_setup(status: int, message: str, missing: str | None) -> None:
    exc = ValidationError(
        message, status=status, code="0x80060888", service="dataverse", method="GET", url="https://x/accounts"
    )
    assert missing_customization(exc) == missing
    said = refusal(exc)
    assert said.startswith(f"Dataverse refused GET accounts ({status} 0x80060888): {message}")
    if missing:
        assert f"adds {missing}, is not installed" in said and "`bcsync setup`" in said
        assert "docs/sales-solution.md" in said
    else:
        assert "bcsync setup" not in said
