"""Posting sales documents and the documents' bound actions, as BC's APIV2 pages declare them.

Bound actions (`POST .../salesOrders(<id>)/Microsoft.NAV.shipAndInvoice`, answered 204):
- `salesOrders`: `shipAndInvoice` (APIV2 - Sales Orders: ships and invoices everything; the posted
  invoice is created and the fully posted order deleted) and `release`;
- `salesQuotes`: `makeOrder` (the quote becomes an order with its lines; the quote is deleted) and
  `makeInvoice` (the same, as a draft invoice);
- `salesInvoices`: `post` (a draft becomes a posted invoice: status Open, its own number).
Anything else the pages declare (`send`, `cancel`, `makeCorrectiveCreditMemo`...) is refused as not
implemented by the sandbox. A shipment alone (`ship_order`) is what a user's Post > Ship does in the
client: the order is released, its lines' shipped quantities move, the item ledger gets the sales.

Posting writes what the API cannot (read-only fields: status, shipped quantities), as BC's posting
codeunits do, with new ETags and notifications for the records it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devstack.bc.entities import ENTITY_SETS, LINES_OF
from devstack.bc.errors import bad_request, resource_not_found
from devstack.bc.ledger import post_item_entries
from devstack.bc.store import BcStore

ACTIONS: dict[str, tuple[str, ...]] = {
    "salesOrders": ("shipAndInvoice", "release"),
    "salesQuotes": ("makeOrder", "makeInvoice", "send"),
    "salesInvoices": ("post", "postAndSend", "send", "cancel", "cancelAndSend", "makeCorrectiveCreditMemo"),
}
# Header fields a document made from another takes over (number, status and amounts are its own).
_ADDRESS = ("AddressLine1", "AddressLine2", "City", "State", "Country", "PostCode")
_COPIED = (
    "externalDocumentNumber", "customerId", "customerNumber", "billToName", "billToCustomerId",
    "billToCustomerNumber", "shipToName", "shipToContact", "currencyCode", "paymentTermsId",
    "shipmentMethodId", "salesperson", "pricesIncludeTax", "phoneNumber", "email",
    *(prefix + field for prefix in ("sellTo", "billTo", "shipTo") for field in _ADDRESS),
)  # fmt: skip
# A made or posted document keeps its source's line numbers (BC's TransferFields copies "Line No.").
_LINE_COPIED = (
    "sequence", "lineType", "lineObjectNumber", "description", "unitOfMeasureCode", "quantity", "unitPrice",
    "discountAmount", "discountPercent", "shipmentDate",
)  # fmt: skip


def run_action(
    store: BcStore, company_id: str, entity_set: str, record_id: str, name: str, user: str
) -> None:
    action = name.removeprefix("Microsoft.NAV.")
    declared = ACTIONS.get(entity_set, ())
    if action not in declared:
        # As OData answers a segment that names no action bound to the entity type.
        raise resource_not_found(name)
    with store.transaction():
        if (entity_set, action) == ("salesOrders", "shipAndInvoice"):
            ship_order(store, company_id, record_id, user, invoice=True)
        elif (entity_set, action) == ("salesOrders", "release"):
            _set(store, company_id, "salesOrders", record_id, {"status": "Released"}, user)
        elif (entity_set, action) == ("salesQuotes", "makeOrder"):
            convert(store, company_id, "salesQuotes", record_id, "salesOrders", user)
        elif (entity_set, action) == ("salesQuotes", "makeInvoice"):
            convert(store, company_id, "salesQuotes", record_id, "salesInvoices", user)
        elif (entity_set, action) == ("salesInvoices", "post"):
            post_invoice(store, company_id, record_id, user)
        else:
            raise bad_request(
                f"The sandbox does not implement {name} on {entity_set}.", "BadRequest_NotSupported"
            )


def ship_order(
    store: BcStore, company_id: str, order_id: str, user: str, *, invoice: bool = False
) -> dict[str, Any] | None:
    """Post the order's shipment (everything not shipped yet) and, with `invoice`, its invoice.
    Returns the posted invoice, if any. A fully shipped and invoiced order is deleted, as Sales-Post does."""
    with store.transaction():
        order = store.get(company_id, "salesOrders", order_id)
        lines = store.lines_of(company_id, order["id"], "salesOrderLines")
        to_ship = [
            line
            for line in lines
            if line["lineType"] == "Item" and line["quantity"] > line["shippedQuantity"]
        ]
        to_invoice = [line for line in lines if line["quantity"] > line["invoicedQuantity"]]
        if not to_ship and not (invoice and to_invoice):
            raise bad_request("There is nothing to post.", "Application_DialogException")
        if order["status"] != "Released":
            order = _set(store, company_id, "salesOrders", order["id"], {"status": "Released"}, user)
        entries = [
            {
                "itemNumber": line["lineObjectNumber"],
                "quantity": -(line["quantity"] - line["shippedQuantity"]),
                "entryType": "Sale",
                "documentNumber": order["number"],
            }
            for line in to_ship
        ]
        if entries:
            post_item_entries(store, company_id, entries, user)
        for line in to_ship:
            _set(
                store, company_id, "salesOrderLines", line["id"], {"shippedQuantity": line["quantity"]}, user
            )
        lines = store.lines_of(company_id, order["id"], "salesOrderLines")
        shipped = all(
            line["shippedQuantity"] >= line["quantity"] for line in lines if line["lineType"] == "Item"
        )
        order = _set(store, company_id, "salesOrders", order["id"], {"fullyShipped": shipped}, user)
        if not invoice:
            return None
        posted = _posted_invoice(store, company_id, order, lines, user)
        for line in lines:
            _set(
                store, company_id, "salesOrderLines", line["id"], {"invoicedQuantity": line["quantity"]}, user
            )
        if shipped:
            store.delete(company_id, "salesOrders", order["id"], user, if_match="*", system=True)
        return posted


def convert(
    store: BcStore, company_id: str, source_set: str, source_id: str, target_set: str, user: str
) -> dict[str, Any]:
    """A quote made into an order or invoice: a new document with the quote's lines; the quote is deleted."""
    source = store.get(company_id, source_set, source_id)
    lines = store.lines_of(company_id, source["id"], LINES_OF[source_set])
    body = {k: source[k] for k in _COPIED if k in ENTITY_SETS[target_set].by_name}
    body[LINES_OF[target_set]] = [{k: line[k] for k in _LINE_COPIED} for line in lines]
    created, _ = store.create_document(company_id, target_set, body, user, lines_set=LINES_OF[target_set])
    store.delete(company_id, source_set, source["id"], user, if_match="*", system=True)
    return created


