"""The BC API v2.0 entity sets the sandbox serves: fields in documented order, types and rules.

Field lists follow the v2.0 resource pages ("Resources" in the API reference,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/).
Every record also has `id` and `lastModifiedDateTime`.
Rules a sync must respect are data here, enforced by `store.py`: read-only fields, Code fields
(upper-cased and length-limited like BC's `Code[n]`), option values, references to other records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
EMPTY_DATE = "0001-01-01"

# Field kinds: the JSON type a value must have; "guid" and "date" are strings with a format.
STR, NUM, BOOL, GUID, DATE, DATETIME = "str", "num", "bool", "guid", "date", "datetime"

CUSTOMER_BLOCKED = (" ", "Ship", "Invoice", "All")
VENDOR_BLOCKED = (" ", "Payment", "All")

# Webhook-supported v2.0 resources (contacts and salespeoplePurchasers are not):
# https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions
WEBHOOK_SUPPORTED = frozenset(
    {
        "accounts", "companyInformation", "countriesRegions", "currencies", "customerPaymentJournals",
        "customers", "dimensions", "employees", "generalLedgerEntries", "itemCategories", "items",
        "journals", "paymentMethods", "paymentTerms", "purchaseInvoices", "salesCreditMemos",
        "salesInvoices", "salesOrders", "salesQuotes", "shipmentMethods", "unitsOfMeasure", "vendors",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = STR
    default: Any = ""
    max_length: int | None = None
    code: bool = False  # BC Code type: stored upper-case
    read_only: bool = False
    options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EntitySet:
    name: str
    caption: str  # BC's table caption, used in error messages ("The Customer does not exist.")
    fields: tuple[Field, ...]
    key: str | None = None  # "number" (number series) or "code" (required, unique)
    number_prefix: str = ""
    parent: str | None = None  # document lines: the header entity set
    expands: tuple[str, ...] = ()
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)
    _template: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "_template", {f.name: f.default for f in self.fields})

    @property
    def webhook_supported(self) -> bool:
        return self.name in WEBHOOK_SUPPORTED

    def template(self) -> dict[str, Any]:
        """A record with every field at its default, in documented order."""
        return dict(self._template)

    @property
    def type_name(self) -> str:
        """The EDM entity type BC names in its errors: `Microsoft.NAV.customer` for `customers`."""
        irregular = {
            "salespeoplePurchasers": "salespersonPurchaser",
            "contactsInformation": "contactInformation",
        }
        name = irregular.get(self.name) or (
            self.name[:-3] + "y" if self.name.endswith("ies") else self.name.removesuffix("s")
        )
        return "Microsoft.NAV." + name


def _id() -> Field:
    return Field("id", GUID, ZERO_GUID, read_only=True)


def _modified() -> Field:
    return Field("lastModifiedDateTime", DATETIME, "0001-01-01T00:00:00Z", read_only=True)


def _text(name: str, length: int = 100, **kw: Any) -> Field:
    return Field(name, STR, "", max_length=length, **kw)


def _code(name: str, length: int = 20, **kw: Any) -> Field:
    return Field(name, STR, "", max_length=length, code=True, **kw)


def _num(name: str, **kw: Any) -> Field:
    return Field(name, NUM, 0, **kw)


def _guid(name: str, **kw: Any) -> Field:
    return Field(name, GUID, ZERO_GUID, **kw)


def _bool(name: str, **kw: Any) -> Field:
    return Field(name, BOOL, False, **kw)


def _date(name: str, **kw: Any) -> Field:
    return Field(name, DATE, EMPTY_DATE, **kw)


def _address(prefix: str = "") -> tuple[Field, ...]:
    def n(name: str) -> str:
        return prefix + name[0].upper() + name[1:] if prefix else name

    # Document pages (APIV2 - Sales Orders/Quotes/Invoices) name the post code `sellToPostCode`,
    # `billToPostCode`, `shipToPostCode`; master data pages name it `postalCode`.
    return (
        _text(n("addressLine1")),
        _text(n("addressLine2"), 50),
        _text(n("city"), 30),
        _text(n("state"), 30),
        _code(n("country"), 10),
        _code(n("postCode") if prefix else "postalCode", 20),
    )


CUSTOMERS = EntitySet(
    "customers",
    "Customer",
    (
        _id(),
        _code("number"),
        _text("displayName"),
        Field("type", STR, "Company", options=("Company", "Person")),
        *_address(),
        _text("phoneNumber", 30),
        _text("email", 80),
        _text("website", 80),
        _code("salespersonCode"),
        _num("balanceDue", read_only=True),
        _num("creditLimit"),
        _bool("taxLiable"),
        _guid("taxAreaId"),
        _text("taxAreaDisplayName", read_only=True),
        _text("taxRegistrationNumber", 20),
        _guid("currencyId"),
        _code("currencyCode", 10),
        _guid("paymentTermsId"),
        _guid("shipmentMethodId"),
        _guid("paymentMethodId"),
        Field("blocked", STR, " ", options=CUSTOMER_BLOCKED),
        _modified(),
    ),
    key="number",
    number_prefix="C",
    expands=("customerFinancialDetail", "contactsInformation"),
)

VENDORS = EntitySet(
    "vendors",
    "Vendor",
    (
        _id(),
        _code("number"),
        _text("displayName"),
        *_address(),
        _text("phoneNumber", 30),
        _text("email", 80),
        _text("website", 80),
        _text("taxRegistrationNumber", 20),
        _guid("currencyId"),
        _code("currencyCode", 10),
        _code("irs1099Code", 10),
        _guid("paymentTermsId"),
        _guid("paymentMethodId"),
        _bool("taxLiable"),
        Field("blocked", STR, " ", options=VENDOR_BLOCKED),
        _num("balance", read_only=True),
        _modified(),
    ),
    key="number",
    number_prefix="V",
    expands=("contactsInformation",),
)

CONTACTS = EntitySet(
    "contacts",
    "Contact",
    (
        _id(),
        _code("number"),
        Field("type", STR, "Company", options=("Company", "Person")),
        _text("displayName"),
        # In the v2.0 contact resource reference; not in every BCApps version of page 30071 (unverified
        # which release added it). Contact."Job Title" is Text[30].
        _text("jobTitle", 30),
        _code("companyNumber"),
        _text("companyName", read_only=True),
        # BC's enum "Contact Business Relation": "None" without a relation (set on insert), else the
        # company's link ("Customer", "Vendor"); a person shows its company's. See store.py.
        Field("contactBusinessRelation", STR, "None", max_length=30, read_only=True),
        *_address(),
        _text("phoneNumber", 30),
        _text("mobilePhoneNumber", 30),
        _text("email", 80),
        _text("website", 80),
        _text("searchName", read_only=True),
        _bool("privacyBlocked"),
        _text("taxRegistrationNumber", 20),
        # Page 30071: "Date of Last Interaction" (a FlowField over interaction log entries), Editable = false.
        # No interactions are modelled, so it stays the empty date.
        _date("lastInteractionDate", read_only=True),
        _modified(),
    ),
    key="number",
    number_prefix="CT",
)

# Opportunities (page 30070 "APIV2 - Opportunities" on table 5092 Opportunity): only `number`,
# `contactNumber`, `salespersonCode` and `description` are editable; status, closing, values and dates
# come from the opportunity's sales cycle and its Close action in BC, which the API does not offer.
# `status` is an Option, so OData writes its values with XML-escaped spaces ("In_x0020_Progress"), as
# the resource page's examples show. No webhooks (not in webhookSupportedResources).
OPPORTUNITY_STATUSES = ("Not_x0020_Started", "In_x0020_Progress", "Won", "Lost")
OPPORTUNITIES = EntitySet(
    "opportunities",
    "Opportunity",
    (
        _id(),
        _code("number"),
        _code("contactNumber"),
        _text("contactName", read_only=True),
        _text("contactCompanyName", read_only=True),
        _code("salespersonCode"),
        _text("description"),
        Field("status", STR, "Not_x0020_Started", options=OPPORTUNITY_STATUSES, read_only=True),
        _bool("closed", read_only=True),
        _date("creationDate", read_only=True),
        _date("dateClosed", read_only=True),
        _num("calculatedCurrentValue", read_only=True),
        _num("chancesOfSuccessPrc", read_only=True),
        _num("completedPrc", read_only=True),
        _date("estimatedClosingDate", read_only=True),
        _num("estimatedValue", read_only=True),
        Field("systemCreatedAt", DATETIME, "0001-01-01T00:00:00Z", read_only=True),
        _modified(),
    ),
    key="number",
    number_prefix="OP",
)

ITEMS = EntitySet(
    "items",
    "Item",
    (
        _id(),
        _code("number"),
        _text("displayName"),
        _text("displayName2", 50),
        Field("type", STR, "Inventory", options=("Inventory", "Service", "Non-Inventory")),
        _guid("itemCategoryId"),
        _code("itemCategoryCode"),
        _bool("blocked"),
        _text("gtin", 14),
        _num("inventory", read_only=True),
        _num("unitPrice"),
        _bool("priceIncludesTax"),
        _num("unitCost"),
        # Page 30008 "APIV2 - Items": tax group and the two posting groups, each as id and code.
        _guid("taxGroupId"),
        _code("taxGroupCode"),
        _guid("baseUnitOfMeasureId"),
        _code("baseUnitOfMeasureCode", 10),
        _guid("generalProductPostingGroupId"),
        _code("generalProductPostingGroupCode"),
        _guid("inventoryPostingGroupId"),
        _code("inventoryPostingGroupCode"),
        _modified(),
    ),
    key="number",
    number_prefix="I",
)

CURRENCIES = EntitySet(
    "currencies",
    "Currency",
    (
        _id(),
        _code("code", 10),
        _text("displayName", 30),
        _text("symbol", 10),
        _num("amountDecimalPlaces"),
        _num("amountRoundingPrecision"),
        _modified(),
    ),
    key="code",
)

UNITS_OF_MEASURE = EntitySet(
    "unitsOfMeasure",
    "Unit of Measure",
    (
        _id(),
        _code("code", 10),
        _text("displayName", 50),
        _code("internationalStandardCode", 10),
        _text("symbol", 10),
        _modified(),
    ),
    key="code",
)

PAYMENT_TERMS = EntitySet(
    "paymentTerms",
    "Payment Terms",
    (
        _id(),
        _code("code", 10),
        _text("displayName", 100),
        _text("dueDateCalculation", 32),
        _text("discountDateCalculation", 32),
        _num("discountPercent"),
        _bool("calculateDiscountOnCreditMemos"),
        _modified(),
    ),
    key="code",
)

# Page 30024 "APIV2 - Item Categories" (webhook-supported).
ITEM_CATEGORIES = EntitySet(
    "itemCategories",
    "Item Category",
    (_id(), _code("code"), _text("displayName", 100), _modified()),
    key="code",
)

SHIPMENT_METHODS = EntitySet(
    "shipmentMethods",
    "Shipment Method",
    (_id(), _code("code", 10), _text("displayName", 100), _modified()),
    key="code",
)

SALESPEOPLE_PURCHASERS = EntitySet(
    "salespeoplePurchasers",
    "Salesperson/Purchaser",
    (
        _id(),
        _code("code"),
        _text("displayName", 50),
        _text("email", 80),
        _text("email2", 80),
        _text("phoneNo", 30),
        _text("jobTitle", 30),
        _num("commisionPercent"),
        _bool("privacyBlocked"),
        _bool("blocked"),
        _modified(),
    ),
    key="code",
)


def _document_header(*extra: Field, date_field: str) -> tuple[Field, ...]:
    return (
        _id(),
        _code("number"),
        _text("externalDocumentNumber", 35),
        _date(date_field),
        _date("postingDate"),
        _guid("customerId"),
        _code("customerNumber"),
        _text("customerName", read_only=True),
        _text("billToName"),
        _guid("billToCustomerId"),
        _code("billToCustomerNumber"),
        _text("shipToName"),
        _text("shipToContact"),
        *_address("sellTo"),
        *_address("billTo"),
        *_address("shipTo"),
        _guid("currencyId"),
        _code("currencyCode", 10),
        _guid("paymentTermsId"),
        _guid("shipmentMethodId"),
        _code("salesperson"),
        _bool("pricesIncludeTax"),
        _num("discountAmount"),
        _num("totalAmountExcludingTax", read_only=True),
        _num("totalTaxAmount", read_only=True),
        _num("totalAmountIncludingTax", read_only=True),
        *extra,
        _text("phoneNumber", 30),
        _text("email", 80),
        _modified(),
    )


SALES_QUOTES = EntitySet(
    "salesQuotes",
    "Sales Quote",
    _document_header(
        Field("status", STR, "Draft", options=("Draft", "Sent", "Accepted", "Expired"), read_only=True),
        _date("validUntilDate"),
        _code("opportunityNumber"),
        date_field="documentDate",
    ),
    key="number",
    number_prefix="S-QUO",
    expands=("salesQuoteLines",),
)

# APIV2 - Sales Orders: `status` is the Sales Order Entity Buffer's (Draft, In Review, Open, Released).
SALES_ORDERS = EntitySet(
    "salesOrders",
    "Sales Order",
    _document_header(
        _bool("fullyShipped", read_only=True),
        _date("requestedDeliveryDate"),
        _bool("partialShipping"),
        Field("status", STR, "Draft", options=("Draft", "In Review", "Open", "Released"), read_only=True),
        date_field="orderDate",
    ),
    key="number",
    number_prefix="S-ORD",
    expands=("salesOrderLines",),
)


def _document_lines(name: str, parent: str, *extra: Field) -> EntitySet:
    """A document's lines (APIV2 - Sales Quote/Order/Invoice Lines): amounts computed by BC."""
    return EntitySet(
        name,
        "Sales Line",
        (
            _id(),
            _guid("documentId"),
            _num("sequence"),
            _guid("itemId"),
            _guid("accountId"),
            Field("lineType", STR, "Item", options=("Comment", "Account", "Item", "Resource", "Charge")),
            _code("lineObjectNumber"),
            _text("description"),
            _code("unitOfMeasureCode", 10),
            _num("quantity"),
            _num("unitPrice"),
            _num("discountAmount"),
            _num("discountPercent"),
            _num("amountExcludingTax", read_only=True),
            _num("totalTaxAmount", read_only=True),
            _num("amountIncludingTax", read_only=True),
            _date("shipmentDate"),
            *extra,
            _modified(),
        ),
        parent=parent,
    )


