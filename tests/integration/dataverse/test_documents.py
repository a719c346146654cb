"""Sales documents in the Dataverse sandbox: deep insert of a document with its details, amounts and
totals Dataverse computes from the details, the details read with their document in one request,
and a unit group created with its base unit."""

from __future__ import annotations

import httpx
import pytest

from devstack.dataverse import DataverseSandbox
from shared.connectors.dataverse import DataverseClient

pytestmark = pytest.mark.integration


def _order(client: DataverseClient, sandbox: DataverseSandbox) -> dict:
    [account] = sandbox.seed("accounts", [{"name": "Fabrikam"}])
    body = {
        "name": "Desks",
        "customerid_account@odata.bind": f"/accounts({account})",
        "order_details": [
            {"productdescription": "Desk", "quantity": 2, "priceperunit": 100.0, "ispriceoverridden": True},
            {"productdescription": "Chair", "quantity": 4, "priceperunit": 25.5, "manualdiscountamount": 2},
        ],
    }
    return client.create("salesorders", body, select=["salesorderid", "totalamount"])


def test_deep_insert_creates_the_details_and_dataverse_computes_amounts_and_totals(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    requests = client.stats.total
    order = _order(client, sandbox)
    assert client.stats.total - requests == 1
    assert order["totalamount"] == 200 + 102 - 2
    read = client.get(
        "salesorders", order["salesorderid"], ["totalamount", "totallineitemamount"],
        expand="order_details($select=quantity,baseamount,extendedamount)",
    )  # fmt: skip
    assert read is not None
    details = sorted(read["order_details"], key=lambda d: d["quantity"])
    assert [(d["baseamount"], d["extendedamount"]) for d in details] == [(200, 200), (102, 100)]
    assert read["totallineitemamount"] == 300


def test_a_detail_change_or_removal_recalculates_its_document(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    order = _order(client, sandbox)
    read = client.get("salesorders", order["salesorderid"], expand="order_details($select=quantity)")
    assert read is not None
    first, second = sorted(read["order_details"], key=lambda d: d["quantity"])
    client.update("salesorderdetails", first["salesorderdetailid"], {"quantity": 3}, etag="*")
    assert client.get("salesorders", order["salesorderid"], ["totalamount"])["totalamount"] == 400  # type: ignore[index]
    client.delete("salesorderdetails", second["salesorderdetailid"])
    assert client.get("salesorders", order["salesorderid"], ["totalamount"])["totalamount"] == 300  # type: ignore[index]
    # Totals are Dataverse's: a value written for them is recomputed, never stored.
    client.update("salesorders", order["salesorderid"], {"totalamount": 1}, etag="*")
    assert client.get("salesorders", order["salesorderid"], ["totalamount"])["totalamount"] == 300  # type: ignore[index]


def test_a_unit_group_is_created_with_its_base_unit(client: DataverseClient) -> None:
    group = client.create("uomschedules", {"name": "BOX", "baseuomname": "BOX"}, select=["uomscheduleid"])
    units = list(
        client.query("uoms", select=["name", "quantity", "isschedulebaseuom"],
                     filter=f"_uomscheduleid_value eq {group['uomscheduleid']}")
    )  # fmt: skip
    assert [(u["name"], u["quantity"], u["isschedulebaseuom"]) for u in units] == [("BOX", 1, True)]


def _opportunity(client: DataverseClient, sandbox: DataverseSandbox) -> dict:
    [account] = sandbox.seed("accounts", [{"name": "Opportune"}])
    body = {"name": "Tables", "estimatedvalue": 900, "parentaccountid@odata.bind": f"/accounts({account})"}
    return client.create("opportunities", body, select=["opportunityid", "statecode", "statuscode"])


def test_an_opportunity_is_won_or_lost_only_through_its_actions(
    client: DataverseClient, sandbox: DataverseSandbox, http: httpx.Client
) -> None:
    opp = _opportunity(client, sandbox)
    assert (opp["statecode"], opp["statuscode"]) == (0, 1)  # Open, In Progress
    refused = http.patch(
        f"opportunities({opp['opportunityid']})", json={"statecode": 1}, headers={"If-Match": "*"}
    )
    assert refused.status_code == 400 and "WinOpportunity" in refused.json()["error"]["message"]

    close = {"subject": "Won", "opportunityid@odata.bind": f"/opportunities({opp['opportunityid']})"}
    wrong = http.post("WinOpportunity", json={"Status": 4, "OpportunityClose": close})
    assert wrong.status_code == 400 and "not a valid status code" in wrong.json()["error"]["message"]
    won = http.post("WinOpportunity", json={"Status": 3, "OpportunityClose": close})
    assert won.status_code == 204, won.text
    read = client.get("opportunities", opp["opportunityid"], ["statecode", "statuscode", "actualvalue"])
    assert read is not None and (read["statecode"], read["statuscode"], read["actualvalue"]) == (1, 3, 900)
    again = http.post("LoseOpportunity", json={"Status": 4, "OpportunityClose": close})
    assert again.status_code == 400 and "already closed" in again.json()["error"]["message"]

    other = _opportunity(client, sandbox)
    lost = http.post(
        "Microsoft.Dynamics.CRM.LoseOpportunity",
        json={
            "Status": 5,
            "OpportunityClose": {"opportunityid@odata.bind": f"/opportunities({other['opportunityid']})"},
        },
    )
    assert lost.status_code == 204, lost.text
    read = client.get("opportunities", other["opportunityid"], ["statecode", "statuscode"])
    assert read is not None and (read["statecode"], read["statuscode"]) == (2, 5)  # Lost, Out-Sold


def test_price_list_items_have_no_multiple_messages_so_the_client_batches_them(
    client: DataverseClient, sandbox: DataverseSandbox, http: httpx.Client
) -> None:
    from devstack.dataverse import config

    [product] = sandbox.seed("products", [{"name": "Desk", "productnumber": "D-1"}])
    item = {
        "productpricelevelid": "5b0c1a9e-0000-4000-8000-000000000001",
        "pricelevelid@odata.bind": f"/pricelevels({config.DEFAULT_PRICE_LEVEL_ID})",
        "productid@odata.bind": f"/products({product})",
        "uomid@odata.bind": f"/uoms({config.PRIMARY_UNIT_ID})",
        "amount": 120,
    }
    refused = http.post(
        "productpricelevels/Microsoft.Dynamics.CRM.UpsertMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.productpricelevel", **item}]},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "The 'UpsertMultiple' method does not support entities of type 'productpricelevel'."
    )
    before = dict(client.stats.requests)
    [result] = client.upsert_multiple("productpricelevels", [item])
    assert result.ok, result.error
    spent = {k: v - before.get(k, 0) for k, v in client.stats.requests.items() if v != before.get(k, 0)}
    assert spent == {"POST $batch": 1}, spent
    read = client.get(
        "productpricelevels", item["productpricelevelid"], ["amount", "_transactioncurrencyid_value"]
    )
    assert read is not None and read["amount"] == 120
