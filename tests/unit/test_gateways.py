"""The adapters own their wire format: a new document line is attached to its document by the gateway
of its side (BC: the lines' parent field; Dataverse: `@odata.bind` to the header, with the line's
deterministic id), and records are read by many ids in the side's own way (BC: `id eq ... or ...`
filters cut to the URL budget), so the engine hands over ids and no side-specific body or URL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import odata
from shared.connectors.business_central import BatchOperation, BatchResult
from shared.connectors.dataverse import BatchRequest, BatchResponse
from shared.mapping import load_mapping_set
from shared.sync.gateways import BusinessCentralGateway, DataverseGateway, LineWrite

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = load_mapping_set(ROOT / "mappings" / "default.yaml")
ORDERS = next(m for m in MAPPINGS.entities() if m.lines is not None)
COMPANY = "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c"


class _BcClient:
    base_url = "https://api.businesscentral.dynamics.com/v2.0/tenant/production/api/v2.0"

    def __init__(self) -> None:
        self.sent: list[BatchOperation] = []
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def batch(
        self, company_id: str, operations: Sequence[BatchOperation], *, atomic: bool = False
    ) -> list[Any]:
        assert company_id == COMPANY and atomic
        self.sent += operations
        return [BatchResult(201, {"id": "new"}, None) for _ in operations]

    def query_many(
        self, company_id: str, entity_set: str, filters: Sequence[str], *, select: Sequence[str]
    ) -> list[dict[str, Any]]:
        self.queries.append((entity_set, {"filters": list(filters), "select": select}))
        return [{"id": i} for f in filters for i in re.findall(r"id eq ([0-9a-f-]{36})", f)]


class _DvClient:
    def __init__(self) -> None:
        self.sent: list[BatchRequest] = []

    def batch(self, requests: Sequence[BatchRequest], **options: Any) -> list[BatchResponse]:
        assert options == {"continue_on_error": False, "change_set": True}
        self.sent += requests
        return [BatchResponse(204, {}, None) for _ in requests]


def test_a_new_bc_line_gets_its_documents_id_in_the_parent_field() -> None:
    assert ORDERS.lines is not None
    client = _BcClient()
    gateway = BusinessCentralGateway(client, COMPANY)  # type: ignore[arg-type]
    current = {"id": "l1", "@odata.etag": 'W/"1"', "quantity": 1}
    gateway.write_lines(
        ORDERS,
        [
            LineWrite("create", None, {"quantity": 2}, parent_id="doc-1"),
            LineWrite("update", current, {"quantity": 3}, parent_id=None),
        ],
    )
    create, update = client.sent
    assert (create.method, create.entity_set, create.body) == (
        "POST",
        ORDERS.lines.bc.entity_set,
        {"quantity": 2, ORDERS.lines.bc.parent_field: "doc-1"},
    )
    assert (update.method, update.record_id, update.body, update.etag) == (
        "PATCH",
        "l1",
        {"quantity": 3},
        'W/"1"',
    )


def test_a_new_dataverse_line_is_bound_to_its_header_under_its_deterministic_id() -> None:
    assert ORDERS.lines is not None
    lines = ORDERS.lines.dataverse
    client = _DvClient()
    gateway = DataverseGateway(client)  # type: ignore[arg-type]
    body = {lines.primary_key: "stale", "quantity": 2}  # the id is the write's own, not the body's
    gateway.write_lines(ORDERS, [LineWrite("create", None, body, record_id="line-1", parent_id="doc-1")])
    [create] = client.sent
    assert (create.method, create.url) == ("POST", lines.entity_set)
    assert create.body == {
        lines.primary_key: "line-1",
        "quantity": 2,
        f"{lines.parent}@odata.bind": f"/{ORDERS.dataverse.entity_set}(doc-1)",
    }


def test_bc_records_are_read_by_id_in_filters_cut_to_the_url_budget_sent_in_one_batch() -> None:
    client = _BcClient()
    gateway = BusinessCentralGateway(client, COMPANY)  # type: ignore[arg-type]
    ids = [str(uuid.uuid4()) for _ in range(100)]
    customers = MAPPINGS.entity("CUSTOMER")

    found = gateway.read_many(customers, ids, select=["id", "number"])

    assert [r["id"] for r in found] == ids
    # One `$batch` of 3-5 queries (about 30 ids each, within the URL budget).
    [(entity_set, options)] = client.queries
    assert entity_set == "customers" and options["select"] == ["id", "number"]
    assert 3 <= len(options["filters"]) <= 5
    assert all(len(f) <= odata.URL_FILTER_CHARS for f in options["filters"])