SALES_QUOTE_LINES = _document_lines("salesQuoteLines", "salesQuotes")
SALES_ORDER_LINES = _document_lines(
    "salesOrderLines",
    "salesOrders",
    _num("shippedQuantity", read_only=True),
    _num("invoicedQuantity", read_only=True),
)
SALES_INVOICE_LINES = _document_lines("salesInvoiceLines", "salesInvoices")

SALES_INVOICES = EntitySet(
    "salesInvoices",
    "Sales Invoice",
    _document_header(
        _date("dueDate"),
        _guid("orderId", read_only=True),
        _code("orderNumber", read_only=True),
        _num("remainingAmount", read_only=True),
        Field(
            "status",
            STR,
            "Draft",
            options=(" ", "Draft", "In Review", "Open", "Paid", "Canceled", "Corrective"),
            read_only=True,
        ),
        date_field="invoiceDate",
    ),
    key="number",
    number_prefix="S-INV",
    expands=("salesInvoiceLines",),
)

# `itemLedgerEntries` (page 30069 "APIV2 - Item Ledger Entries"): read-only (Editable = false, no
# insert, modify or delete), key `id` (SystemId), `entryNumber` from one sequence that only grows.
# Entries are made by posting (devstack/bc/ledger.py); an item's `inventory` is their sum.
ITEM_ENTRY_TYPES = (
    "Purchase", "Sale", "Positive Adjmt.", "Negative Adjmt.", "Transfer", "Consumption", "Output",
    " ", "Assembly Consumption", "Assembly Output",
)  # fmt: skip
ITEM_LEDGER_ENTRIES = EntitySet(
    "itemLedgerEntries",
    "Item Ledger Entry",
    (
        _id(),
        _num("entryNumber", read_only=True),
        _code("itemNumber", read_only=True),
        _date("postingDate", read_only=True),
        Field("entryType", STR, "Purchase", options=ITEM_ENTRY_TYPES, read_only=True),
        _code("sourceNumber", read_only=True),
        Field("sourceType", STR, " ", options=(" ", "Customer", "Vendor", "Item"), read_only=True),
        _code("documentNumber", read_only=True),
        _text("documentType", 30, read_only=True),
        _text("description", 100, read_only=True),
        _num("quantity", read_only=True),
        _num("salesAmountActual", read_only=True),
        _num("costAmountActual", read_only=True),
        _modified(),
    ),
)
READ_ONLY_SETS = frozenset({ITEM_LEDGER_ENTRIES.name})