def post_invoice(store: BcStore, company_id: str, invoice_id: str, user: str) -> dict[str, Any]:
    invoice = store.get(company_id, "salesInvoices", invoice_id)
    if invoice["status"] not in ("Draft", "In Review"):
        raise bad_request(
            "The invoice has been posted and can no longer be modified.", "Application_DialogException"
        )
    lines = store.lines_of(company_id, invoice["id"], "salesInvoiceLines")
    if not lines:
        raise bad_request("There is nothing to post.", "Application_DialogException")
    return _set(store, company_id, "salesInvoices", invoice["id"], _posting_values(invoice), user)


def _posted_invoice(
    store: BcStore, company_id: str, order: Mapping[str, Any], lines: list[dict[str, Any]], user: str
) -> dict[str, Any]:
    body = {k: order[k] for k in _COPIED if k in ENTITY_SETS["salesInvoices"].by_name}
    body["salesInvoiceLines"] = [
        {**{k: line[k] for k in _LINE_COPIED}, "quantity": line["quantity"] - line["invoicedQuantity"]}
        for line in lines
        if line["quantity"] > line["invoicedQuantity"]
    ]
    invoice, _ = store.create_document(company_id, "salesInvoices", body, user, lines_set="salesInvoiceLines")
    values = {**_posting_values(invoice), "orderId": order["id"], "orderNumber": order["number"]}
    return _set(store, company_id, "salesInvoices", invoice["id"], values, user)


def _posting_values(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """A posted invoice: status Open, and what remains to be paid is its total."""
    return {"status": "Open", "remainingAmount": invoice["totalAmountIncludingTax"]}


def _set(
    store: BcStore, company_id: str, entity_set: str, record_id: str, values: Mapping[str, Any], user: str
) -> dict[str, Any]:
    return store.system_update(company_id, entity_set, record_id, values, user)
