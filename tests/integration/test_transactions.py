"""`shared.store.transactions`: entity group transactions written by our serializer, against Azurite,
read back through the SDK; and the same answers as `TableClient.submit_transaction` where they fail."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.store.transactions import submit_transaction

pytestmark = pytest.mark.integration


@pytest.fixture
def table(storage_connection_string: str) -> TableClient:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    return service.create_table_if_not_exists(f"tx{uuid.uuid4().hex[:12]}")


def test_creates_and_upserts_are_stored_with_their_types_and_etags(table: TableClient) -> None:
    at = dt.datetime(2026, 12, 2, 8, 30, 15, 123456, tzinfo=dt.UTC)
    # Keys as the stores make them: `|` and `:` separators, a quote, non-ASCII text.
    rows = [
        {"PartitionKey": "rec|c1:CUSTOMER", "RowKey": "dv|O'Brien|1", "Name": "Zoë «Ø»", "N": 7,
         "Big": 2**40, "F": 2.5, "Yes": True, "At": at, "Id": uuid.UUID(int=5), "Raw": b"\x00\x01",
         "Nothing": None},
        {"PartitionKey": "rec|c1:CUSTOMER", "RowKey": "bc|2", "Name": "second"},
    ]  # fmt: skip
    answers = submit_transaction(table, [("create", rows[0]), ("upsert", rows[1])])

    stored = {e["RowKey"]: e for e in table.query_entities("PartitionKey eq 'rec|c1:CUSTOMER'")}
    first = stored["dv|O'Brien|1"]
    assert (first["Name"], first["N"], first["F"], first["Yes"]) == ("Zoë «Ø»", 7, 2.5, True)
    assert first["Big"].value == 2**40 and first["Id"] == uuid.UUID(int=5) and first["Raw"] == b"\x00\x01"
    assert first["At"] == at and "Nothing" not in first
    assert [a["etag"] for a in answers] == [
        stored["dv|O'Brien|1"].metadata["etag"],
        stored["bc|2"].metadata["etag"],
    ]


def test_a_conditional_replace_and_a_merge(table: TableClient) -> None:
    submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": k, "A": 1, "B": 1}) for k in "xy"])
    x = table.get_entity("p", "x")
    ops = [
        ("update", {"PartitionKey": "p", "RowKey": "x", "A": 2},
         {"mode": UpdateMode.REPLACE, "etag": x.metadata["etag"],
          "match_condition": MatchConditions.IfNotModified}),
        ("upsert", {"PartitionKey": "p", "RowKey": "y", "A": 3}),  # merge: B stays
    ]  # fmt: skip
    submit_transaction(table, ops)
    assert dict(table.get_entity("p", "x")) == {"PartitionKey": "p", "RowKey": "x", "A": 2}
    assert dict(table.get_entity("p", "y")) == {"PartitionKey": "p", "RowKey": "y", "A": 3, "B": 1}

    # The same ETag again: refused, as the SDK refuses it, naming the operation; nothing written.
    stale = [ops[1], ops[0]]
    with pytest.raises(TableTransactionError) as ours:
        submit_transaction(table, stale)
    with pytest.raises(TableTransactionError) as sdk:
        table.submit_transaction(stale)  # type: ignore[arg-type]
    assert (ours.value.index, ours.value.error_code) == (sdk.value.index, sdk.value.error_code) == (
        1, "UpdateConditionNotSatisfied"
    )  # fmt: skip


def test_an_existing_row_fails_the_whole_transaction(table: TableClient) -> None:
    submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": "a"})])
    with pytest.raises(TableTransactionError) as refused:
        submit_transaction(
            table,
            [
                ("create", {"PartitionKey": "p", "RowKey": "b"}),
                ("create", {"PartitionKey": "p", "RowKey": "a"}),
            ],
        )
    assert refused.value.error_code == "EntityAlreadyExists" and refused.value.index == 1
    assert [e["RowKey"] for e in table.list_entities()] == ["a"]


def test_what_it_does_not_serialize_goes_through_the_sdk(table: TableClient) -> None:
    typed = {"PartitionKey": "p", "RowKey": "t", "Count": (5, "Edm.Int64")}
    [answer] = submit_transaction(table, [("create", typed)])
    assert table.get_entity("p", "t")["Count"].value == 5 and answer["etag"]


def test_a_missing_table_is_not_found(storage_connection_string: str) -> None:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    gone = service.get_table_client(f"none{uuid.uuid4().hex[:10]}")
    with pytest.raises((ResourceNotFoundError, TableTransactionError)):
        submit_transaction(gone, [("create", {"PartitionKey": "p", "RowKey": "a"})])