ENTITY_SETS: dict[str, EntitySet] = {
    e.name: e
    for e in (
        CUSTOMERS,
        VENDORS,
        CONTACTS,
        ITEMS,
        ITEM_CATEGORIES,
        CURRENCIES,
        UNITS_OF_MEASURE,
        PAYMENT_TERMS,
        SHIPMENT_METHODS,
        SALESPEOPLE_PURCHASERS,
        SALES_QUOTES,
        SALES_QUOTE_LINES,
        SALES_ORDERS,
        SALES_ORDER_LINES,
        SALES_INVOICES,
        SALES_INVOICE_LINES,
        ITEM_LEDGER_ENTRIES,
        OPPORTUNITIES,
    )
}

DOCUMENT_SETS = frozenset({"salesQuotes", "salesOrders", "salesInvoices"})
# Document entity set -> its line set (the header's navigation property of the same name).
LINES_OF = {
    "salesQuotes": "salesQuoteLines",
    "salesOrders": "salesOrderLines",
    "salesInvoices": "salesInvoiceLines",
}
LINE_SETS = frozenset(LINES_OF.values())

# Contact business relations (BC table 5054 "Contact Business Relation"): a customer or vendor is
# linked to its company contact, created with it (Marketing Setup "Bus. Rel. Code for Customers").
# Entity set -> the relation's "Link to Table" value, as `contactBusinessRelation`/`relatedType` show it.
BUSINESS_RELATIONS: dict[str, str] = {"customers": "Customer", "vendors": "Vendor"}
NO_RELATION = " "  # relatedType / "Link to Table" without a relation
NO_BUSINESS_RELATION = "None"  # contactBusinessRelation without a relation
# Customer/vendor fields BC copies to the company contact on insert and on change (CustCont-Update,
# VendCont-Update: TransferFields of the fields both tables share).
COMPANY_CONTACT_FIELDS = (
    "displayName", "addressLine1", "addressLine2", "city", "state", "country", "postalCode",
    "phoneNumber", "email", "website", "taxRegistrationNumber",
)  # fmt: skip

