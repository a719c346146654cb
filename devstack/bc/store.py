"""The sandbox's data: companies, their records, business rules, ETags and the change feed.

Records are plain dicts in wire form (documented fields in order) plus hidden keys starting with
`_` (`_etag`, `_ms` = lastModifiedDateTime in epoch ms, `_by` = the user who changed it last; a
customer's or vendor's `_contactId` = its company contact; a company contact's business relation
`_relatedType`/`_relatedId`). `to_wire` serializes documented fields only, so these never reach JSON.
A stored record is never mutated: a write stores a new dict, so readers can hold rows without
the lock, and a transaction rolls back by putting the old dicts back.

Every write runs in a transaction (`$batch` with `Isolation: snapshot` wraps several in one);
committed changes go to the change log and to listeners (the webhook hub) after the commit.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from devstack.bc.clock import SandboxClock, iso_ms
from devstack.bc.entities import (
    BOOL,
    BUSINESS_RELATIONS,
    COMPANY_CONTACT_FIELDS,
    DATE,
    DATETIME,
    DOCUMENT_SETS,
    ENTITY_SETS,
    GUID,
    LINE_SETS,
    LINES_OF,
    NO_BUSINESS_RELATION,
    NO_RELATION,
    NUM,
    STR,
    ZERO_GUID,
    EntitySet,
    Field,
)
from devstack.bc.errors import BcError, bad_request, entity_changed, missing_if_match, record_not_found

CHANGE_LOG_SIZE = 100_000
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EDM_TYPES = {
    STR: "Edm.String",
    NUM: "Edm.Decimal",
    BOOL: "Edm.Boolean",
    GUID: "Edm.Guid",
    DATE: "Edm.Date",
    DATETIME: "Edm.DateTimeOffset",
}


_STAMP_KEYS = frozenset({"_ms", "lastModifiedDateTime", "_etag", "_by"})


def _visible(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its stamp (time, ETag, last user): equal when no field changed."""
    return {k: v for k, v in record.items() if k not in _STAMP_KEYS}


@dataclass(frozen=True)
class Change:
    """One committed change, as the change log and the webhook hub see it."""

    seq: int
    company_id: str
    entity_set: str
    record_id: str
    change_type: str  # created | updated | deleted
    last_modified: str
    last_modified_ms: int
    user: str
    # A PATCH that changed no field: the record keeps its time and ETag (the platform updates
    # SystemModifiedAt only on an actual change); BC still registers a notification, which its
    # sender drops as a null update (see devstack/bc/webhooks.py). Not in the change log.
    null_update: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "companyId": self.company_id,
            "entitySet": self.entity_set,
            "id": self.record_id,
            "changeType": self.change_type,
            "lastModifiedDateTime": self.last_modified,
            "user": self.user,
        }


ChangeListener = Callable[[Change], None]


@dataclass
class Company:
    id: str
    name: str
    display_name: str
    local_currency: str
    created_at: str
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # entity set -> number/code -> id
    next_number: dict[str, int] = field(default_factory=dict)
    # (line set, document id) -> ids of its lines: a document's lines without scanning every line.
    lines_index: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "systemVersion": "25.0.23364.24709",
            "timestamp": 0,
            "name": self.name,
            "displayName": self.display_name,
            "businessProfileId": "",
            "systemCreatedAt": self.created_at,
            "systemCreatedBy": ZERO_GUID,
            "systemModifiedAt": self.created_at,
            "systemModifiedBy": ZERO_GUID,
        }


def make_etag(record_id: str, row_version: int) -> str:
    """An opaque weak ETag shaped like BC's: base64 of `'44;<base64 hash>1;00;'`."""
    digest = base64.b64encode(hashlib.sha256(f"{record_id}:{row_version}".encode()).digest()).decode()
    inner = f"'{len(digest)};{digest}1;00;'"
    return 'W/"' + base64.b64encode(inner.encode()).decode() + '"'


def _etag_matches(if_match: str, current: str) -> bool:
    if if_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == current.removeprefix("W/") for tag in if_match.split(","))


def normalize_guid(text: str, what: str = "id") -> str:
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise bad_request(f"'{text}' is not a valid value for {what}: a GUID is expected.") from None


