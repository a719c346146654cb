"""The tables the Dataverse sandbox knows: columns, types, lookups, option sets, alternate keys.

Column names, option values and entity set names are the real ones (Microsoft's generated table
reference, https://learn.microsoft.com/power-apps/developer/data-platform/reference/about-entity-reference).
A lookup column `x` is read as `_x_value` and written through a navigation property with
`x@odata.bind` (customer lookups: `x_account@odata.bind` / `x_contact@odata.bind`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    STRING = "Edm.String"
    INT = "Edm.Int32"
    BIGINT = "Edm.Int64"
    DECIMAL = "Edm.Decimal"
    MONEY = "Money"
    BOOL = "Edm.Boolean"
    DATETIME = "Edm.DateTimeOffset"
    DATE = "Edm.Date"
    GUID = "Edm.Guid"
    CHOICE = "Picklist"
    LOOKUP = "Lookup"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    max_length: int | None = None
    choices: dict[int, str] | None = None
    targets: tuple[str, ...] = ()  # lookup target logical names
    read_only: bool = False
    # Customer-type lookups (`parentcustomerid`) bind through `<name>_<target>`; simple lookups and
    # owner bind through `<name>`.
    per_target_navigation: bool = False
    # Set for columns created through metadata or a solution: their schema and display names.
    schema_name: str = ""
    display_name: str = ""

    @property
    def wire_name(self) -> str:
        return f"_{self.name}_value" if self.kind is Kind.LOOKUP else self.name


@dataclass(frozen=True)
class Table:
    logical_name: str
    entity_set: str
    primary_key: str
    primary_name: str
    columns: dict[str, Column]  # by wire name
    alternate_keys: tuple[tuple[str, ...], ...] = ()
    change_tracking: bool = True
    # state -> default status (set when a write changes statecode without statuscode)
    default_status: dict[int, int] = field(default_factory=dict)
    # Tables created through metadata or a solution: their schema and display names, and whether the
    # caller's security roles are checked on each request (`customization.py`).
    schema_name: str = ""
    display_name: str = ""
    display_collection_name: str = ""
    enforce_privileges: bool = False

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"

    def navigation(self) -> dict[str, tuple[Column, str | None]]:
        """Navigation property -> (lookup column, target logical name or None for any target)."""
        result: dict[str, tuple[Column, str | None]] = {}
        for column in self.columns.values():
            if column.kind is not Kind.LOOKUP or column.read_only:
                continue
            if column.per_target_navigation:
                for target in column.targets:
                    result[f"{column.name}_{target}"] = (column, target)
            else:
                result[column.name] = (column, None)
        return result

    def lookup_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns.values() if c.kind is Kind.LOOKUP}


# --- column helpers -------------------------------------------------------------------------------


def text(name: str, max_length: int = 100, *, read_only: bool = False) -> Column:
    return Column(name, Kind.STRING, max_length=max_length, read_only=read_only)


def memo(name: str) -> Column:
    return Column(name, Kind.STRING, max_length=2000)


def money(name: str, *, read_only: bool = False) -> Column:
    return Column(name, Kind.MONEY, read_only=read_only)


def decimal(name: str) -> Column:
    return Column(name, Kind.DECIMAL)


def integer(name: str) -> Column:
    return Column(name, Kind.INT)


def boolean(name: str) -> Column:
    return Column(name, Kind.BOOL)


def datetime(name: str, *, read_only: bool = False) -> Column:
    return Column(name, Kind.DATETIME, read_only=read_only)


def date(name: str) -> Column:
    return Column(name, Kind.DATE)


def guid(name: str, *, read_only: bool = False) -> Column:
    return Column(name, Kind.GUID, read_only=read_only)


def choice(name: str, choices: dict[int, str]) -> Column:
    return Column(name, Kind.CHOICE, choices=choices)


def lookup(name: str, *targets: str, per_target: bool = False, read_only: bool = False) -> Column:
    return Column(name, Kind.LOOKUP, targets=targets, per_target_navigation=per_target, read_only=read_only)


def address(prefix: str) -> list[Column]:
    return [
        text(f"{prefix}_line1", 250),
        text(f"{prefix}_line2", 250),
        text(f"{prefix}_line3", 250),
        text(f"{prefix}_city", 80),
        text(f"{prefix}_stateorprovince", 50),
        text(f"{prefix}_postalcode", 20),
        text(f"{prefix}_country", 80),
        text(f"{prefix}_telephone1", 50),
    ]


# --- option sets ----------------------------------------------------------------------------------

PAYMENT_TERMS = {1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"}
FREIGHT_TERMS = {1: "FOB", 2: "No Charge"}
SHIPPING_METHODS = {
    1: "Airborne",
    2: "DHL",
    3: "FedEx",
    4: "UPS",
    5: "Postal Mail",
    6: "Full Load",
    7: "Will Call",
}
CUSTOMER_TYPES = {
    1: "Competitor",
    2: "Consultant",
    3: "Customer",
    4: "Investor",
    5: "Partner",
    6: "Influencer",
    7: "Press",
    8: "Prospect",
    9: "Reseller",
    10: "Supplier",
    11: "Vendor",
    12: "Other",
}
ACTIVE_INACTIVE = {0: "Active", 1: "Inactive"}
ACTIVE_INACTIVE_STATUS = {1: "Active", 2: "Inactive"}
PRODUCT_TYPES = {1: "Sales Inventory", 2: "Miscellaneous Charges", 3: "Services", 4: "Flat Fees"}
PRODUCT_STATES = {0: "Active", 1: "Retired", 2: "Draft", 3: "Under Revision"}
PRODUCT_STATUSES = {1: "Active", 2: "Retired", 0: "Draft", 3: "Under Revision"}
SALESORDER_STATES = {0: "Active", 1: "Submitted", 2: "Canceled", 3: "Fulfilled", 4: "Invoiced"}
SALESORDER_STATUSES = {
    1: "New",
    2: "Pending",
    3: "In Progress",
    4: "No Money",
    100001: "Complete",
    100002: "Partial",
    100003: "Invoiced",
}
INVOICE_STATES = {0: "Active", 1: "Closed", 2: "Paid", 3: "Canceled"}
# Quote: Draft (0), Active (1), Won (2), Closed (3) with their status reasons (quote table reference).
QUOTE_STATES = {0: "Draft", 1: "Active", 2: "Won", 3: "Closed"}
QUOTE_STATUSES = {
    1: "In Progress",
    2: "In Progress",
    3: "Open",
    4: "Won",
    5: "Lost",
    6: "Canceled",
    7: "Revised",
}
PRODUCT_TYPES = {
    1: "Product",
    2: "Bundle",
    3: "Required Bundle Product",
    4: "Optional Bundle Product",
    5: "Project-based Service",
}


def document_totals() -> list[Column]:
    """A sales document's totals: Dataverse computes them from the details (read-only here as there:
    a value written is recomputed)."""
    return [
        money("totallineitemamount", read_only=True),
        money("totalamountlessfreight", read_only=True),
        money("totaltax", read_only=True),
        money("totalamount", read_only=True),
    ]


def document_detail(parent: str) -> list[Column]:
    """The columns a quote, order and invoice detail share; `baseamount` and `extendedamount` are
    computed (quantity x price per unit, less the manual discount, plus tax)."""
    return [
        text("productdescription", 500),
        decimal("quantity"),
        money("priceperunit"),
        money("baseamount", read_only=True),
        money("extendedamount", read_only=True),
        money("manualdiscountamount"),
        money("tax"),
        boolean("ispriceoverridden"),
        boolean("isproductoverridden"),
        integer("lineitemnumber"),
        # The order Sales lists the details in (the form's "Move up/down" rewrites it); a new detail
        # goes last in its document.
        integer("sequencenumber"),
        date("requestdeliveryby"),
        choice("producttypecode", PRODUCT_TYPES),
        lookup(f"{parent}id", parent),
        lookup("productid", "product"),
        lookup("uomid", "uom"),
        lookup("transactioncurrencyid", "transactioncurrency"),
    ]


OPPORTUNITY_STATES = {0: "Open", 1: "Won", 2: "Lost"}
# Opportunity status reason -> its state (In Progress, On Hold: Open; Won; Canceled, Out-Sold: Lost).
OPPORTUNITY_STATUS_STATE = {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}
SERVICEENDPOINT_CONTRACTS = {
    1: "OneWay",
    2: "Queue",
    3: "Rest",
    4: "TwoWay",
    5: "Topic",
    6: "Queue (Persistent)",
    7: "Event Hub",
    8: "Webhook",
    9: "Event Grid",
    10: "Managed Data Lake",
}
SERVICEENDPOINT_AUTHTYPES = {
    1: "ACS",
    2: "SAS Key",
    3: "SAS Token",
    4: "Webhook Key",
    5: "Http Header",
    6: "Http Query String",
    7: "Connection String",
    8: "Access Key",
}
STEP_STAGES = {10: "Pre-validation", 20: "Pre-operation", 30: "Main Operation", 40: "Post-operation"}
STEP_MODES = {0: "Synchronous", 1: "Asynchronous"}
ASYNC_STATES = {0: "Ready", 1: "Suspended", 2: "Locked", 3: "Completed"}
ASYNC_STATUSES = {
    0: "Waiting For Resources",
    10: "Waiting",
    20: "In Progress",
    21: "Pausing",
    22: "Canceling",
    30: "Succeeded",
    31: "Failed",
    32: "Canceled",
}


# Columns every user-owned table carries (system columns are read-only).
def _system(
    *, owned: bool = True, state: dict[int, str] | None = None, status: dict[int, str] | None = None
) -> list[Column]:
    columns = [
        datetime("createdon", read_only=True),
        datetime("modifiedon", read_only=True),
        Column("versionnumber", Kind.BIGINT, read_only=True),
        lookup("createdby", "systemuser", read_only=True),
        lookup("modifiedby", "systemuser", read_only=True),
        lookup("modifiedonbehalfby", "systemuser", read_only=True),
        lookup("owningbusinessunit", "businessunit", read_only=True),
    ]
    if owned:
        columns.append(lookup("ownerid", "systemuser"))
    if state is not None:
        columns.append(choice("statecode", state))
        columns.append(choice("statuscode", status or {}))
    return columns


def _table(
    logical_name: str,
    entity_set: str,
    primary_name: str,
    columns: list[Column],
    *,
    keys: tuple[tuple[str, ...], ...] = (),
    owned: bool = True,
    state: dict[int, str] | None = None,
    status: dict[int, str] | None = None,
    default_status: dict[int, int] | None = None,
    change_tracking: bool = True,
    primary_key: str = "",
) -> Table:
    primary_key = primary_key or f"{logical_name}id"
    all_columns = [guid(primary_key), *columns, *_system(owned=owned, state=state, status=status)]
    return Table(
        logical_name=logical_name,
        entity_set=entity_set,
        primary_key=primary_key,
        primary_name=primary_name,
        columns={c.wire_name: c for c in all_columns},
        alternate_keys=keys,
        change_tracking=change_tracking,
        default_status=default_status or {},
    )


build_table = _table  # for tables created at run time (metadata, solution import)

_ACTIVE: dict[str, Any] = {
    "state": ACTIVE_INACTIVE,
    "status": ACTIVE_INACTIVE_STATUS,
    "default_status": {0: 1, 1: 2},
}


def build_tables() -> dict[str, Table]:
    """All sandbox tables by entity set name."""
    tables = [
        _table(
            "account",
            "accounts",
            "name",
            [
                text("name", 160),
                text("accountnumber", 20),
                text("emailaddress1", 100),
                text("emailaddress2", 100),
                text("telephone1", 50),
                text("telephone2", 50),
                text("fax", 50),
                text("websiteurl", 200),
                *address("address1"),
                text("address1_primarycontactname", 100),
                choice("address1_freighttermscode", FREIGHT_TERMS),
                choice("address1_shippingmethodcode", SHIPPING_METHODS),
                choice("customertypecode", CUSTOMER_TYPES),
                choice("paymenttermscode", PAYMENT_TERMS),
                choice("accountcategorycode", {1: "Preferred Customer", 2: "Standard"}),
                money("creditlimit"),
                boolean("creditonhold"),
                money("revenue"),
                memo("description"),
                integer("numberofemployees"),
                lookup("transactioncurrencyid", "transactioncurrency"),
                lookup("primarycontactid", "contact"),
                lookup("parentaccountid", "account"),
            ],
            # No alternate key: Dataverse defines none on account, and two BC companies may each
            # have a customer with the same number (two accounts).
            **_ACTIVE,
        ),
        _table(
            "contact",
            "contacts",
            "fullname",
            [
                text("firstname", 50),
                text("middlename", 50),
                text("lastname", 50),
                text("fullname", 160, read_only=True),
                text("emailaddress1", 100),
                text("telephone1", 50),
                text("mobilephone", 50),
                text("pager", 50),
                text("fax", 50),
                text("websiteurl", 200),
                text("jobtitle", 100),
                *address("address1"),
                choice("paymenttermscode", PAYMENT_TERMS),
                memo("description"),
                lookup("parentcustomerid", "account", "contact", per_target=True),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            **_ACTIVE,
        ),
        _table(
            "product",
            "products",
            "name",
            [
                text("productnumber", 100),
                text("name", 100),
                money("price"),
                money("standardcost"),
                money("currentcost"),
                decimal("stockvolume"),
                decimal("stockweight"),
                decimal("quantityonhand"),
                text("vendorpartnumber", 100),
                text("vendorid", 100),
                text("vendorname", 100),
                integer("quantitydecimal"),
                memo("description"),
                choice("producttypecode", PRODUCT_TYPES),
                lookup("defaultuomscheduleid", "uomschedule"),
                lookup("defaultuomid", "uom"),
                lookup("pricelevelid", "pricelevel"),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            keys=(("productnumber",),),
            owned=False,
            state=PRODUCT_STATES,
            status=PRODUCT_STATUSES,
            default_status={0: 1, 1: 2, 2: 0, 3: 3},
        ),
        _table(
            "systemuser",
            "systemusers",
            "fullname",
            [
                text("fullname", 200, read_only=True),
                text("firstname", 64),
                text("lastname", 64),
                text("internalemailaddress", 100),
                text("domainname", 1024),
                guid("azureactivedirectoryobjectid"),
                guid("applicationid"),
                boolean("isdisabled"),
                boolean("islicensed"),
                boolean("isintegrationuser"),
                choice(
                    "accessmode",
                    {
                        0: "Read-Write",
                        1: "Administrative",
                        2: "Read",
                        3: "Support User",
                        4: "Non-interactive",
                        5: "Delegated Admin",
                    },
                ),
                text("mobilephone", 64),
                text("title", 128),
                lookup("businessunitid", "businessunit"),
            ],
            owned=False,
        ),
        _table("businessunit", "businessunits", "name", [text("name", 160)], owned=False),
        # The organization row: its base currency (`basecurrencyid`) is what Dataverse puts on
        # new records with money columns.
        _table(
            "organization",
            "organizations",
            "name",
            [text("name", 160), lookup("basecurrencyid", "transactioncurrency")],
            owned=False,
            change_tracking=False,
        ),
        _table(
            "transactioncurrency",
            "transactioncurrencies",
            "currencyname",
            [
                text("currencyname", 100),
                text("isocurrencycode", 5),
                text("currencysymbol", 10),
                decimal("exchangerate"),
                integer("currencyprecision"),
            ],
            keys=(("isocurrencycode",),),
            owned=False,
            **_ACTIVE,
        ),
        _table(
            "uomschedule",
            "uomschedules",
            "name",
            [
                text("name", 200),
                text("baseuomname", 100),
                memo("description"),
            ],
            owned=False,
            **_ACTIVE,
        ),
        _table(
            "uom",
            "uoms",
            "name",
            [
                text("name", 100),
                decimal("quantity"),
                boolean("isschedulebaseuom"),
                lookup("uomscheduleid", "uomschedule"),
                lookup("baseuom", "uom"),
            ],
            owned=False,
        ),
        _table(
            "pricelevel",
            "pricelevels",
            "name",
            [
                text("name", 100),
                memo("description"),
                date("begindate"),
                date("enddate"),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            owned=False,
            **_ACTIVE,
        ),
        _table(
            "productpricelevel",
            "productpricelevels",
            "productnumber",
            [
                text("productnumber", 100, read_only=True),
                money("amount"),
                choice("pricingmethodcode", {1: "Currency Amount", 2: "Percent of List"}),
                lookup("pricelevelid", "pricelevel"),
                lookup("productid", "product"),
                lookup("uomid", "uom"),
                lookup("uomscheduleid", "uomschedule"),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            owned=False,
        ),
        _table(
            "salesorder",
            "salesorders",
            "name",
            [
                text("name", 300),
                text("ordernumber", 100),
                *document_totals(),
                money("discountamount"),
                decimal("discountpercentage"),
                choice("paymenttermscode", PAYMENT_TERMS),
                choice("shippingmethodcode", SHIPPING_METHODS),
                choice("freighttermscode", FREIGHT_TERMS),
                date("requestdeliveryby"),
                date("datefulfilled"),
                memo("description"),
                *address("shipto"),
                text("shipto_name", 200),
                *address("billto"),
                text("billto_name", 200),
                lookup("customerid", "account", "contact", per_target=True),
                lookup("pricelevelid", "pricelevel"),
                lookup("transactioncurrencyid", "transactioncurrency"),
                lookup("opportunityid", "opportunity"),
                lookup("quoteid", "quote"),
            ],
            state=SALESORDER_STATES,
            status=SALESORDER_STATUSES,
            default_status={0: 1, 1: 3, 2: 4, 3: 100001, 4: 100003},
        ),
        _table(
            "salesorderdetail",
            "salesorderdetails",
            "productdescription",
            [
                *document_detail("salesorder"),
                decimal("quantityshipped"),
                decimal("quantitybackordered"),
                decimal("quantitycancelled"),
            ],
            owned=False,
        ),
        _table(
            "quote",
            "quotes",
            "name",
            [
                text("name", 300),
                text("quotenumber", 100),
                *document_totals(),
                money("discountamount"),
                decimal("discountpercentage"),
                choice("paymenttermscode", PAYMENT_TERMS),
                choice("shippingmethodcode", SHIPPING_METHODS),
                choice("freighttermscode", FREIGHT_TERMS),
                date("effectivefrom"),
                date("effectiveto"),
                date("requestdeliveryby"),
                memo("description"),
                *address("shipto"),
                text("shipto_name", 200),
                *address("billto"),
                text("billto_name", 200),
                lookup("customerid", "account", "contact", per_target=True),
                lookup("pricelevelid", "pricelevel"),
                lookup("transactioncurrencyid", "transactioncurrency"),
                lookup("opportunityid", "opportunity"),
            ],
            state=QUOTE_STATES,
            status=QUOTE_STATUSES,
            default_status={0: 1, 1: 3, 2: 4, 3: 5},
        ),
        _table(
            "quotedetail",
            "quotedetails",
            "productdescription",
            # The Sales solution adds bcs_availablequantity (solution/Entities/QuoteDetail) when imported.
            document_detail("quote"),
            owned=False,
        ),
        _table(
            "invoice",
            "invoices",
            "name",
            [
                text("name", 300),
                text("invoicenumber", 100),
                *document_totals(),
                money("discountamount"),
                date("duedate"),
                date("datedelivered"),
                choice("paymenttermscode", PAYMENT_TERMS),
                choice("shippingmethodcode", SHIPPING_METHODS),
                memo("description"),
                *address("shipto"),
                text("shipto_name", 200),
                *address("billto"),
                text("billto_name", 200),
                lookup("customerid", "account", "contact", per_target=True),
                lookup("salesorderid", "salesorder"),
                lookup("pricelevelid", "pricelevel"),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            state=INVOICE_STATES,
            status={
                1: "New",
                2: "Partially Shipped",
                4: "Billed",
                5: "Booked",
                6: "Installed",
                100001: "Complete",
                100002: "Partial",
                100003: "Canceled",
            },
            default_status={0: 1, 1: 100001, 2: 100001, 3: 100003},
        ),
        _table(
            "invoicedetail",
            "invoicedetails",
            "productdescription",
            [*document_detail("invoice"), decimal("quantityshipped")],
            owned=False,
        ),
        _table(
            "opportunity",
            "opportunities",
            "name",
            [
                text("name", 300),
                money("estimatedvalue"),
                date("estimatedclosedate"),
                money("actualvalue"),
                date("actualclosedate"),
                memo("description"),
                lookup("customerid", "account", "contact", per_target=True),
                lookup("parentaccountid", "account"),
                lookup("parentcontactid", "contact"),
                lookup("transactioncurrencyid", "transactioncurrency"),
            ],
            state=OPPORTUNITY_STATES,
            status={1: "In Progress", 2: "On Hold", 3: "Won", 4: "Canceled", 5: "Out-Sold"},
            default_status={0: 1, 1: 3, 2: 4},
        ),
        # Solutions, publishers, import jobs, security roles and forms: what a solution import creates
        # or reads (https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/solution
        # and the publisher, importjob, role, systemuserroles and systemform references).
        _table(
            "publisher",
            "publishers",
            "friendlyname",
            [
                text("uniquename", 256),
                text("friendlyname", 256),
                text("customizationprefix", 8),
                integer("customizationoptionvalueprefix"),
                memo("description"),
            ],
            keys=(("uniquename",),),
            owned=False,
            change_tracking=False,
        ),
        _table(
            "solution",
            "solutions",
            "friendlyname",
            [
                text("uniquename", 256),
                text("friendlyname", 256),
                text("version", 256),
                boolean("ismanaged"),
                boolean("isvisible"),
                datetime("installedon"),
                memo("description"),
                lookup("publisherid", "publisher"),
            ],
            keys=(("uniquename",),),
            owned=False,
            change_tracking=False,
        ),
        _table(
            "importjob",
            "importjobs",
            "name",
            [
                text("name", 256),
                text("solutionname", 256),
                guid("solutionid"),
                decimal("progress"),
                datetime("startedon"),
                datetime("completedon"),
                text("data", 1_073_741_823),
                text("operationcontext", 256),
            ],
            owned=False,
            change_tracking=False,
        ),
        _table(
            "role",
            "roles",
            "name",
            [text("name", 100), lookup("businessunitid", "businessunit"), guid("roleidunique")],
            owned=False,
            change_tracking=False,
        ),
        _table(
            "systemuserroles",
            "systemuserrolescollection",
            "systemuserroleid",
            [guid("systemuserid"), guid("roleid")],
            owned=False,
            change_tracking=False,
            primary_key="systemuserroleid",
        ),
        _table(
            "systemform",
            "systemforms",
            "name",
            [
                text("name", 100),
                text("objecttypecode", 100),
                choice(
                    "type",
                    {0: "Dashboard", 2: "Main", 6: "Quick View Form", 7: "Quick Create", 11: "Card"},
                ),
                text("formxml", 1_073_741_823),
                memo("description"),
            ],
            owned=False,
            change_tracking=False,
        ),
        # Plug-in registration tables: not change-tracked.
        _table(
            "serviceendpoint",
            "serviceendpoints",
            "name",
            [
                text("name", 256),
                text("url", 2000),
                text("authvalue", 2048),
                choice("contract", SERVICEENDPOINT_CONTRACTS),
                choice("authtype", SERVICEENDPOINT_AUTHTYPES),
                choice("messageformat", {1: "BinaryXML", 2: "Json", 3: "TextXML"}),
                choice("userclaim", {1: "None", 2: "UserId", 3: "UserInfo"}),
                text("namespaceaddress", 255),
                memo("description"),
            ],
            owned=False,
            change_tracking=False,
        ),
        _table("sdkmessage", "sdkmessages", "name", [text("name", 256)], owned=False, change_tracking=False),
        _table(
            "sdkmessagefilter",
            "sdkmessagefilters",
            "name",
            [
                text("name", 256),
                text("primaryobjecttypecode", 100),
                text("secondaryobjecttypecode", 100),
                lookup("sdkmessageid", "sdkmessage"),
            ],
            owned=False,
            change_tracking=False,
        ),
        _table(
            "sdkmessageprocessingstep",
            "sdkmessageprocessingsteps",
            "name",
            [
                text("name", 256),
                memo("description"),
                choice("stage", STEP_STAGES),
                choice("mode", STEP_MODES),
                integer("rank"),
                choice(
                    "supporteddeployment",
                    {0: "Server Only", 1: "Microsoft Dynamics 365 Client for Outlook Only", 2: "Both"},
                ),
                text("filteringattributes", 100000),
                boolean("asyncautodelete"),
                lookup("sdkmessageid", "sdkmessage"),
                lookup("sdkmessagefilterid", "sdkmessagefilter"),
                lookup("eventhandler", "serviceendpoint", per_target=True),
                lookup("impersonatinguserid", "systemuser"),
            ],
            owned=False,
            change_tracking=False,
            state={0: "Enabled", 1: "Disabled"},
            status={1: "Enabled", 2: "Disabled"},
            default_status={0: 1, 1: 2},
        ),
        _table(
            "sdkmessageprocessingstepimage",
            "sdkmessageprocessingstepimages",
            "name",
            [
                text("name", 256),
                text("entityalias", 256),
                text("attributes", 100000),
                text("messagepropertyname", 256),
                choice("imagetype", {0: "PreImage", 1: "PostImage", 2: "Both"}),
                lookup("sdkmessageprocessingstepid", "sdkmessageprocessingstep"),
            ],
            owned=False,
            change_tracking=False,
        ),
        _table(
            "asyncoperation",
            "asyncoperations",
            "name",
            [
                text("name", 500),
                integer("operationtype"),
                text("message", 100000),
                text("friendlymessage", 100000),
                integer("errorcode"),
                text("primaryentitytype", 100),
                datetime("completedon"),
                guid("correlationid"),
                lookup("owningextensionid", "sdkmessageprocessingstep"),
                lookup("regardingobjectid", "account", "contact", "product"),
            ],
            owned=False,
            change_tracking=False,
            state=ASYNC_STATES,
            status=ASYNC_STATUSES,
            default_status={0: 0, 1: 10, 2: 20, 3: 30},
        ),
        # The Business Central integration solution's company table (BCApps `CDS Company`, table 5393,
        # ExternalName `bcbi_company`): one row per BC company synchronized with this environment.
        _table(
            "bcbi_company",
            "bcbi_companies",
            "bcbi_name",
            [text("bcbi_name", 30), text("bcbi_externalid", 36)],
        ),
    ]
    # ... and the company lookup it adds to the tables BC's connector synchronizes per company
    # (BCApps CRMAccount/CRMContact/CRMProduct/... `.Table.al`, field CompanyId, `bcbi_companyid`).
    company = lookup("bcbi_companyid", "bcbi_company")
    for table in tables:
        if table.logical_name in BC_COMPANY_TABLES:
            table.columns[company.wire_name] = company
    return {t.entity_set: t for t in tables}


BC_COMPANY_TABLES = frozenset(
    {"account", "contact", "product", "pricelevel", "opportunity", "quote", "salesorder", "invoice"}
)


TABLES = build_tables()
# Sales documents and their details: Dataverse computes the details' amounts and the documents' totals.
DOCUMENT_TABLES = {"quote": "quotedetail", "salesorder": "salesorderdetail", "invoice": "invoicedetail"}
DOCUMENT_DETAILS = {detail: document for document, detail in DOCUMENT_TABLES.items()}
TABLES_BY_LOGICAL_NAME = {t.logical_name: t for t in TABLES.values()}

# One-to-many relationships by (referencing table, lookup column, referenced table): the schema name,
# which is also the collection-valued navigation property on the referenced table (`accounts(...)
# ?$expand=contact_customer_accounts`). Real names from the table reference; lookups not listed here
# have no collection-valued navigation property in the sandbox.
RELATIONSHIPS: dict[tuple[str, str, str], str] = {
    ("contact", "parentcustomerid", "account"): "contact_customer_accounts",
    ("contact", "parentcustomerid", "contact"): "contact_customer_contacts",
    ("account", "primarycontactid", "contact"): "account_primary_contact",
    ("account", "parentaccountid", "account"): "account_parent_account",
    ("salesorder", "customerid", "account"): "order_customer_accounts",
    ("salesorder", "customerid", "contact"): "order_customer_contacts",
    ("salesorderdetail", "salesorderid", "salesorder"): "order_details",
    ("quotedetail", "quoteid", "quote"): "quote_details",
    ("invoicedetail", "invoiceid", "invoice"): "invoice_details",
    ("productpricelevel", "productid", "product"): "product_price_levels",
    ("productpricelevel", "pricelevelid", "pricelevel"): "price_level_product_price_levels",
}


def single_navigation(table: Table) -> dict[str, tuple[Column, str]]:
    """Single-valued navigation properties (every lookup, read-only ones too) -> (column, target)."""
    result: dict[str, tuple[Column, str]] = {}
    for column in table.columns.values():
        if column.kind is not Kind.LOOKUP:
            continue
        if column.per_target_navigation:
            for target in column.targets:
                result[f"{column.name}_{target}"] = (column, target)
        else:
            result[column.name] = (column, column.targets[0])
    return result


def collection_navigation(
    table: Table, resolve: Callable[[str], Table | None] = TABLES_BY_LOGICAL_NAME.get
) -> dict[str, tuple[Table, Column]]:
    """Collection-valued navigation properties of `table` -> (referencing table, its lookup column);
    `resolve` finds a table's current definition (a store's, with columns added at run time)."""
    result: dict[str, tuple[Table, Column]] = {}
    for (referencing, column_name, referenced), name in RELATIONSHIPS.items():
        if referenced == table.logical_name:
            other = resolve(referencing) or TABLES_BY_LOGICAL_NAME[referencing]
            result[name] = (other, other.lookup_by_name()[column_name])
    return result
