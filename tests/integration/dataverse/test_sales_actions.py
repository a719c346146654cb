"""The Sales messages that close quotes and orders in the Dataverse sandbox (WinQuote,
ConvertQuoteToSalesOrder, FulfillSalesOrder), and the direct state changes Sales refuses."""

from __future__ import annotations

import pytest

from devstack.dataverse import DataverseSandbox
from shared.connectors.dataverse import DataverseClient
from shared.connectors.errors import ApiError

pytestmark = pytest.mark.integration


def _quote(client: DataverseClient, sandbox: DataverseSandbox, state: int = 1) -> str:
    [account] = sandbox.seed("accounts", [{"name": "Fabrikam"}])
    body = {
        "name": "Desks",
        "customerid_account@odata.bind": f"/accounts({account})",
        "quote_details": [
            {"productdescription": "Chair", "quantity": 4, "priceperunit": 25.0, "lineitemnumber": 20000},
            {"productdescription": "Desk", "quantity": 2, "priceperunit": 100.0, "lineitemnumber": 10000},
        ],
    }
    quote_id = str(client.create("quotes", body, select=["quoteid"])["quoteid"])
    if state:
        client.update("quotes", quote_id, {"statecode": state, "statuscode": 3}, etag="*")
    return quote_id


def test_convert_wins_an_active_quote_and_creates_its_order_with_the_details_in_line_order(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    quote_id = _quote(client, sandbox)
    requests = client.stats.total
    order = client.action(
        "ConvertQuoteToSalesOrder", {"QuoteId": quote_id, "ColumnSet": {"AllColumns": True}}
    )
    assert client.stats.total - requests == 1
    assert order is not None and order["_quoteid_value"] == quote_id and order["statecode"] == 0
    assert order["totalamount"] == 300
    quote = client.get("quotes", quote_id, ["statecode", "statuscode"])
    assert quote is not None and (quote["statecode"], quote["statuscode"]) == (2, 4)  # Won
    read = client.get("salesorders", order["salesorderid"], expand="order_details")
    assert read is not None and read["_customerid_value"] == order["_customerid_value"]
    # Sales lists details by their sequence number: the order's follow the quote's line numbers.
    details = sorted(read["order_details"], key=lambda d: d["sequencenumber"])
    lines = [(d["productdescription"], d["quantity"], d["lineitemnumber"]) for d in details]
    assert lines == [("Desk", 2, 10000), ("Chair", 4, 20000)]


def test_a_draft_quote_cannot_be_converted_or_won(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    quote_id = _quote(client, sandbox, state=0)
    with pytest.raises(ApiError, match="draft"):
        client.action("ConvertQuoteToSalesOrder", {"QuoteId": quote_id})
    close = {"QuoteClose": {"quoteid@odata.bind": f"/quotes({quote_id})", "subject": "won"}, "Status": -1}
    with pytest.raises(ApiError, match="not active"):
        client.action("WinQuote", close)


def test_win_quote_and_the_direct_state_change_sales_refuses(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    quote_id = _quote(client, sandbox)
    with pytest.raises(ApiError, match="use the WinQuote message"):
        client.update("quotes", quote_id, {"statecode": 2}, etag="*")
    close = {"QuoteClose": {"quoteid@odata.bind": f"/quotes({quote_id})", "subject": "won"}, "Status": -1}
    assert client.action("WinQuote", close) is None  # 204
    quote = client.get("quotes", quote_id, ["statecode", "statuscode"])
    assert quote is not None and (quote["statecode"], quote["statuscode"]) == (2, 4)
    with pytest.raises(ApiError, match="not active"):
        client.action("WinQuote", close)  # won already


def test_fulfill_sales_order_closes_an_open_order_and_only_with_a_fulfilled_status(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    [account] = sandbox.seed("accounts", [{"name": "Contoso"}])
    order = client.create(
        "salesorders",
        {"name": "O", "customerid_account@odata.bind": f"/accounts({account})"},
        select=["salesorderid"],
    )
    order_id = order["salesorderid"]
    client.update("salesorders", order_id, {"statecode": 1, "statuscode": 3}, etag="*")  # submitted
    with pytest.raises(ApiError, match="use the FulfillSalesOrder message"):
        client.update("salesorders", order_id, {"statecode": 3}, etag="*")
    close = {"OrderClose": {"salesorderid@odata.bind": f"/salesorders({order_id})", "subject": "shipped"}}
    with pytest.raises(ApiError, match="100001"):
        client.action("FulfillSalesOrder", {**close, "Status": 3})
    assert client.action("FulfillSalesOrder", {**close, "Status": 100001}) is None
    read = client.get("salesorders", order_id, ["statecode", "statuscode"])
    assert read is not None and (read["statecode"], read["statuscode"]) == (3, 100001)
    with pytest.raises(ApiError, match="closed"):
        client.action("FulfillSalesOrder", {**close, "Status": 100001})
    with pytest.raises(ApiError, match=r"salesorderid@odata\.bind"):
        client.action("FulfillSalesOrder", {"OrderClose": {"subject": "x"}, "Status": 100001})