class BcStore:
    """All companies of one environment. Thread-safe (one re-entrant lock)."""

    def __init__(self, clock: SandboxClock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.companies: dict[str, Company] = {}
        self.listeners: list[ChangeListener] = []
        self.change_log: deque[Change] = deque(maxlen=CHANGE_LOG_SIZE)
        self._row_version = 0
        self._seq = 0
        self._undo: list[Callable[[], None]] | None = None
        self._pending: list[Change] = []
        self._emit_changes = True

    # --- companies --------------------------------------------------------------------------------

    def add_company(
        self, company_id: str, name: str, local_currency: str = "USD", display_name: str | None = None
    ) -> Company:
        with self.lock:
            company = Company(
                id=normalize_guid(company_id),
                name=name,
                display_name=name if display_name is None else display_name,
                local_currency=local_currency,
                created_at=iso_ms(self.clock.now_ms()),
            )
            for entity in ENTITY_SETS.values():
                company.tables[entity.name] = {}
                company.keys[entity.name] = {}
                company.next_number[entity.name] = 10
            self.companies[company.id] = company
            return company

    def company(self, company_id: str) -> Company:
        key = normalize_guid(company_id, "the company id")
        company = self.companies.get(key)
        if company is None:
            raise BcError(
                404,
                "BadRequest_NotFound",
                f"The company with id '{company_id}' does not exist in this environment.",
            )
        return company

    # --- reads ------------------------------------------------------------------------------------

    def rows(self, company_id: str, entity_set: str) -> list[dict[str, Any]]:
        """A consistent list of the current records (safe to use without the lock)."""
        with self.lock:
            return list(self.company(company_id).tables[entity_set].values())

    def get(self, company_id: str, entity_set: str, record_id: str) -> dict[str, Any]:
        entity = ENTITY_SETS[entity_set]
        key = normalize_guid(record_id)
        with self.lock:
            record = self.company(company_id).tables[entity_set].get(key)
        if record is None:
            raise record_not_found(entity.caption, key)
        return record

    def find_by_key(self, company_id: str, entity_set: str, key: str) -> dict[str, Any] | None:
        """The record with this number/code (case-insensitive, as BC's Code fields), or None."""
        with self.lock:
            company = self.company(company_id)
            record_id = company.keys[entity_set].get(key.upper())
            return company.tables[entity_set].get(record_id) if record_id else None

    # --- transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; joins an enclosing transaction."""
        with self.lock:
            if self._undo is not None:
                yield
                return
            self._undo, self._pending = [], []
            try:
                yield
            except BaseException:
                for undo in reversed(self._undo):
                    undo()
                self._undo, self._pending = None, []
                raise
            committed, self._undo, self._pending = self._pending, None, []
            self.change_log.extend(c for c in committed if not c.null_update)
        for change in committed:
            for listener in list(self.listeners):
                listener(change)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Writes inside are not notified nor logged (seeding reference and bulk data)."""
        with self.lock:
            previous, self._emit_changes = self._emit_changes, False
            try:
                yield
            finally:
                self._emit_changes = previous

    # --- writes -----------------------------------------------------------------------------------

    def create(
        self,
        company_id: str,
        entity_set: str,
        body: Mapping[str, Any],
        user: str,
        *,
        parent_id: str | None = None,
        record_id: str | None = None,
        company_contact: bool = True,
    ) -> dict[str, Any]:
        """Insert a record; `record_id` fixes the id (seeding only: the API never lets a client).

        A customer or vendor gets its company contact, linked by a business relation, as BC does
        with the default Marketing Setup; `company_contact=False` leaves it out (bulk seeding)."""
        entity = ENTITY_SETS[entity_set]
        with self.transaction():
            company = self.company(company_id)
            record = entity.template()
            record["id"] = normalize_guid(record_id) if record_id else str(uuid.uuid4())
            if record["id"] in company.tables[entity_set]:
                raise bad_request(
                    f"A {entity.caption} with id '{record['id']}' already exists.",
                    "Internal_EntityWithSameKeyExists",
                )
            if parent_id is not None:
                record["documentId"] = normalize_guid(parent_id)
            changed = self._apply_body(entity, record, body, creating=True)
            if parent_id is not None:
                changed.add("documentId")
            self._apply_rules(company, entity, record, changed, creating=True)
            self._assign_key(company, entity, record)
            self._after_key(entity, record)
            relation = BUSINESS_RELATIONS.get(entity_set) if company_contact else None
            if relation is not None:
                record["_contactId"] = str(uuid.uuid4())
            self._stamp(record, None, user)
            self._put(company, entity_set, record)
            self._emit(company, entity_set, record, "created", user)
            if relation is not None:
                self._create_company_contact(company, record, relation, user)
            self._after_write(company, entity, record, user)
            return record

    def create_document(
        self, company_id: str, entity_set: str, body: Mapping[str, Any], user: str, *, lines_set: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Deep insert: the header and its lines in one transaction (a refused line refuses all).

        BC's API pages insert the header (`DelayedInsert`), then each line through the lines page
        with the header's id as `documentId`; the line rules (item, unit price, amounts) and the
        header totals are those of single inserts."""
        lines = body.get(lines_set)
        if not isinstance(lines, list) or not all(isinstance(line, Mapping) for line in lines):
            raise bad_request(f"'{lines_set}' must be an array of objects.", "BadRequest")
        header_body = {k: v for k, v in body.items() if k != lines_set}
        with self.transaction():
            header = self.create(company_id, entity_set, header_body, user)
            created = [
                self.create(company_id, lines_set, line, user, parent_id=header["id"]) for line in lines
            ]
            return self.get(company_id, entity_set, header["id"]), created

    def update(
        self,
        company_id: str,
        entity_set: str,
        record_id: str,
        body: Mapping[str, Any],
        user: str,
        *,
        if_match: str | None,
    ) -> dict[str, Any]:
        entity = ENTITY_SETS[entity_set]
        with self.transaction():
            company = self.company(company_id)
            current = self._checked_current(entity, company, record_id, if_match)
            record = dict(current)
            changed = self._apply_body(entity, record, body, creating=False)
            self._apply_rules(company, entity, record, changed, creating=False, previous=current)
            if entity.key and entity.key in changed:
                self._assign_key(company, entity, record, previous=current)
            self._after_key(entity, record)
            if _visible(record) == _visible(current):
                # Nothing changed: nothing is written, but OnDatabaseModify still ran.
                self._emit(company, entity_set, {**current, "_ms": self.clock.now_ms()}, "updated", user,
                           null_update=True)  # fmt: skip
                return current
            self._stamp(record, current["_ms"], user)
            self._put(company, entity_set, record)
            self._emit(company, entity_set, record, "updated", user)
            self._after_write(company, entity, record, user, previous=current)
            return record

    def system_update(
        self, company_id: str, entity_set: str, record_id: str, values: Mapping[str, Any], user: str
    ) -> dict[str, Any]:
        """A write by BC's own code (posting): read-only fields included, no API rules; a new ETag
        and a notification like any modify. A line's change updates its document's totals."""
        entity = ENTITY_SETS[entity_set]
        with self.transaction():
            company = self.company(company_id)
            current = company.tables[entity_set][normalize_guid(record_id)]
            record = {**current, **values}
            if _visible(record) == _visible(current):
                return current
            self._stamp(record, current["_ms"], user)
            self._put(company, entity_set, record)
            self._emit(company, entity_set, record, "updated", user)
            self._after_write(company, entity, record, user, previous=current)
            return record

    def delete(
        self,
        company_id: str,
        entity_set: str,
        record_id: str,
        user: str,
        *,
        if_match: str | None,
        system: bool = False,
    ) -> None:
        """`system`: BC's own deletion (a posted order, a quote made into an order): no API checks."""
        entity = ENTITY_SETS[entity_set]
        with self.transaction():
            company = self.company(company_id)
            current = self._checked_current(entity, company, record_id, if_match)
            if not system:
                self._check_deletable(company, entity, current)
            self._remove(company, entity_set, current)
            deleted_ms = max(self.clock.now_ms(), current["_ms"] + 1)
            self._emit(company, entity_set, {**current, "_ms": deleted_ms}, "deleted", user)
            line_set = LINES_OF.get(entity.name)
            if line_set is not None:
                for line in self._lines_of(company, current["id"], line_set):
                    self._remove(company, line_set, line)
            self._after_write(company, entity, current, user, previous=current, deleted=True)

    def seed(
        self,
        company_id: str,
        entity_set: str,
        records: Iterable[Mapping[str, Any]],
        user: str = "SEED",
        *,
        company_contacts: bool = True,
    ) -> list[str]:
        """Insert records through the normal rules (validated), without notifications. Returns ids.
        `company_contacts=False`: customers/vendors without their company contacts (bulk data)."""
        ids: list[str] = []
        with self.quiet(), self.transaction():
            for body in records:
                ids.append(
                    self.create(company_id, entity_set, body, user, company_contact=company_contacts)["id"]
                )
        return ids

    # --- write helpers ----------------------------------------------------------------------------

    def _checked_current(
        self, entity: EntitySet, company: Company, record_id: str, if_match: str | None
    ) -> dict[str, Any]:
        key = normalize_guid(record_id)
        current = company.tables[entity.name].get(key)
        if current is None:
            raise record_not_found(entity.caption, key)
        if not if_match:
            raise missing_if_match()
        if not _etag_matches(if_match, current["_etag"]):
            raise entity_changed()
        return current

    def _apply_body(
        self, entity: EntitySet, record: dict[str, Any], body: Mapping[str, Any], *, creating: bool
    ) -> set[str]:
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.")
        changed: set[str] = set()
        for name, value in body.items():
            if name.startswith("@odata."):
                continue  # annotations (a record read back and sent again) are ignored, as BC does
            spec = entity.by_name.get(name)
            if spec is None:
                raise bad_request(
                    f"The property '{name}' does not exist on type '{entity.type_name}'. "
                    "Make sure to only use property names that are defined by the type."
                )
            coerced = _coerce(entity, spec, _null_as_default(spec, value))
            if spec.read_only:
                if _same_value(spec, coerced, record.get(name)):
                    continue  # a record read and sent back whole: the unchanged read-only values are ignored
                # BC's words for a write to a non-editable page control (as reported by integrators;
                # the code is unverified).
                raise bad_request(
                    f"Control '{name}' is read-only. Leave it out of the body or send its current value."
                )
            record[name] = coerced
            changed.add(name)
        return changed

    def _assign_key(
        self,
        company: Company,
        entity: EntitySet,
        record: dict[str, Any],
        previous: Mapping[str, Any] | None = None,
    ) -> None:
        if entity.key is None:
            return
        keys = company.keys[entity.name]
        value = record[entity.key]
        if not value:
            if entity.key == "code":
                raise bad_request(
                    f"The field 'code' of {entity.caption} must have a value.", "Application_DialogException"
                )
            value = self._next_number(company, entity)
            record["number"] = value
        owner = keys.get(value.upper())
        if owner is not None and owner != record["id"]:
            raise bad_request(
                f"The record in table {entity.caption} already exists. Identification fields and values: "
                f"{'No.' if entity.key == 'number' else 'Code'}='{value}'",
                "Internal_EntityWithSameKeyExists",
            )

    def _next_number(self, company: Company, entity: EntitySet) -> str:
        keys = company.keys[entity.name]
        n = company.next_number[entity.name]
        while f"{entity.number_prefix}{n:05d}" in keys:
            n += 10
        company.next_number[entity.name] = n + 10
        self._record_undo(lambda: company.next_number.__setitem__(entity.name, n))
        return f"{entity.number_prefix}{n:05d}"

    def _stamp(self, record: dict[str, Any], previous_ms: int | None, user: str) -> None:
        """New ETag and lastModifiedDateTime (ms, strictly increasing per record)."""
        self._row_version += 1
        ms = self.clock.now_ms()
        if previous_ms is not None and ms <= previous_ms:
            ms = previous_ms + 1
        record["_ms"] = ms
        record["lastModifiedDateTime"] = iso_ms(ms)
        record["_etag"] = make_etag(record["id"], self._row_version)
        record["_by"] = user

    def _put(self, company: Company, entity_set: str, record: dict[str, Any]) -> None:
        table, keys = company.tables[entity_set], company.keys[entity_set]
        entity = ENTITY_SETS[entity_set]
        old = table.get(record["id"])
        table[record["id"]] = record
        if entity.key:
            if old is not None:
                keys.pop(old[entity.key].upper(), None)
            keys[record[entity.key].upper()] = record["id"]
        if entity_set in LINE_SETS:
            _index_line(company, entity_set, old, None)
            _index_line(company, entity_set, record, record)

        def undo() -> None:
            if entity.key:
                keys.pop(record[entity.key].upper(), None)
            if entity_set in LINE_SETS:
                _index_line(company, entity_set, record, None)
                _index_line(company, entity_set, old, old)
            if old is None:
                table.pop(record["id"], None)
            else:
                table[record["id"]] = old
                if entity.key:
                    keys[old[entity.key].upper()] = old["id"]

        self._record_undo(undo)

    def _remove(self, company: Company, entity_set: str, record: dict[str, Any]) -> None:
        table, keys = company.tables[entity_set], company.keys[entity_set]
        entity = ENTITY_SETS[entity_set]
        table.pop(record["id"], None)
        if entity.key:
            keys.pop(record[entity.key].upper(), None)
        if entity_set in LINE_SETS:
            _index_line(company, entity_set, record, None)

        def undo() -> None:
            table[record["id"]] = record
            if entity.key:
                keys[record[entity.key].upper()] = record["id"]
            if entity_set in LINE_SETS:
                _index_line(company, entity_set, record, record)

        self._record_undo(undo)

    def _record_undo(self, undo: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def _emit(
        self,
        company: Company,
        entity_set: str,
        record: Mapping[str, Any],
        change_type: str,
        user: str,
        *,
        null_update: bool = False,
    ) -> None:
        if not self._emit_changes:
            return
        self._seq += 1
        ms = record["_ms"]
        change = Change(
            self._seq, company.id, entity_set, record["id"], change_type, iso_ms(ms), ms, user, null_update
        )
        self._pending.append(change)

    # --- business rules ---------------------------------------------------------------------------

    def _apply_rules(
        self,
        company: Company,
        entity: EntitySet,
        record: dict[str, Any],
        changed: set[str],
        *,
        creating: bool,
        previous: Mapping[str, Any] | None = None,
    ) -> None:
        if entity.name in ("customers", "vendors"):
            self._check_currency(company, record, changed, creating)
            self._check_ref_id(company, record, changed, "paymentTermsId", "paymentTerms", "Payment Term")
            self._check_ref_id(
                company, record, changed, "paymentMethodId", "paymentMethods", "Payment Method"
            )
        if entity.name == "customers":
            self._check_ref_id(
                company, record, changed, "shipmentMethodId", "shipmentMethods", "Shipment Method"
            )
            self._check_ref_code(company, record, changed, "salespersonCode", "salespeoplePurchasers", entity)
        elif entity.name == "contacts":
            self._apply_contact_rules(company, record, changed, previous)
        elif entity.name == "items":
            self._check_unit_of_measure(company, record, changed)
        elif entity.name == "opportunities":
            self._apply_opportunity_rules(company, entity, record, changed, creating, previous)
        elif entity.name in DOCUMENT_SETS:
            if previous is not None:
                _check_editable(entity, previous)
            self._apply_document_rules(company, entity, record, changed, creating)
        elif entity.name in LINE_SETS:
            self._apply_line_rules(company, entity, record, changed, creating)

    def _apply_opportunity_rules(
        self,
        company: Company,
        entity: EntitySet,
        record: dict[str, Any],
        changed: set[str],
        creating: bool,
        previous: Mapping[str, Any] | None,
    ) -> None:
        """Page 30070 refuses a new contact or salesperson on a won or lost opportunity (its own
        labels); table 5092 validates the contact, copies its name and company name, and stamps a new
        opportunity's creation date (WorkDate)."""
        if previous is not None and previous["status"] in ("Won", "Lost"):
            if "contactNumber" in changed and record["contactNumber"] != previous["contactNumber"]:
                raise bad_request(
                    'The "contactNumber of a Won or Lost Opportunity cannot be changed',
                    "Application_DialogException",
                )
            if "salespersonCode" in changed and record["salespersonCode"] != previous["salespersonCode"]:
                raise bad_request(
                    'The "salespersonCode" of a Won or Lost Opportunity cannot be changed',
                    "Application_DialogException",
                )
        self._check_ref_code(company, record, changed, "contactNumber", "contacts", entity)
        self._check_ref_code(company, record, changed, "salespersonCode", "salespeoplePurchasers", entity)
        if "contactNumber" in changed:
            contact = (
                self.find_by_key(company.id, "contacts", record["contactNumber"])
                if record["contactNumber"]
                else None
            )
            record["contactName"] = (contact or {}).get("displayName", "")
            record["contactCompanyName"] = (contact or {}).get("companyName", "")
        if creating:
            now = self.clock.now()
            record["creationDate"] = now.date().isoformat()
            record["systemCreatedAt"] = iso_ms(self.clock.now_ms())

    def close_opportunity(self, company_id: str, record_id: str, *, won: bool, user: str) -> dict[str, Any]:
        """A user's Close action on the opportunity card in BC (not in the API): status Won or Lost,
        closed, the closing date; a won opportunity's current value is its estimated value."""
        company = self.company(company_id)
        current = company.tables["opportunities"].get(normalize_guid(record_id))
        if current is None:
            raise record_not_found("Opportunity", record_id)
        if current["closed"]:
            raise bad_request(
                f"Opportunity {current['number']} is already closed.", "Application_DialogException"
            )
        values = {
            "status": "Won" if won else "Lost",
            "closed": True,
            "dateClosed": self.clock.now().date().isoformat(),
            "calculatedCurrentValue": current["estimatedValue"] if won else 0,
            "completedPrc": 100,
            "chancesOfSuccessPrc": 100 if won else 0,
        }
        return self.system_update(company_id, "opportunities", record_id, values, user)

    def _check_ref_id(
        self,
        company: Company,
        record: dict[str, Any],
        changed: set[str],
        name: str,
        target: str,
        caption: str,
    ) -> dict[str, Any] | None:
        value = record[name]
        if name not in changed or value == ZERO_GUID:
            return None
        found = company.tables.get(target, {}).get(value)
        if found is None:
            raise bad_request(f'The "{name}" does not match to a {caption}.', "Application_DialogException")
        return found

    def _check_ref_code(
        self,
        company: Company,
        record: dict[str, Any],
        changed: set[str],
        name: str,
        target: str,
        entity: EntitySet,
    ) -> None:
        value = record[name]
        if name not in changed or not value or value in company.keys[target]:
            return
        raise _related_value_not_found(entity, name, value, target)

    def _check_currency(
        self, company: Company, record: dict[str, Any], changed: set[str], creating: bool
    ) -> None:
        # Local currency: currencyId zero and currencyCode the company's LCY code
        # (docs/bc-sandbox.md#sources).
        if "currencyCode" in changed:
            code = record["currencyCode"]
            if code in ("", company.local_currency):
                currency_id = ZERO_GUID
            else:
                found = self.find_by_key(company.id, "currencies", code)
                if found is None:
                    raise bad_request(
                        f"The field Currency Code of table Customer contains a value ({code}) that cannot be "
                        "found in the related table (Currency).",
                        "Application_DialogException",
                    )
                currency_id = found["id"]
            if "currencyId" in changed and record["currencyId"] != currency_id:
                raise bad_request(
                    "The currency values do not match to a specific Currency.", "Application_DialogException"
                )
            record["currencyId"] = currency_id
            record["currencyCode"] = code or company.local_currency
        elif "currencyId" in changed:
            found = self._check_ref_id(company, record, changed, "currencyId", "currencies", "Currency")
            record["currencyCode"] = found["code"] if found else company.local_currency
        elif creating:
            record["currencyCode"] = company.local_currency

    def _check_unit_of_measure(self, company: Company, record: dict[str, Any], changed: set[str]) -> None:
        if "baseUnitOfMeasureCode" in changed and record["baseUnitOfMeasureCode"]:
            found = self.find_by_key(company.id, "unitsOfMeasure", record["baseUnitOfMeasureCode"])
            if found is None:
                raise bad_request(
                    f"The field Base Unit of Measure of table Item contains a value "
                    f"({record['baseUnitOfMeasureCode']}) that cannot be found in the related table "
                    "(Unit of Measure).",
                    "Application_DialogException",
                )
            record["baseUnitOfMeasureId"] = found["id"]
        elif "baseUnitOfMeasureId" in changed:
            found = self._check_ref_id(
                company, record, changed, "baseUnitOfMeasureId", "unitsOfMeasure", "Unit of Measure"
            )
            record["baseUnitOfMeasureCode"] = found["code"] if found else ""

    def _apply_document_rules(
        self, company: Company, entity: EntitySet, record: dict[str, Any], changed: set[str], creating: bool
    ) -> None:
        customer = self._document_customer(company, record, changed)
        if customer is None and creating:
            raise bad_request(
                "You must specify a customer id or a customer number to create a sales document.",
                "Application_DialogException",
            )
        if customer is not None:
            if customer["blocked"] in ("Invoice", "All"):
                raise bad_request(
                    f"You cannot create this type of document when Customer {customer['number']} is blocked "
                    f"with type {customer['blocked']}",
                    "Application_DialogException",
                )
            self._copy_customer_defaults(company, customer, record, changed)
        self._check_currency(company, record, changed, creating)
        self._check_ref_id(company, record, changed, "paymentTermsId", "paymentTerms", "Payment Term")
        self._check_ref_id(company, record, changed, "shipmentMethodId", "shipmentMethods", "Shipment Method")
        self._check_ref_code(company, record, changed, "salesperson", "salespeoplePurchasers", entity)

    def _document_customer(
        self, company: Company, record: dict[str, Any], changed: set[str]
    ) -> dict[str, Any] | None:
        if "customerId" in changed and record["customerId"] != ZERO_GUID:
            customer = company.tables["customers"].get(record["customerId"])
            if customer is None:
                raise bad_request(
                    'The "customerId" does not match to a Customer.', "Application_DialogException"
                )
            if "customerNumber" in changed and record["customerNumber"] != customer["number"]:
                raise bad_request(
                    "The customer values do not match to a specific Customer.", "Application_DialogException"
                )
            return customer
        if "customerNumber" in changed and record["customerNumber"]:
            customer = self.find_by_key(company.id, "customers", record["customerNumber"])
            if customer is None:
                raise bad_request(
                    f"The Customer does not exist. Identification fields and values: "
                    f"No.='{record['customerNumber']}'",
                    "Internal_RecordNotFound",
                )
            return customer
        return None

    @staticmethod
    def _copy_customer_defaults(
        company: Company, customer: Mapping[str, Any], record: dict[str, Any], changed: set[str]
    ) -> None:
        # As BC does when the sell-to customer is validated: the document takes the customer's data.
        record["customerId"], record["customerNumber"] = customer["id"], customer["number"]
        record["customerName"] = customer["displayName"]
        if "billToName" not in changed:
            record["billToName"] = customer["displayName"]
        if "shipToName" not in changed:
            record["shipToName"] = customer["displayName"]
        record["billToCustomerId"], record["billToCustomerNumber"] = customer["id"], customer["number"]
        for source, target in (
            ("addressLine1", "sellToAddressLine1"),
            ("addressLine2", "sellToAddressLine2"),
            ("city", "sellToCity"),
            ("state", "sellToState"),
            ("country", "sellToCountry"),
            ("postalCode", "sellToPostCode"),
            ("addressLine1", "billToAddressLine1"),
            ("addressLine2", "billToAddressLine2"),
            ("city", "billToCity"),
            ("state", "billToState"),
            ("country", "billToCountry"),
            ("postalCode", "billToPostCode"),
            ("addressLine1", "shipToAddressLine1"),
            ("addressLine2", "shipToAddressLine2"),
            ("city", "shipToCity"),
            ("state", "shipToState"),
            ("country", "shipToCountry"),
            ("postalCode", "shipToPostCode"),
            ("currencyCode", "currencyCode"),
            ("paymentTermsId", "paymentTermsId"),
            ("shipmentMethodId", "shipmentMethodId"),
            ("salespersonCode", "salesperson"),
            ("phoneNumber", "phoneNumber"),
            ("email", "email"),
        ):
            if target not in changed:
                record[target] = customer[source]
        if "currencyCode" not in changed and "currencyId" not in changed:
            record["currencyId"] = customer["currencyId"]

    def _apply_line_rules(
        self, company: Company, entity: EntitySet, record: dict[str, Any], changed: set[str], creating: bool
    ) -> None:
        assert entity.parent is not None
        parent = ENTITY_SETS[entity.parent]
        header = company.tables[parent.name].get(record["documentId"])
        if header is None:
            raise bad_request(
                f'The "documentId" does not match to a {parent.caption}.', "Application_DialogException"
            )
        _check_editable(parent, header)
        if creating and "sequence" not in changed:
            lines = self._lines_of(company, header["id"], entity.name)
            record["sequence"] = max((line["sequence"] for line in lines), default=0) + 10000
        if record["lineType"] == "Item":
            item = self._line_item(company, record, changed)
            if item is not None:
                if item["blocked"]:
                    raise bad_request(f"Item {item['number']} is blocked.", "Application_DialogException")
                record["itemId"], record["lineObjectNumber"] = item["id"], item["number"]
                if "description" not in changed:
                    record["description"] = item["displayName"]
                if "unitPrice" not in changed and creating:
                    record["unitPrice"] = item["unitPrice"]
                if "unitOfMeasureCode" not in changed and creating:
                    record["unitOfMeasureCode"] = item["baseUnitOfMeasureCode"]
        amount = round(record["quantity"] * record["unitPrice"] * (1 - record["discountPercent"] / 100), 2)
        amount = round(amount - record["discountAmount"], 2)
        record["amountExcludingTax"] = record["amountIncludingTax"] = amount
        record["totalTaxAmount"] = 0

    def _line_item(
        self, company: Company, record: dict[str, Any], changed: set[str]
    ) -> dict[str, Any] | None:
        if "itemId" in changed and record["itemId"] != ZERO_GUID:
            item = company.tables["items"].get(record["itemId"])
            if item is None:
                raise bad_request('The "itemId" does not match to an Item.', "Application_DialogException")
            return item
        if "lineObjectNumber" in changed and record["lineObjectNumber"]:
            item = self.find_by_key(company.id, "items", record["lineObjectNumber"])
            if item is None:
                raise bad_request(
                    "The Item does not exist. Identification fields and values: "
                    f"No.='{record['lineObjectNumber']}'",
                    "Internal_RecordNotFound",
                )
            return item
        return None

    def _lines_of(
        self, company: Company, document_id: str, line_set: str = "salesOrderLines"
    ) -> list[dict[str, Any]]:
        table = company.tables[line_set]
        ids = company.lines_index.get((line_set, document_id), set())
        return sorted((table[i] for i in ids if i in table), key=lambda r: r["sequence"])

    def lines_of(
        self, company_id: str, document_id: str, line_set: str = "salesOrderLines"
    ) -> list[dict[str, Any]]:
        with self.lock:
            return self._lines_of(self.company(company_id), document_id, line_set)

    def _after_write(
        self,
        company: Company,
        entity: EntitySet,
        record: Mapping[str, Any],
        user: str,
        *,
        previous: Mapping[str, Any] | None = None,
        deleted: bool = False,
    ) -> None:
        """Writes a write causes in BC. `previous` is the record before an update or delete."""
        if entity.name in BUSINESS_RELATIONS:
            self._update_company_contact(company, record, user, previous=previous, deleted=deleted)
            return
        if entity.name == "contacts":
            self._update_persons(company, record, user, previous=previous, deleted=deleted)
            return
        # A line change changes the header's totals and notifies the header (docs/bc-sandbox.md#sources).
        if entity.name not in LINE_SETS or entity.parent is None:
            return
        header = company.tables[entity.parent].get(record["documentId"])
        if header is None:
            return
        lines = self._lines_of(company, header["id"], entity.name)
        updated = dict(header)
        updated["totalAmountExcludingTax"] = round(sum(line["amountExcludingTax"] for line in lines), 2)
        updated["totalAmountIncludingTax"] = round(sum(line["amountIncludingTax"] for line in lines), 2)
        updated["totalTaxAmount"] = 0
        self._stamp(updated, header["_ms"], user)
        self._put(company, entity.parent, updated)
        self._emit(company, entity.parent, updated, "updated", user)

    def _check_deletable(self, company: Company, entity: EntitySet, record: Mapping[str, Any]) -> None:
        if entity.name in DOCUMENT_SETS:
            _check_editable(entity, record)
        if entity.name in LINE_SETS and entity.parent is not None:
            header = company.tables[entity.parent].get(record["documentId"])
            if header is not None:
                _check_editable(ENTITY_SETS[entity.parent], header)
        if entity.name == "items":
            # BC's MoveEntries (run on Item.OnDelete) refuses an item with ledger entries in an open year.
            if any(e["itemNumber"] == record["number"] for e in company.tables["itemLedgerEntries"].values()):
                raise bad_request(
                    f"You cannot delete Item {record['number']} because it has ledger entries in a fiscal "
                    "year that has not been closed yet.",
                    "Application_DialogException",
                )
            return
        if entity.name != "customers":
            return
        for document_set in ("salesQuotes", "salesOrders"):
            for document in company.tables[document_set].values():
                if document["customerId"] == record["id"]:
                    raise bad_request(
                        f"You cannot delete Customer {record['number']} because there is at least one "
                        f"outstanding {ENTITY_SETS[document_set].caption} for this customer.",
                        "Application_DialogException",
                    )

    # --- contacts and business relations ----------------------------------------------------------

    def _apply_contact_rules(
        self,
        company: Company,
        record: dict[str, Any],
        changed: set[str],
        previous: Mapping[str, Any] | None,
    ) -> None:
        """BC's Contact rules: a person's `companyNumber` is a company contact's number (table
        relation Contact where Type = Company) and the person shows that company's name and business
        relation; a company's `companyNumber` is its own number (`_after_key`); the type of a company
        with a business relation or with persons cannot change (TypeChange)."""
        if record["type"] == "Person":
            if previous is not None and previous["type"] == "Company":
                if previous.get("_relatedType", NO_RELATION) != NO_RELATION:
                    raise bad_request(
                        "No. of Business Relations must be equal to '0'  in Contact: "
                        f"No.={previous['number']}. Current value is '1'.",
                        "Application_DialogException",
                    )
                if self._persons_of(company, previous["number"]):
                    raise bad_request(
                        "Type cannot be changed because there are one or more related people linked to the "
                        "contact.",
                        "Application_DialogException",
                    )
                if "companyNumber" not in changed:
                    record["companyNumber"] = ""  # its own number as a company
            number = record["companyNumber"]
            if not number:
                record["companyName"], record["contactBusinessRelation"] = "", NO_BUSINESS_RELATION
                return
            found = self.find_by_key(company.id, "contacts", number)
            if found is None or found["type"] != "Company" or found["id"] == record["id"]:
                raise _related_value_not_found(ENTITY_SETS["contacts"], "companyNumber", number, "contacts")
            record["companyName"] = found["displayName"]
            record["contactBusinessRelation"] = found["contactBusinessRelation"]
            return
        number = record["companyNumber"]
        own = {"", record["number"], previous["number"] if previous is not None else ""}
        if "companyNumber" in changed and number not in own:
            raise bad_request(
                f"Type must be equal to 'Person'  in Contact: No.={record['number'] or number}. "
                "Current value is 'Company'.",
                "Application_DialogException",
            )
        relation = record.get("_relatedType", NO_RELATION)
        record["contactBusinessRelation"] = NO_BUSINESS_RELATION if relation == NO_RELATION else relation

    @staticmethod
    def _after_key(entity: EntitySet, record: dict[str, Any]) -> None:
        # BC's TypeChange: a company contact is its own company ("Company No." := "No.").
        if entity.name == "contacts" and record["type"] == "Company":
            record["companyNumber"], record["companyName"] = record["number"], record["displayName"]

    def _create_company_contact(
        self, company: Company, record: Mapping[str, Any], relation: str, user: str
    ) -> None:
        """The company contact of a new customer/vendor and its business relation (CustCont-Update
        InsertNewContact): a "Company" contact from the contact number series with the copied fields."""
        contacts = ENTITY_SETS["contacts"]
        contact = contacts.template()
        contact["id"] = record["_contactId"]
        contact["type"] = "Company"
        for name in COMPANY_CONTACT_FIELDS:
            contact[name] = record[name]
        contact["contactBusinessRelation"] = relation
        contact["_relatedType"], contact["_relatedId"] = relation, record["id"]
        self._assign_key(company, contacts, contact)
        self._after_key(contacts, contact)
        self._stamp(contact, None, user)
        self._put(company, contacts.name, contact)
        self._emit(company, contacts.name, contact, "created", user)

    def _update_company_contact(
        self,
        company: Company,
        record: Mapping[str, Any],
        user: str,
        *,
        previous: Mapping[str, Any] | None,
        deleted: bool,
    ) -> None:
        # CustCont-Update / VendCont-Update: a change of a copied field copies them all to the company
        # contact; deleting the customer/vendor deletes the business relation (the contact stays).
        if previous is None:
            return
        contact = self._company_contact_of(company, previous)
        if contact is None:
            return
        if deleted:
            self._derive(
                company,
                contact,
                {
                    "_relatedType": NO_RELATION,
                    "_relatedId": ZERO_GUID,
                    "contactBusinessRelation": NO_BUSINESS_RELATION,
                },
                user,
            )
        elif any(record[name] != previous[name] for name in COMPANY_CONTACT_FIELDS):
            updates = {name: record[name] for name in COMPANY_CONTACT_FIELDS}
            updates["companyName"] = record["displayName"]
            self._derive(company, contact, updates, user)

    def _update_persons(
        self,
        company: Company,
        record: Mapping[str, Any],
        user: str,
        *,
        previous: Mapping[str, Any] | None,
        deleted: bool,
    ) -> None:
        # A company contact's persons follow it: deleting the company deletes them (Contact.OnDelete),
        # a new name, number or business relation is shown on them (Contact.DoModify).
        if previous is None or previous["type"] != "Company":
            return
        shown = ("number", "displayName", "contactBusinessRelation")
        if not deleted and all(record[name] == previous[name] for name in shown):
            return
        persons = self._persons_of(company, previous["number"])
        if deleted:
            for person in persons:
                self._remove(company, "contacts", person)
                deleted_ms = max(self.clock.now_ms(), person["_ms"] + 1)
                self._emit(company, "contacts", {**person, "_ms": deleted_ms}, "deleted", user)
            return
        updates = {
            "companyNumber": record["number"],
            "companyName": record["displayName"],
            "contactBusinessRelation": record["contactBusinessRelation"],
        }
        for person in persons:
            self._derive(company, person, updates, user)

    def _derive(
        self, company: Company, current: Mapping[str, Any], updates: Mapping[str, Any], user: str
    ) -> None:
        """Update a contact as a consequence of another write: stamped, logged and cascaded like any
        write (contacts have no webhooks, so nothing is notified)."""
        updated = {**current, **updates}
        if updated == current:
            return
        self._stamp(updated, current["_ms"], user)
        self._put(company, "contacts", updated)
        self._emit(company, "contacts", updated, "updated", user)
        self._after_write(company, ENTITY_SETS["contacts"], updated, user, previous=current)

    @staticmethod
    def _company_contact_of(company: Company, parent: Mapping[str, Any]) -> dict[str, Any] | None:
        contact = company.tables["contacts"].get(parent.get("_contactId", ""))
        if contact is None or contact.get("_relatedId") != parent["id"]:
            return None
        return contact

    @staticmethod
    def _persons_of(company: Company, number: str) -> list[dict[str, Any]]:
        if not number:
            return []
        return [
            c
            for c in company.tables["contacts"].values()
            if c["type"] == "Person" and c["companyNumber"] == number
        ]

    def company_contact(self, company_id: str, record_id: str) -> dict[str, Any] | None:
        """The company contact related to a customer or vendor (by its id), or None."""
        key = normalize_guid(record_id)
        with self.lock:
            company = self.company(company_id)
            for entity_set in BUSINESS_RELATIONS:
                parent = company.tables[entity_set].get(key)
                if parent is not None:
                    return self._company_contact_of(company, parent)
        return None

    def contacts_information(
        self, company_id: str, parent: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """`contactsInformation` rows: for every company contact with a business relation (or only
        the one of `parent` = (entity set, id)), the company and its persons, each with the relation.
        Rows have the hidden sort key `id` (the contact id)."""
        with self.lock:
            company = self.company(company_id)
            if parent is not None:
                owner = company.tables[parent[0]].get(normalize_guid(parent[1]))
                found = self._company_contact_of(company, owner) if owner is not None else None
                companies = [found] if found is not None else []
            else:
                companies = [
                    c
                    for c in company.tables["contacts"].values()
                    if c["type"] == "Company" and c.get("_relatedType", NO_RELATION) != NO_RELATION
                ]
            if not companies:
                return []
            by_company = {c["number"]: c for c in companies}
            rows: list[dict[str, Any]] = []
            for contact in company.tables["contacts"].values():
                owner = by_company.get(contact["companyNumber"])
                if owner is None or (contact["type"] == "Company" and contact is not owner):
                    continue
                rows.append(
                    {
                        "id": contact["id"],
                        "contactId": contact["id"],
                        "contactNumber": contact["number"],
                        "contactName": contact["displayName"],
                        "contactType": contact["type"],
                        "relatedId": owner["_relatedId"],
                        "relatedType": owner["_relatedType"],
                    }
                )
        return rows

    # --- derived data -----------------------------------------------------------------------------

    def financial_details(self, company_id: str) -> dict[str, dict[str, Any]]:
        """`customerFinancialDetail` for every customer, keyed by customer id (read-only, computed)."""
        with self.lock:
            company = self.company(company_id)
            sales: dict[str, float] = {}
            for invoice in company.tables["salesInvoices"].values():
                customer_id = invoice["customerId"]
                sales[customer_id] = sales.get(customer_id, 0) + invoice["totalAmountExcludingTax"]
            customers = list(company.tables["customers"].values())
        return {
            c["id"]: {
                "@odata.etag": c["_etag"],
                "id": c["id"],
                "number": c["number"],
                "balance": c["balanceDue"],
                "totalSalesExcludingTax": round(sales.get(c["id"], 0), 2),
                "overdueAmount": 0,
            }
            for c in customers
        }


def _caption_of(field_name: str) -> str:
    return {
        "salespersonCode": "Salesperson Code",
        "salesperson": "Salesperson Code",
        "companyNumber": "Company No.",
    }.get(field_name, field_name)


def _related_value_not_found(entity: EntitySet, name: str, value: str, target: str) -> BcError:
    return bad_request(
        f"The field {_caption_of(name)} of table {entity.caption} contains a value ({value}) that cannot "
        f"be found in the related table ({ENTITY_SETS[target].caption}).",
        "Application_DialogException",
    )


def json_literal(value: Any) -> str:
    """A value as the client wrote it in JSON (`null`, `true`, `12.5`), for error messages."""
    return json.dumps(value) if not isinstance(value, str) else value


def _null_as_default(spec: Field, value: Any) -> Any:
    """JSON null: an `Edm.String` property is nullable in the sandbox's `$metadata` and null stores the
    empty text (AL text is never null); the other types are `Nullable="false"`, so null is refused with
    the OData library's words (unverified: BC's answer to null)."""
    if value is not None:
        return value
    if spec.kind == STR:
        return ""
    edm = EDM_TYPES.get(spec.kind, "Edm.String")
    raise bad_request(
        f"A null value was found for the property named '{spec.name}', which has the expected type "
        f"'{edm}[Nullable=False]'. The expected type '{edm}[Nullable=False]' does not allow null values."
    )


def _same_value(spec: Field, new: Any, current: Any) -> bool:
    if spec.kind == DATETIME and isinstance(new, str) and isinstance(current, str):
        return _parse_datetime(new) == _parse_datetime(current)
    return bool(new == current)


def _parse_datetime(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _coerce(entity: EntitySet, spec: Field, value: Any) -> Any:
    """Check a JSON value against the field's kind; returns the stored form."""
    if spec.kind == DATETIME:
        if not isinstance(value, str) or _parse_datetime(value) is None:
            raise bad_request(
                f"Cannot convert the literal '{json_literal(value)}' to the expected type "
                f"'Edm.DateTimeOffset' of the property '{spec.name}'."
            )
        return value
    ok = (
        (spec.kind in (STR, GUID, DATE) and isinstance(value, str))
        or (spec.kind == NUM and isinstance(value, int | float) and not isinstance(value, bool))
        or (spec.kind == BOOL and isinstance(value, bool))
    )
    if not ok:
        raise bad_request(
            f"Cannot convert the literal '{json_literal(value)}' to the expected type "
            f"'{EDM_TYPES.get(spec.kind, 'Edm.String')}' of the property '{spec.name}'."
        )
    if spec.kind == GUID:
        return normalize_guid(value, spec.name)
    if spec.kind == DATE and not _DATE_RE.match(value):
        raise bad_request(f"Cannot convert the literal '{value}' to the expected type 'Edm.Date'.")
    if spec.options is not None and value not in spec.options:
        allowed = ", ".join(f"'{o}'" for o in spec.options)
        raise bad_request(
            f"The value '{value}' of '{spec.name}' is not valid for {entity.caption}; use one of {allowed}.",
            "Application_DialogException",
        )
    if spec.max_length is not None and len(value) > spec.max_length:
        raise bad_request(
            f"The length of the string is {len(value)}, but it must be less than or equal to "
            f"{spec.max_length} characters. Value: {value}",
            "Application_StringExceededLength",
        )
    return value.upper() if spec.code else value


def _check_editable(document: EntitySet, header: Mapping[str, Any]) -> None:
    """BC refuses changes to a posted invoice (APIV2 - Sales Invoices: `CannotModifyPostedInvioceErr`)
    and to the lines of a released order (Sales Line's `TestStatusOpen`: a TestField on the header's
    Status). The error codes are the sandbox's choice (docs/bc-sandbox.md)."""
    if document.name == "salesInvoices" and header["status"] not in ("Draft", "In Review"):
        raise bad_request(
            "The invoice has been posted and can no longer be modified.", "Application_DialogException"
        )
    if document.name == "salesOrders" and header["status"] == "Released":
        raise bad_request(
            f"Status must be equal to 'Open'  in Sales Header: Document Type=Order, No.={header['number']}. "
            "Current value is 'Released'.",
            "Application_TestFieldError",
        )


def _index_line(
    company: Company, line_set: str, record: Mapping[str, Any] | None, present: Mapping[str, Any] | None
) -> None:
    """Add (`present` given) or remove `record` in its document's entry of the lines index."""
    if record is None:
        return
    key = (line_set, record["documentId"])
    if present is not None:
        company.lines_index.setdefault(key, set()).add(record["id"])
    else:
        company.lines_index.get(key, set()).discard(record["id"])
