"""Customer statistics for salespeople: BC's figures per coupled customer, pushed to Dataverse.

Like the built-in connector's "Update Account Statistics" (BC's "CRM Statistics Job",
`CRMStatisticsJob.Codeunit.al` in
https://github.com/microsoft/BCApps/tree/main/src/Layers/W1/BaseApp/Integration/D365Sales), but with
bulk reads and writes, and only for customers whose figures changed since the last push:

- reads, one paged query per entity set for all customers: `customers?$expand=customerFinancialDetail`
  (balance, total sales, overdue amount; credit limit from the customer), `salesOrders?$expand=
  salesOrderLines` (outstanding orders, shipped not invoiced) and the open `salesInvoices`
  (outstanding invoices);
- compares each coupled customer's figures with a hash of what was pushed last (Table Storage,
  `Watermarks` partition `statistics`), so an unchanged customer costs no write at all;
- writes the changed ones with `UpsertMultiple` on `bcs_customerstatistics` by its alternate key
  `bcs_customerno`, linked to the coupled account.

All amounts are in BC's local currency. `bcs_asofdate` is the date the figures were computed, i.e. the
last push in which they changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.connectors.business_central import BusinessCentralClient
from shared.connectors.dataverse import DataverseClient, with_setup_hint
from shared.mapping.schema import EntityMapping, MappingSet
from shared.odata import eq
from shared.store.couplings import CouplingStore
from shared.store.statistics_hashes import PushedHash, StatisticsHashStore

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = logging.getLogger(__name__)

STATISTICS_ENTITY_SET = "bcs_customerstatistics"
FIGURES = (
    "balance",
    "outstanding_orders",
    "shipped_not_invoiced",
    "outstanding_invoices",
    "total_sales",
    "overdue_amount",
    "credit_limit",
)
# Our figure -> the Dataverse column of `bcs_customerstatistic`.
COLUMNS = {
    "balance": "bcs_balance",
    "outstanding_orders": "bcs_outstandingorders",
    "shipped_not_invoiced": "bcs_shippednotinvoiced",
    "outstanding_invoices": "bcs_outstandinginvoices",
    "total_sales": "bcs_totalsales",
    "overdue_amount": "bcs_overdueamount",
    "credit_limit": "bcs_creditlimit",
}


@dataclass(frozen=True)
class CustomerFigures:
    customer_id: str
    number: str
    name: str
    balance: float = 0.0
    outstanding_orders: float = 0.0
    shipped_not_invoiced: float = 0.0
    outstanding_invoices: float = 0.0
    total_sales: float = 0.0
    overdue_amount: float = 0.0
    credit_limit: float = 0.0

    def fingerprint(self) -> str:
        """What decides whether a push is needed: the figures and the labels shown with them."""
        data = {"number": self.number, "name": self.name, **{f: round(getattr(self, f), 2) for f in FIGURES}}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass
class StatisticsReport:
    customers: int = 0  # coupled, not skipped customers looked at
    changed: int = 0  # whose figures differ from the last push
    written: int = 0  # rows upserted in Dataverse
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)  # "<customer no.>: <error>"
    bc_requests: int = 0
    dataverse_requests: int = 0
    as_of: str = ""


# ----------------------------------------------------------------------------------- pure figures
def _amount(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def compute_figures(
    customers: Iterable[Mapping[str, Any]],
    orders: Iterable[Mapping[str, Any]],
    open_invoices: Iterable[Mapping[str, Any]],
) -> dict[str, CustomerFigures]:
    """Per customer id, from BC records as read (pure).

    - outstanding orders: the not yet shipped part of each order line, `amountIncludingTax *
      (quantity - shippedQuantity) / quantity`;
    - shipped not invoiced: `amountIncludingTax * (shippedQuantity - invoicedQuantity) / quantity`
      (`invoicedQuantity` is 0 where the API does not return it);
    - outstanding invoices: `remainingAmount` of the open (posted, unpaid) invoices.
    """
    outstanding: dict[str, float] = defaultdict(float)
    shipped: dict[str, float] = defaultdict(float)
    for order in orders:
        customer = str(order.get("customerId") or "")
        for line in order.get("salesOrderLines") or []:
            quantity = _amount(line.get("quantity"))
            if quantity <= 0:
                continue
            per_unit = _amount(line.get("amountIncludingTax")) / quantity
            shipped_qty = min(quantity, _amount(line.get("shippedQuantity")))
            invoiced_qty = min(shipped_qty, _amount(line.get("invoicedQuantity")))
            outstanding[customer] += per_unit * (quantity - shipped_qty)
            shipped[customer] += per_unit * (shipped_qty - invoiced_qty)
    invoiced: dict[str, float] = defaultdict(float)
    for invoice in open_invoices:
        invoiced[str(invoice.get("customerId") or "")] += _amount(invoice.get("remainingAmount"))
    figures = {}
    for c in customers:
        cid = str(c["id"])
        financial = c.get("customerFinancialDetail") or {}
        figures[cid] = CustomerFigures(
            customer_id=cid,
            number=str(c.get("number") or ""),
            name=str(c.get("displayName") or ""),
            balance=round(_amount(financial.get("balance", c.get("balanceDue"))), 2),
            outstanding_orders=round(outstanding[cid], 2),
            shipped_not_invoiced=round(shipped[cid], 2),
            outstanding_invoices=round(invoiced[cid], 2),
            total_sales=round(_amount(financial.get("totalSalesExcludingTax")), 2),
            overdue_amount=round(_amount(financial.get("overdueAmount")), 2),
            credit_limit=round(_amount(c.get("creditLimit")), 2),
        )
    return figures


def statistics_row(
    figures: CustomerFigures, account_id: str, as_of: dt.date, *, by_id: bool = False
) -> dict[str, Any]:
    """The `bcs_customerstatistics` row for `UpsertMultiple`, addressed by its alternate key (the
    customer number), or `by_id` (a company other than the home company, whose customer numbers
    may repeat another company's: its row has an id derived from the account, and a number that is
    the home company's too is refused by the key instead of overwriting that company's figures)."""
    number = figures.number.replace("'", "''")
    address: dict[str, Any] = (
        {
            "bcs_customerstatisticid": str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"bcs_customerstatistics/{account_id}")
            )
        }
        if by_id
        else {"@odata.id": f"{STATISTICS_ENTITY_SET}(bcs_customerno='{number}')"}
    )
    row: dict[str, Any] = {
        **address,
        "bcs_customerno": figures.number,
        "bcs_name": figures.name[:100],
        "bcs_accountid@odata.bind": f"/accounts({account_id})",
        "bcs_asofdate": as_of.isoformat(),
    }
    row.update({column: getattr(figures, name) for name, column in COLUMNS.items()})
    return row


# ----------------------------------------------------------------------------------------- the push
class StatisticsPusher:
    def __init__(
        self,
        *,
        bc: BusinessCentralClient,
        dv: DataverseClient,
        company_id: str,
        couplings: CouplingStore,
        hashes: StatisticsHashStore,
        mapping: EntityMapping,
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
    ) -> None:
        self.bc, self.dv, self.company_id = bc, dv, company_id
        self.couplings, self.hashes, self.mapping = couplings, hashes, mapping
        self.today = today

    def push(self) -> StatisticsReport:
        bc_before, dv_before = self.bc.stats.total, self.dv.stats.total
        report = StatisticsReport(as_of=self.today().isoformat())
        coupled = self._coupled_customers()
        report.customers = len(coupled)
        if coupled:
            figures = self._read_figures()
            pushed = self.hashes.pushed()
            changed = [
                (figures[bc_id], dv_id)
                for bc_id, dv_id in coupled.items()
                if bc_id in figures and pushed.get(bc_id) != figures[bc_id].fingerprint()
            ]
            report.changed = len(changed)
            report.unchanged = len(coupled) - len(changed)
            if changed:
                self._write(changed, report)
        report.bc_requests = self.bc.stats.total - bc_before
        report.dataverse_requests = self.dv.stats.total - dv_before
        return report

    def _coupled_customers(self) -> dict[str, str]:
        """BC customer id -> Dataverse account id, skipped couplings left out (as the built-in)."""
        skipped = {c.bc_id for c in self.couplings.each(self.mapping.name, only="skipped")}
        return {
            bc_id: dv_id
            for bc_id, dv_id in self.couplings.all_ids(self.mapping.name, "bc")
            if dv_id and bc_id not in skipped
        }

    def _read_figures(self) -> dict[str, CustomerFigures]:
        customers = self.bc.query(
            self.company_id,
            "customers",
            select=["id", "number", "displayName", "creditLimit", "balanceDue"],
            expand=["customerFinancialDetail"],
        )
        orders = self.bc.query(
            self.company_id, "salesOrders", select=["id", "customerId"], expand=["salesOrderLines"]
        )
        invoices = self.bc.query(
            self.company_id,
            "salesInvoices",
            select=["id", "customerId", "remainingAmount"],
            filter=eq("status", "Open"),
        )
        return compute_figures(list(customers), list(orders), list(invoices))

    def _write(self, changed: list[tuple[CustomerFigures, str]], report: StatisticsReport) -> None:
        as_of = self.today()
        by_id = bool(self.couplings.scope)  # a company other than the home company
        rows = [statistics_row(f, dv_id, as_of, by_id=by_id) for f, dv_id in changed]
        results = self.dv.upsert_multiple(STATISTICS_ENTITY_SET, rows)
        done: list[CustomerFigures] = []
        for (figures, _), result in zip(changed, results, strict=True):
            if result.ok:
                done.append(figures)
            else:
                # A service never set up: the table does not exist, and the failure says to run set-up.
                error = with_setup_hint(result.error) if result.error is not None else "not written"
                report.failed.append(f"{figures.number}: {error}")
        report.written = len(done)
        self.hashes.remember(PushedHash(f.customer_id, f.fingerprint(), f.number) for f in done)


def customer_mapping(ms: MappingSet) -> EntityMapping:
    """The mapping that couples BC customers (its couplings say which accounts get statistics)."""
    for m in ms.entities():
        if m.bc.entity_set == "customers":
            return m
    raise LookupError("no active mapping couples BC customers; customer statistics need one")


def push_statistics(rt: Runtime) -> StatisticsReport:
    """The timer's and the on-demand action's entry point (`rt`: `shared.runtime.Runtime`): every
    configured company's customers, each from its own BC company, couplings and hashes."""
    total = StatisticsReport()
    for company in rt.companies:
        report = _push_company(rt.for_company(company))
        total.customers += report.customers
        total.changed += report.changed
        total.written += report.written
        total.unchanged += report.unchanged
        total.failed += report.failed
        total.bc_requests += report.bc_requests
        total.dataverse_requests += report.dataverse_requests
        total.as_of = max(total.as_of, report.as_of)
    return total


def _push_company(rt: Runtime) -> StatisticsReport:
    pusher = StatisticsPusher(
        bc=rt.bc,
        dv=rt.dataverse,
        company_id=rt.company_id,
        couplings=rt.couplings,
        hashes=rt.statistics_hashes,
        mapping=customer_mapping(rt.mappings),
    )
    report = pusher.push()
    log.info(
        "customer statistics: %d coupled, %d changed, %d written, %d failed (%d BC + %d Dataverse requests)",
        report.customers, report.changed, report.written, len(report.failed), report.bc_requests,
        report.dataverse_requests,
    )  # fmt: skip
    return report
