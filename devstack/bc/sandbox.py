"""`BcSandbox`: one environment's state and the Python helpers tests and benchmarks use directly.

Reach it as `app.state.sandbox`. Everything here is thread-safe, so a test can seed and change
data while the server runs in another thread.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from devstack.bc import ledger
from devstack.bc.clock import SandboxClock
from devstack.bc.config import BcSandboxConfig
from devstack.bc.seed_data import DEFAULT_COMPANY_ID, SECOND_COMPANY_ID, seed_company, seed_customers
from devstack.bc.store import BcStore, normalize_guid
from devstack.bc.webhooks import WebhookHub
from devstack.sandbox_common.counters import RequestCounters
from devstack.sandbox_common.faults import FaultInjector
from devstack.sandbox_common.limits import ConcurrencyGate, SlidingWindowLimiter

# id -> (name, displayName): in BC `name` is the Company table's key and `displayName` a separate text,
# so a client that looks a company up by one must not get away with using the other.
COMPANIES = {
    DEFAULT_COMPANY_ID: ("CRONUS USA, Inc.", "CRONUS USA, Inc. (Sandbox)"),
    SECOND_COMPANY_ID: ("CRONUS Canada, Inc.", "CRONUS Canada (Sandbox)"),
}
_USER_NAMESPACE = uuid.UUID("5d1c9a0e-2b3c-4d5e-8f6a-7b8c9d0e1f2a")


def user_id(name: str) -> str:
    """The stable user GUID of a sandbox user (as in a subscription's `userId`)."""
    return str(uuid.uuid5(_USER_NAMESPACE, name))


class BcSandbox:
    def __init__(self, config: BcSandboxConfig | None = None) -> None:
        self.config = config or BcSandboxConfig()
        self.clock = SandboxClock()
        self.counters = RequestCounters()
        self.faults = FaultInjector()
        self.limiter = SlidingWindowLimiter(self.config.requests_per_window, self.config.window_seconds)
        self.gate = ConcurrencyGate(
            self.config.max_concurrent, self.config.max_queue, self.config.queue_timeout_seconds
        )
        self.store = BcStore(self.clock)
        self.webhooks = WebhookHub(self.store, self.clock, self.config, self.counters)
        self._seed_companies()

    @property
    def company_id(self) -> str:
        return DEFAULT_COMPANY_ID

    def _seed_companies(self) -> None:
        for company_id, (name, display_name) in COMPANIES.items():
            seed_company(
                self.store, company_id, name, display_name=display_name, with_samples=self.config.sample_data
            )

    def add_company(self, company_id: str, name: str, display_name: str | None = None) -> dict[str, Any]:
        """Another company, with the reference data (and samples) the built-in ones have."""
        if normalize_guid(company_id, "the company id") in self.store.companies:
            raise ValueError(f"company {company_id} exists already")
        seed_company(
            self.store, company_id, name, display_name=display_name, with_samples=self.config.sample_data
        )
        return dict(self.store.company(company_id).to_json())

    def reset(self) -> None:
        """Back to the state at start: data, subscriptions, deliveries, counters, faults, limits' windows."""
        with self.store.lock:
            self.store.companies.clear()
            self.store.change_log.clear()
            self._seed_companies()
        self.webhooks.reset()
        self.counters.reset()
        self.faults.clear()
        self.limiter.reset()

    # --- data -------------------------------------------------------------------------------------

    def seed_customers(
        self,
        count: int,
        *,
        company_id: str | None = None,
        seed: int = 0,
        start: int = 1,
        company_contacts: bool = False,
    ) -> list[str]:
        """Insert `count` generated customers (no notifications). 100,000 take a few seconds.

        For speed the generator leaves out the company contact BC creates with every customer;
        `company_contacts=True` creates them (and their business relations) as `seed` does."""
        return seed_customers(
            self.store,
            company_id or self.company_id,
            count,
            seed=seed,
            start=start,
            company_contacts=company_contacts,
        )

    def seed_posted_invoices(
        self,
        customers: list[str],
        items: list[str],
        count: int,
        lines: int,
        *,
        company_id: str | None = None,
    ) -> list[str]:
        """`count` posted sales invoices of `lines` lines each (customer and item numbers taken in
        turn), created as BC's posting does: header and lines, then status Open. No notifications."""
        company = company_id or self.company_id
        ids: list[str] = []
        with self.store.quiet(), self.store.transaction():
            for n in range(count):
                body = {
                    "customerNumber": customers[n % len(customers)],
                    "salesInvoiceLines": [
                        {"lineObjectNumber": items[(n + k) % len(items)], "quantity": 1 + k % 5}
                        for k in range(lines)
                    ],
                }
                invoice, _ = self.store.create_document(
                    company, "salesInvoices", body, "SEED", lines_set="salesInvoiceLines"
                )
                posted = {"status": "Open", "remainingAmount": invoice["totalAmountIncludingTax"]}
                ids.append(
                    self.store.system_update(company, "salesInvoices", invoice["id"], posted, "SEED")["id"]
                )
        return ids

    def seed(
        self, entity_set: str, records: Iterable[Mapping[str, Any]], *, company_id: str | None = None
    ) -> list[str]:
        """Insert records through the business rules, without notifications. Returns their ids.
        Customers and vendors get their company contacts, as in BC."""
        return self.store.seed(company_id or self.company_id, entity_set, records)

    def company_contact(self, customer_or_vendor_id: str, *, company_id: str | None = None) -> dict[str, Any]:
        """The stored company contact (hidden keys included) related to a customer or vendor by
        its business relation. KeyError if there is none (unknown id, generated without contacts,
        relation deleted)."""
        company = company_id or self.company_id
        contact = self.store.company_contact(company, customer_or_vendor_id)
        if contact is None:
            raise KeyError(
                f"no company contact is related to customer/vendor {customer_or_vendor_id} in company "
                f"{company} (unknown id, seeded with company_contacts=False, or the relation was removed)"
            )
        return contact

    def change(
        self,
        entity_set: str,
        record_id: str,
        changes: Mapping[str, Any],
        *,
        user: str = "SALES",
        company_id: str | None = None,
    ) -> dict[str, Any]:
        """A change made in BC by `user` (notified like any other). Returns the stored record."""
        company = company_id or self.company_id
        current = self.store.get(company, entity_set, record_id)
        return self.store.update(company, entity_set, record_id, changes, user, if_match=current["_etag"])

    def post_item_entries(
        self, entries: Iterable[Mapping[str, Any]], *, user: str = "SALES", company_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Post stock in BC (item ledger entries, one transaction): the items' `inventory` moves, their
        `lastModifiedDateTime` and ETag do not, and nothing is notified (devstack/bc/ledger.py)."""
        return ledger.post_item_entries(self.store, company_id or self.company_id, entries, user)

    def get(self, entity_set: str, record_id: str, *, company_id: str | None = None) -> dict[str, Any]:
        """The stored record, hidden keys included (`_by`: who changed it last)."""
        return self.store.get(company_id or self.company_id, entity_set, record_id)

    # --- time and limits --------------------------------------------------------------------------

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def set_limits(self, **limits: float) -> dict[str, float]:
        """Change service-protection limits at runtime; keys as in `limits()`."""
        unknown = set(limits) - set(self.limits())
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(self.limits())}")
        for name, value in limits.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"limit '{name}' must be a non-negative number")
        if "requests_per_window" in limits:
            self.limiter.max_requests = int(limits["requests_per_window"])
        if "window_seconds" in limits:
            self.limiter.window_seconds = float(limits["window_seconds"])
        if "max_concurrent" in limits:
            self.gate.max_concurrent = int(limits["max_concurrent"])
        if "max_queue" in limits:
            self.gate.max_queue = int(limits["max_queue"])
        if "queue_timeout_seconds" in limits:
            self.gate.queue_timeout = float(limits["queue_timeout_seconds"])
        if "max_page_size" in limits:
            self.config.max_page_size = int(limits["max_page_size"])
        if "max_batch_operations" in limits:
            self.config.max_batch_operations = int(limits["max_batch_operations"])
        self.limiter.reset()
        return self.limits()

    def limits(self) -> dict[str, float]:
        return {
            "requests_per_window": self.limiter.max_requests,
            "window_seconds": self.limiter.window_seconds,
            "max_concurrent": self.gate.max_concurrent,
            "max_queue": self.gate.max_queue,
            "queue_timeout_seconds": self.gate.queue_timeout,
            "max_page_size": self.config.max_page_size,
            "max_batch_operations": self.config.max_batch_operations,
        }

    WEBHOOK_SETTINGS = (
        "coalesce_seconds",
        "collection_threshold",
        "handshake_timeout_seconds",
        "delivery_timeout_seconds",
        "retry_delays_seconds",
        "subscription_lifetime_seconds",
        "notification_lead_ms",
        "null_update_threshold_ms",
    )

    def set_webhook_config(self, **settings: Any) -> dict[str, Any]:
        unknown = set(settings) - set(self.WEBHOOK_SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown webhook setting(s) {sorted(unknown)}; known: {list(self.WEBHOOK_SETTINGS)}"
            )
        for name, value in settings.items():
            if name == "retry_delays_seconds":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, int | float) and v >= 0 for v in value
                ):
                    raise ValueError("'retry_delays_seconds' must be a list of non-negative numbers")
                value = tuple(float(v) for v in value)
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"'{name}' must be a non-negative number")
            setattr(self.config, name, value)
        return self.webhook_config()

    def webhook_config(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in self.WEBHOOK_SETTINGS}

    def flush_webhooks(self, timeout: float = 30.0) -> int:
        """Deliver pending notifications now and wait for every delivery (retries included)."""
        return self.webhooks.flush_threadsafe(timeout)

    def user_for_token(self, token: str) -> str | None:
        return self.config.users.get(token)

    def user_for_web_service_key(self, credentials: str) -> str | None:
        """The BC user of `Basic base64(user:key)` when the key is that user's, else None."""
        try:
            name, _, key = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = self.config.web_service_keys.get(name)
        if known is None or not hmac.compare_digest(known[0].encode(), key.encode()):
            return None
        return known[1]