# `contactsInformation` (page 30072 "APIV2 - Contacts Information", BC 18.0+): read-only rows computed
# from the contacts and their business relations, no table of their own (so not in ENTITY_SETS). Rows
# carry the hidden sort key `id` (= contactId, the page's OData key) and no `@odata.etag`.
CONTACTS_INFORMATION = EntitySet(
    "contactsInformation",
    "Contact Information",
    (
        Field("contactId", GUID, ZERO_GUID, read_only=True),
        Field("contactNumber", STR, "", max_length=20, code=True, read_only=True),
        Field("contactName", STR, "", max_length=100, read_only=True),
        Field("contactType", STR, "Company", options=("Company", "Person"), read_only=True),
        Field("relatedId", GUID, ZERO_GUID, read_only=True),
        Field(
            "relatedType",
            STR,
            NO_RELATION,
            options=(NO_RELATION, "Customer", "Vendor", "Bank Account", "Employee"),
            read_only=True,
        ),
    ),
)

# `companies` (GET only, no ETag): the fields of API v2.0's company resource, ordered by `name` (the
# Company table's key). `name` is the key, `displayName` a separate, longer text that often differs.
# https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/resources/dynamics_company
COMPANIES = EntitySet(
    "companies",
    "Company",
    (
        _id(),
        Field("systemVersion", STR, "", read_only=True),
        Field("timestamp", NUM, 0, read_only=True),
        Field("name", STR, "", max_length=30, read_only=True),
        Field("displayName", STR, "", max_length=250, read_only=True),
        Field("businessProfileId", STR, "", read_only=True),
        Field("systemCreatedAt", DATETIME, "0001-01-01T00:00:00Z", read_only=True),
        Field("systemCreatedBy", GUID, ZERO_GUID, read_only=True),
        Field("systemModifiedAt", DATETIME, "0001-01-01T00:00:00Z", read_only=True),
        Field("systemModifiedBy", GUID, ZERO_GUID, read_only=True),
    ),
    key="name",
)

# `webhookSupportedResources` of the runtime API (BC's page 5460 "Webhook Supported Resources", on a
# temporary Name/Value Buffer): one `resource` per subscribable set, "<version>/<entity set>".
WEBHOOK_SUPPORTED_RESOURCES = EntitySet(
    "webhookSupportedResources",
    "Webhook Supported Resource",
    (Field("resource", STR, "", max_length=2048, read_only=True),),
    key="resource",
)

# `customerFinancialDetail` (page 30057 "APIV2 - Cust. Financial Details"): read-only, one per customer,
# reached as `customers(id)/customerFinancialDetail` or `$expand`; computed in `BcStore.financial_details`.
CUSTOMER_FINANCIAL_DETAIL = EntitySet(
    "customerFinancialDetails",
    "Customer Financial Detail",
    (
        _id(),
        Field("number", STR, "", max_length=20, code=True, read_only=True),
        _num("balance", read_only=True),
        _num("totalSalesExcludingTax", read_only=True),
        _num("overdueAmount", read_only=True),
    ),
)

# Entity sets served but computed (GET only).
COMPUTED_SETS: dict[str, EntitySet] = {CONTACTS_INFORMATION.name: CONTACTS_INFORMATION}
