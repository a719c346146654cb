"""`bc-cli` (PyPI, module `bcli`), a third-party SDK of the BC API, against the BC sandbox, unpatched.

Its base URL is fixed to `https://api.businesscentral.dynamics.com/v2.0/<environment>/api/v2.0`; it
reaches the sandbox through the loopback proxy and certificate of `conftest.tls_bc`, set only through
httpx's documented environment variables. Authentication uses the SDK's documented `auth=` parameter
with its `StaticTokenAuth` (a token the caller already holds), so no identity provider is involved.
The calls are the ones its README shows: listing, queries with filter/select/expand/orderby/top/count,
paging over nextLink, create/update/delete, documents with their lines (deep insert, `$expand`, lines by
document), bound actions (`salesOrders(<id>)/Microsoft.NAV.shipAndInvoice`), and its dlt source's
incremental extraction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import dlt
import duckdb
import pytest
from bcli import AsyncBCClient
from bcli.auth._static import StaticTokenAuth
from bcli.errors import BCLIError
from bcli.etl import EntityDef, business_central
from bcli.etl import StaticTokenAuth as EtlTokenAuth

from devstack.bc import DEFAULT_COMPANY_ID
from tests.conformance.third_party.conftest import BC_HOST, TlsBc

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    return asyncio.run(awaitable)  # type: ignore[arg-type]


def client() -> AsyncBCClient:
    return AsyncBCClient(
        tenant_id="contoso",
        environment="production",
        company_id=DEFAULT_COMPANY_ID,
        auth=StaticTokenAuth("integration-user"),
    )


@pytest.fixture
def bc(tls_bc: TlsBc) -> TlsBc:
    tls_bc.sandbox.reset()
    return tls_bc


def test_companies_and_queries(bc: TlsBc) -> None:
    async def go() -> dict[str, Any]:
        async with client() as c:
            companies = await c.list_companies()
            filtered = await c.query("customers").filter("number eq 'C00010'").select("number", "city").get()
            ordered = await c.query("customers").orderby("number desc").top(1).get()
            expanded = (
                await c.query("customers")
                .expand("customerFinancialDetail", "contactsInformation")
                .top(1)
                .get()
            )
            quoted = await c.query("customers").filter("displayName eq 'O''Neil'").get()
            return {
                "companies": companies,
                "filtered": filtered,
                "ordered": ordered,
                "expanded": expanded,
                "quoted": quoted,
            }

    result = run(go())
    assert DEFAULT_COMPANY_ID in {company["id"] for company in result["companies"]}
    assert [{k: v for k, v in r.items() if not k.startswith("@")} for r in result["filtered"]] == [
        {
            "number": "C00010",
            "city": bc.sandbox.store.find_by_key(DEFAULT_COMPANY_ID, "customers", "C00010")["city"],
        }  # type: ignore[index]
    ]
    assert result["ordered"][0]["number"] == "C00020"
    first = result["expanded"][0]
    assert first["customerFinancialDetail"]["number"] == first["number"]
    assert first["contactsInformation"][0]["relatedId"] == first["id"]
    assert result["quoted"] == []
    assert set(bc.proxy.tunnelled) == {BC_HOST} and not bc.proxy.refused


def test_paging_follows_next_links(bc: TlsBc) -> None:
    bc.sandbox.seed_customers(250)
    bc.sandbox.set_limits(max_page_size=100)

    async def go() -> list[int]:
        async with client() as c:
            return [len(page) async for page in await c.query("customers").pages()]

    assert run(go()) == [100, 100, 52]


def test_create_update_delete(bc: TlsBc) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with client() as c:
            created = await c.post("customers", body={"displayName": "bcli Customer", "city": "Lyon"})
            updated = await c.patch(
                "customers", created["id"], body={"city": "Paris"}, etag=created["@odata.etag"]
            )
            await c.delete("customers", created["id"], etag=updated["@odata.etag"])
            left = await c.query("customers").filter(f"id eq {created['id']}").get()
            return created, updated, left

    created, updated, left = run(go())
    assert created["number"].startswith("C") and created["city"] == "Lyon"
    assert updated["city"] == "Paris" and updated["@odata.etag"] != created["@odata.etag"]
    assert left == []


def test_documents_with_lines_counts_and_a_bound_action(bc: TlsBc) -> None:
    """A sales order POSTed with its 50 lines (deep insert) in one request, read back with `$expand` and
    by `documentId`; the line set without a document refused with BC's message; `$count=true`;
    `shipAndInvoice` answered 204 and the posted invoice found by its order number."""

    async def go() -> dict[str, Any]:
        async with client() as c:
            body = {
                "customerNumber": "C00010",
                "externalDocumentNumber": "BCLI-50",
                "shipToName": "Warehouse 7",
                "shipToAddressLine1": "1 Quay Street",
                "salesOrderLines": [
                    {"lineType": "Item", "lineObjectNumber": "I00010", "quantity": 1 + k % 3, "unitPrice": 10}
                    for k in range(50)
                ],
            }
            before = bc.sandbox.counters.snapshot()["requests"].get("POST salesOrders", 0)
            created = await c.post("salesOrders", body=body)
            posts = bc.sandbox.counters.snapshot()["requests"].get("POST salesOrders", 0) - before
            one = f"id eq {created['id']}"
            expanded = await c.query("salesOrders").filter(one).expand("salesOrderLines").get()
            by_document = await c.query("salesOrderLines").filter(f"documentId eq {created['id']}").get()
            try:
                await c.query("salesOrderLines").get()
                refused = ""
            except BCLIError as exc:
                refused = f"{exc.status_code} {exc.bc_message}"
            ours = "externalDocumentNumber eq 'BCLI-50'"
            counted = await c.query("salesOrders").filter(ours).count().execute()
            shipped = await c.post(f"salesOrders({created['id']})/Microsoft.NAV.shipAndInvoice", body={})
            invoices = await c.query("salesInvoices").filter(f"orderNumber eq '{created['number']}'").get()
            left = await c.query("salesOrders").filter(one).get()
            return {
                "created": created, "posts": posts, "expanded": expanded, "by_document": by_document,
                "refused": refused, "count": counted.count, "shipped": shipped, "invoices": invoices,
                "left": left,
            }  # fmt: skip

    result = run(go())
    created = result["created"]
    assert result["posts"] == 1
    assert created["number"].startswith("S-ORD") and created["shipToName"] == "Warehouse 7"
    assert created["totalAmountIncludingTax"] == sum(10 * (1 + k % 3) for k in range(50))
    [order] = result["expanded"]
    assert [line["sequence"] for line in order["salesOrderLines"]] == [10000 * (k + 1) for k in range(50)]
    assert {line["id"] for line in result["by_document"]} == {line["id"] for line in order["salesOrderLines"]}
    assert result["refused"].startswith("400 You must specify an Id or a Document Id to get the lines.")
    assert result["count"] == 1
    assert result["shipped"] == {}  # 204, no content
    assert [i["totalAmountIncludingTax"] for i in result["invoices"]] == [created["totalAmountIncludingTax"]]
    assert result["left"] == []  # the fully posted order is deleted, as Sales-Post does


def test_incremental_extraction_by_last_modified(bc: TlsBc, tmp_path: Path) -> None:
    """bcli's dlt source with `cursor_field="lastModifiedDateTime"` (API v2.0 pages have no
    systemModifiedAt): the second run loads only what changed since the first."""
    entities = [EntityDef(name="customers", primary_key="id", cursor_field="lastModifiedDateTime")]
    database = tmp_path / "bc.duckdb"

    def sync() -> None:
        pipeline = dlt.pipeline(
            pipeline_name="bc_conformance",
            pipelines_dir=str(tmp_path / "pipelines"),
            destination=dlt.destinations.duckdb(str(database)),
            dataset_name="bc_raw",
        )

        async def token() -> str:
            return "integration-user"

        source = business_central(
            auth=EtlTokenAuth(token),  # the ETL layer's own documented provider (a token callback)
            environment="production",
            entities=entities,
            multi_company=True,
        )
        pipeline.run(source)

    sync()
    first = _loaded(database)
    assert {row[0] for row in first} >= {"C00010", "C00020"}
    changed_id = bc.sandbox.store.find_by_key(DEFAULT_COMPANY_ID, "customers", "C00010")["id"]  # type: ignore[index]
    bc.sandbox.change("customers", changed_id, {"city": "Changed City"})
    sync()
    second = _loaded(database)
    assert ("C00010", "Changed City") in {(number, city) for number, city, _ in second}
    assert len(second) == len(first)  # merged on the primary key, not appended
    assert len({load_id for *_, load_id in second}) == 2  # only the changed row came with the second load


def _loaded(database: Path) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(database)) as connection:
        return [
            (row[0], row[1], row[2])
            for row in connection.execute(
                "select number, city, _dlt_load_id from bc_raw.customers order by number"
            ).fetchall()
        ]
