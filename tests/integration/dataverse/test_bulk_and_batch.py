"""CreateMultiple / UpsertMultiple / UpdateMultiple and `$batch` with change sets.

See docs/dataverse-sandbox.md#sources.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from shared.connectors.dataverse import BatchRequest, DataverseClient
from shared.connectors.errors import NotFoundError, ValidationError

pytestmark = pytest.mark.integration


def test_create_multiple_returns_ids_in_order(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    client.bulk_chunk_size = 3
    results = client.create_multiple("accounts", [{"name": f"N{i}"} for i in range(7)])
    assert all(r.ok for r in results) and len(results) == 7
    names = {r["accountid"]: r["name"] for r in sandbox.rows("accounts")}
    assert [names[r.id] for r in results] == [f"N{i}" for i in range(7)]  # type: ignore[index]
    assert client.stats.requests["POST accounts CreateMultiple"] == 3


def test_create_multiple_is_all_or_nothing_on_the_wire(http: httpx.Client, sandbox: DataverseSandbox) -> None:
    body = {
        "Targets": [
            {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "fine"},
            {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "x" * 161},
        ]
    }
    response = http.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=body)
    assert response.status_code == 400
    assert sandbox.rows("accounts") == []
    untyped = http.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [{"name": "x"}]})
    assert untyped.status_code == 400
    assert "@odata.type" in untyped.json()["error"]["message"]


def test_client_isolates_the_failing_record_of_a_chunk(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    records = [{"name": "good 1"}, {"name": "x" * 161}, {"name": "good 2"}]
    results = client.create_multiple("accounts", records)
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, ValidationError)
    assert sorted(r["name"] for r in sandbox.rows("accounts")) == ["good 1", "good 2"]


def test_upsert_multiple_by_alternate_key_and_by_id(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    [existing] = sandbox.seed("products", [{"name": "Before", "productnumber": "K1"}])
    chosen = str(uuid.uuid4())
    results = client.upsert_multiple(
        "products",
        [
            {"@odata.id": "products(productnumber='K1')", "name": "After"},
            {"@odata.id": "products(productnumber='K2')", "name": "Created by key"},
            {"productid": chosen, "name": "Created by id"},
        ],
    )
    assert all(r.ok for r in results)
    assert results[2].id == chosen
    by_number = {r["productnumber"]: r for r in sandbox.rows("products")}
    assert by_number["K1"]["productid"] == existing and by_number["K1"]["name"] == "After"
    assert by_number["K2"]["name"] == "Created by key"
    assert sandbox.get("products", chosen)["name"] == "Created by id"  # type: ignore[index]
    again = client.upsert_multiple("products", [{"productid": chosen, "name": "Updated by id"}])
    assert again[0].ok and len(sandbox.rows("products")) == 3


def test_update_multiple_reports_missing_rows_per_item(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    [known] = sandbox.seed("accounts", [{"name": "Known"}])
    missing = str(uuid.uuid4())
    results = client.update_multiple(
        "accounts", [{"accountid": known, "name": "Changed"}, {"accountid": missing, "name": "x"}]
    )
    assert [r.ok for r in results] == [True, False]
    assert isinstance(results[1].error, NotFoundError)
    assert sandbox.get("accounts", known)["name"] == "Changed"  # type: ignore[index]
    assert sandbox.get("accounts", missing) is None


def test_batch_continue_on_error_answers_every_part(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    [known] = sandbox.seed("accounts", [{"name": "Known"}])
    responses = client.batch(
        [
            BatchRequest("GET", f"accounts({known})?$select=name"),
            BatchRequest("PATCH", f"accounts({uuid.uuid4()})", {"name": "x"}, {"If-Match": "*"}),
            BatchRequest("POST", "accounts", {"name": "Made in batch"}),
        ]
    )
    assert [r.status for r in responses] == [200, 404, 204]
    assert responses[0].body["name"] == "Known"
    assert isinstance(responses[1].error(), NotFoundError)
    assert sandbox.get("accounts", responses[2].entity_id or "")["name"] == "Made in batch"  # type: ignore[index]
    assert client.stats.requests["POST $batch"] == 1


def test_batch_stops_at_the_first_error_by_default(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    with pytest.raises(NotFoundError):
        client.batch(
            [
                BatchRequest("POST", "accounts", {"name": "first"}),
                BatchRequest("DELETE", f"accounts({uuid.uuid4()})"),
                BatchRequest("POST", "accounts", {"name": "never"}),
            ],
            continue_on_error=False,
        )
    assert [r["name"] for r in sandbox.rows("accounts")] == ["first"]


def test_change_set_is_atomic_and_resolves_content_ids(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    responses = client.batch(
        [
            BatchRequest("POST", "contacts", {"lastname": "Primary"}, content_id="1"),
            BatchRequest(
                "POST",
                "accounts",
                {"name": "With contact", "primarycontactid@odata.bind": "$1"},
                content_id="2",
            ),
            BatchRequest("PATCH", "$2", {"telephone1": "555"}),
        ],
        change_set=True,
    )
    assert [r.status for r in responses] == [204, 204, 204]
    [account] = sandbox.rows("accounts")
    [contact] = sandbox.rows("contacts")
    assert account["_primarycontactid_value"] == contact["contactid"]
    assert account["telephone1"] == "555"
    with pytest.raises(ValidationError):
        client.batch(
            [
                BatchRequest("POST", "accounts", {"name": "rolled back"}),
                BatchRequest("POST", "accounts", {"name": "x" * 161}),
            ],
            change_set=True,
        )
    assert [r["name"] for r in sandbox.rows("accounts")] == ["With contact"]


def test_batch_wire_format_and_limits(http: httpx.Client, sandbox: DataverseSandbox, base_url: str) -> None:
    body = (
        "--batch_X\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"POST {base_url}accounts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
        '{"name":"wire"}\r\n--batch_X--\r\n'
    )
    response = http.post(
        "$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=batch_X"}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert "HTTP/1.1 204 No Content" in response.text
    assert "OData-EntityId: " + base_url + "accounts(" in response.text
    too_many = (
        "".join(
            "--batch_Y\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"GET {base_url}WhoAmI HTTP/1.1\r\n\r\n\r\n"
            for _ in range(1001)
        )
        + "--batch_Y--\r\n"
    )
    refused = http.post(
        "$batch", content=too_many, headers={"Content-Type": "multipart/mixed; boundary=batch_Y"}
    )
    assert refused.status_code == 400
    assert "1000" in refused.json()["error"]["message"]
    undeclared = (
        "--batch_Z\r\nContent-Type: multipart/mixed; boundary=changeset_Z\r\n\r\n"
        "--changeset_Z\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        "Content-ID: 1\r\n\r\n"
        "PATCH $7 HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{}\r\n--changeset_Z--\r\n--batch_Z--\r\n"
    )
    answer = http.post(
        "$batch", content=undeclared, headers={"Content-Type": "multipart/mixed; boundary=batch_Z"}
    )
    assert "Content-ID Reference: '$7' does not exist in the batch context." in answer.text


def test_the_gateway_sends_many_queries_in_one_batch_whatever_their_text(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    from shared import odata
    from shared.mapping.loader import load_mapping_set
    from shared.sync.gateways import DataverseGateway

    names = ["O'Brien & Sons", "50% off #1", "plain", "a+b=c?"]
    client.create_multiple("accounts", [{"name": n} for n in [*names, "not asked"]])
    customer = load_mapping_set().entity("CUSTOMER")
    before = client.stats.total
    rows = DataverseGateway(client).query_many(
        customer, [odata.eq("name", n) for n in names], select=["name"]
    )
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert client.stats.total - before == 1  # one `$batch`
