"""`parse_resource`: notification resources, including hostile ones."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.connectors.business_central import (
    WEBHOOK_SUPPORTED_ENTITY_SETS,
    ResourceRef,
    ResourceRejected,
    parse_resource,
)

COMPANY = "b18aed47-c385-49d2-b954-dbdf8ad71780"
OTHER = "7dbba574-5f69-4167-a43e-fb975045de15"
RECORD = "26814998-936a-401c-81c1-0e848a64971d"
SETS = {"customers", "items", "salesInvoices"}


def parse(resource: str) -> ResourceRef:
    return parse_resource(resource, company_ids=[COMPANY.upper()], entity_sets=SETS)


@pytest.mark.parametrize("prefix", ["", "/"])
def test_record_resources_with_or_without_the_leading_slash(prefix: str) -> None:
    ref = parse(f"{prefix}api/v2.0/companies({COMPANY})/items({RECORD.upper()})")
    assert ref == ResourceRef(COMPANY, "items", RECORD, None)


def test_collection_resource_of_the_documented_sample_is_rebuilt_with_the_real_property() -> None:
    query = "$filter=lastDateTimeModified%20gt%202018-10-15T11:00:00Z"
    sample = f"/api/v2.0/companies({COMPANY})/salesInvoices?{query}"
    ref = parse(sample)
    assert ref.record_id is None and ref.entity_set == "salesInvoices"
    assert ref.filter == "lastModifiedDateTime gt 2018-10-15T11:00:00Z"
    assert ref.modified_after == dt.datetime(2018, 10, 15, 11, tzinfo=dt.UTC)
    ours = parse(
        f"api/v2.0/companies({COMPANY})/customers?$filter=lastModifiedDateTime gt 2026-11-27T12:00:00.123Z"
    )
    assert ours.filter == "lastModifiedDateTime gt 2026-11-27T12:00:00.123Z"


@pytest.mark.parametrize("prefix", ["", "/"])
def test_the_bare_collection_bc_sends_when_a_change_in_it_is_a_delete(prefix: str) -> None:
    ref = parse(f"{prefix}api/v2.0/companies({COMPANY})/customers")
    assert ref == ResourceRef(COMPANY, "customers", None, None, None)


@pytest.mark.parametrize(
    "resource",
    [
        f"https://evil.example/api/v2.0/companies({COMPANY})/items({RECORD})",
        f"//evil.example/api/v2.0/companies({COMPANY})/items({RECORD})",
        f"http://127.0.0.1:8080/api/v2.0/companies({COMPANY})/items({RECORD})",
        f"api/v2.0/companies({OTHER})/items({RECORD})",
        f"api/v2.0/companies({COMPANY})/contacts({RECORD})",
        f"api/v2.0/companies({COMPANY})/items({RECORD})/../../../admin",
        f"api/v2.0/companies({COMPANY})/../companies({OTHER})/items({RECORD})",
        f"api/v2.0/companies({COMPANY})/items%2F..%2F({RECORD})",
        f"api/v2.0/companies({COMPANY})/items({RECORD})?$expand=all",
        f"api/v2.0/companies({COMPANY})/items?$filter=number eq '1' or 1 eq 1",
        f"api/v2.0/companies({COMPANY})/items?$filter=lastModifiedDateTime gt 2026-01-01T00:00:00Z and true",
        f"api/v2.0/companies({COMPANY})/items({RECORD}) ",
        f"api/v2.0/companies({COMPANY})/items(not-a-guid)",
        f"//api/v2.0/companies({COMPANY})/items({RECORD})",
        f"api/v1.0/companies({COMPANY})/items({RECORD})",
        f"api\\v2.0/companies({COMPANY})/items({RECORD})",
        "",
        "x" * 5000,
    ],
)
def test_hostile_or_foreign_resources_are_rejected(resource: str) -> None:
    with pytest.raises(ResourceRejected):
        parse(resource)


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(ResourceRejected):
        parse_resource(None, company_ids=[COMPANY], entity_sets=SETS)  # type: ignore[arg-type]


def test_webhook_supported_sets_follow_the_reference() -> None:
    assert {"customers", "items", "vendors", "salesOrders", "currencies"} <= WEBHOOK_SUPPORTED_ENTITY_SETS
    assert not {"contacts", "salespeoplePurchasers"} & WEBHOOK_SUPPORTED_ENTITY_SETS
    assert len(WEBHOOK_SUPPORTED_ENTITY_SETS) == 22
