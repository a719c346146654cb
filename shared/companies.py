"""Several BC companies with one Dataverse environment: how records and stored rows are told apart.

As BC's own connector does (Microsoft's "Data ownership models for synchronization",
https://learn.microsoft.com/dynamics365/business-central/admin-cds-company-concept), each BC company
has a row in the Business Central integration solution's `bcbi_company` table (`bcbi_externalid` =
the BC company id, `bcbi_name`), and the rows synchronized for it carry that row in their
`bcbi_companyid` lookup (BCApps `CRMAccount.Table.al` and its siblings: account, contact, product,
price list, opportunity, quote, order, invoice). Tables without the column (currencies, units of
measure, users) are shared by all companies: each company couples its own records to the same rows.

BC's connector reads, per company, the rows whose company is that company *or empty* and stamps its
company on the rows it couples (`CDS Integration Impl.` `SetCompanyId`), so an untagged row goes to the
first company whose job picks it up. This service makes that choice deterministic: an untagged row
belongs to the **home company**, the company whose rows were stored before there were several (the
first in `BC_COMPANY_IDS`, pinned by set-up). A row created in Sales for another company is tagged
with it by the user (the Company column), exactly as in BC's connector.

Storage keys: the home company keeps the keys of a single-company deployment (no migration);
every other company's keys start with `<company id>:` (see docs/architecture.md, *Storage*).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

COMPANY_TABLE = "bcbi_company"
COMPANY_ENTITY_SET = "bcbi_companies"
COMPANY_PRIMARY_KEY = "bcbi_companyid"
COMPANY_EXTERNAL_ID = "bcbi_externalid"
COMPANY_NAME = "bcbi_name"
# The lookup on synchronized rows, and how the Web API reads and writes it.
COMPANY_COLUMN = "bcbi_companyid"
COMPANY_VALUE = f"_{COMPANY_COLUMN}_value"
COMPANY_BIND = f"{COMPANY_COLUMN}@odata.bind"

# Dataverse tables the Business Central integration solution gives a `bcbi_companyid` column
# (BCApps: CRMAccount, CRMContact, CRMProduct, CRMPricelevel, CRMOpportunity, CRMQuote,
# CRMSalesorder, CRMInvoice `.Table.al`, field `CompanyId`, ExternalName `bcbi_companyid`).
COMPANY_TABLES = frozenset(
    {"account", "contact", "product", "pricelevel", "opportunity", "quote", "salesorder", "invoice"}
)


def same_company(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


def key_prefix(company: str, home: str) -> str:
    """What a company's storage keys start with: nothing for the home company (its rows keep the keys
    they had before there were several companies), `<company id>:` for any other."""
    return "" if same_company(company, home) else f"{company.lower()}:"


def home_company(configured: Sequence[str], pinned: str | None) -> str:
    """The company untagged Dataverse rows and unprefixed stored rows belong to: the one set-up
    pinned (so reordering or removing companies in the setting never re-assigns them), else the first
    configured."""
    return pinned or configured[0]


def company_filter(dv_company_id: str, *, include_untagged: bool) -> str:
    """OData filter of the rows of one company (the home company also takes untagged rows)."""
    own = f"{COMPANY_VALUE} eq {uuid.UUID(dv_company_id)}"
    return f"({own} or {COMPANY_VALUE} eq null)" if include_untagged else own
