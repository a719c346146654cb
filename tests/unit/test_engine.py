"""The engine's decisions and what each costs, on in-memory gateways (no servers, milliseconds).

The end-to-end tests drive the same engine through the sandboxes and Azurite; these pin the
request counts and outcomes of each path so a change that costs one more request fails here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from shared.connectors.errors import ThrottledError, TransientError
from shared.mapping.loader import parse_mapping_set
from shared.mapping.values import dataverse_id_for
from shared.messages import BatchMessage, ChunkMessage, RecordChange, ScanMessage, SyncMessage
from shared.store.couplings import CouplingStore
from shared.store.journal import Journal, JournalEntry
from shared.sync.echoes import stamped_before_sync
from shared.sync.engine import MAX_TRANSIENT_REQUEUES, Engine, RequeueError
from shared.sync.processor import dispatch
from shared.sync.reconcile import Outcome
from shared.timestamps import iso_ms, parse_iso
from tests.support.memory import MemoryBc, MemoryDataverse, MemoryTable

MAPPING_TEXT = """
version: 1
settings: {ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}}
mappings:
  - name: CUSTOMER
    bc: {entity_set: customers, key: number}
    dataverse: {table: account, entity_set: accounts}
    deletion: propagate
    fields:
      - {bc: number, dv: accountnumber, direction: to_dataverse, match_priority: 1}
      - {bc: displayName, dv: name, match_priority: 2}
      - {bc: phoneNumber, dv: telephone1}
      - {bc: city, dv: address1_city}
"""
MAPPINGS = parse_mapping_set(MAPPING_TEXT)
CUSTOMER = MAPPINGS.entity("CUSTOMER")


class Harness:
    def __init__(self, mappings: Any = MAPPINGS) -> None:
        self.bc = MemoryBc()
        self.dv = MemoryDataverse()
        self.couplings = CouplingStore(MemoryTable())  # type: ignore[arg-type]
        self.journal_table = MemoryTable()
        self.queued: list[tuple[Any, int]] = []
        self.engine = Engine(
            mappings=mappings,
            bc=self.bc,
            dv=self.dv,
            couplings=self.couplings,
            journal=Journal(self.journal_table),  # type: ignore[arg-type]
            enqueue=self._enqueue,
        )

    def _enqueue(self, messages: Sequence[SyncMessage | ChunkMessage | ScanMessage], delay: int) -> None:
        self.queued.extend((m, delay) for m in messages)

    def sync(self, side: str, record_id: str, **extra: Any) -> Any:
        self.bc.requests.clear()
        self.dv.requests.clear()
        return self.engine.sync_record(SyncMessage(mapping="CUSTOMER", side=side, id=record_id, **extra))

    def requests(self) -> dict[str, int]:
        return {**self.bc.requests, **self.dv.requests}

    def coupled_customer(self, **values: Any) -> tuple[str, str]:
        """A BC customer synced to a new account: the state every coupled test starts from."""
        record = {"number": "C1", "displayName": "Adatum", "phoneNumber": "1", "city": "Atlanta", **values}
        bc_id = self.bc.seed(CUSTOMER, record)["id"]
        result = self.sync("bc", bc_id)
        assert result.outcome == Outcome.INSERTED
        return bc_id, result.dv_id


def test_a_new_bc_record_is_created_in_dataverse_under_its_deterministic_id() -> None:
    h = Harness()
    bc_id = h.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum", "phoneNumber": "1", "city": "A"})[
        "id"
    ]

    result = h.sync("bc", bc_id)

    assert result.outcome == Outcome.INSERTED
    assert result.dv_id == dataverse_id_for(CUSTOMER, bc_id)
    account = h.dv.rows("accounts")[result.dv_id]
    assert (account["accountnumber"], account["name"], account["telephone1"]) == ("C1", "Adatum", "1")
    # read the change, one match query per priority, the create
    assert h.requests() == {"GET customers": 1, "GET accounts": 2, "POST accounts": 1}
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.dv_id == result.dv_id and coupling.last_result == "inserted"


def test_a_change_of_a_coupled_record_costs_one_read_and_one_conditional_write() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.bc.edit(CUSTOMER, bc_id, phoneNumber="2")

    result = h.sync("bc", bc_id)

    assert (result.outcome, result.fields) == (Outcome.MODIFIED, ["phoneNumber"])
    assert h.dv.rows("accounts")[dv_id]["telephone1"] == "2"
    assert h.requests() == {"GET customers": 1, "PATCH accounts": 1}
    # the coupling now holds the ETag of the account as written: the next change presumes it again
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.dv_etag == h.dv.rows("accounts")[dv_id]["@odata.etag"]


def test_an_echo_costs_one_read_and_writes_nothing() -> None:
    h = Harness()
    bc_id, _ = h.coupled_customer()

    result = h.sync("bc", bc_id)

    assert result.outcome == Outcome.UNCHANGED and "echo" in result.reason
    assert h.requests() == {"GET customers": 1}


def _stamp_before(record_time: str, ms: int = 3) -> str:
    """A BC notification's stamp for the change that gave a record `record_time`: BC takes it in
    `OnDatabaseModify`, a little before it sets the record's `lastModifiedDateTime`."""
    return iso_ms(parse_iso(record_time) - dt.timedelta(milliseconds=ms))


def test_the_notification_of_our_own_write_is_an_echo_without_a_read() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, telephone1="2")
    assert h.sync("dv", dv_id).outcome == Outcome.MODIFIED  # our PATCH of the customer
    written = h.bc.rows("customers")[bc_id]["lastModifiedDateTime"]

    result = h.sync("bc", bc_id, change="updated", modified=_stamp_before(written))

    assert result.outcome == Outcome.UNCHANGED and "stamped" in result.reason
    assert h.requests() == {}


def test_a_change_stamped_after_our_write_is_read_and_synced() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.bc.edit(CUSTOMER, bc_id, city="Boston")  # a person, after our last sync
    stamp = _stamp_before(h.bc.rows("customers")[bc_id]["lastModifiedDateTime"], ms=1)
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.bc_modified is not None and stamp > coupling.bc_modified

    result = h.sync("bc", bc_id, change="updated", modified=stamp)

    assert result.outcome == Outcome.MODIFIED
    assert h.dv.rows("accounts")[dv_id]["address1_city"] == "Boston"


def test_the_stamp_decides_only_for_a_settled_coupling_and_never_a_deletion() -> None:
    h = Harness()
    bc_id, _ = h.coupled_customer()
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.bc_modified is not None
    early = _stamp_before(coupling.bc_modified)
    note = SyncMessage(mapping="CUSTOMER", side="bc", id=bc_id, change="updated", modified=early)
    assert stamped_before_sync(note, coupling)
    assert not stamped_before_sync(note.model_copy(update={"change": "deleted"}), coupling)
    assert not stamped_before_sync(note.model_copy(update={"modified": None}), coupling)  # a poll's message
    assert not stamped_before_sync(note.model_copy(update={"side": "dv"}), coupling)
    for unsettled in ({"last_result": "conflict"}, {"skipped": True}, {"state": "pending_bc"}):
        assert not stamped_before_sync(note, replace(coupling, **unsettled)), unsettled
    # `force` (a retry asked by an operator) always reads.
    h.bc.requests.clear()
    forced = h.engine.sync_record(note, force=True)
    assert forced.outcome == Outcome.UNCHANGED and h.bc.requests == {"GET customers": 1}


def test_a_counterpart_changed_unseen_is_read_after_the_refused_write_and_both_changes_kept() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, address1_city="Boston")  # its webhook has not been processed yet
    h.bc.edit(CUSTOMER, bc_id, phoneNumber="2")

    result = h.sync("bc", bc_id)

    assert result.outcome == Outcome.MODIFIED
    account, customer = h.dv.rows("accounts")[dv_id], h.bc.rows("customers")[bc_id]
    assert (account["telephone1"], account["address1_city"]) == ("2", "Boston")
    assert (customer["phoneNumber"], customer["city"]) == ("2", "Boston")
    # the refused PATCH, the read of the account, then one write to each side
    assert h.requests() == {"GET customers": 1, "PATCH accounts": 2, "GET accounts": 1, "PATCH customers": 1}


def test_a_dataverse_change_is_written_to_bc_with_the_stored_etag() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, name="Adatum Corp")

    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.MODIFIED
    assert h.bc.rows("customers")[bc_id]["displayName"] == "Adatum Corp"
    assert h.requests() == {"GET accounts": 1, "PATCH customers": 1}


def test_a_new_dataverse_record_is_created_in_bc_through_a_pending_coupling() -> None:
    h = Harness()
    dv_id = h.dv.seed(CUSTOMER, {"name": "Fabrikam", "telephone1": "5", "address1_city": "Oslo"})["accountid"]

    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.INSERTED
    customer = h.bc.rows("customers")[result.bc_id]
    assert (customer["displayName"], customer["phoneNumber"]) == ("Fabrikam", "5")
    coupling = h.couplings.get("CUSTOMER", "dv", dv_id)
    assert coupling is not None and coupling.state == "coupled" and coupling.bc_id == result.bc_id
    # the number BC assigned comes back to the account at once (the key people search by)
    assert h.dv.rows("accounts")[dv_id]["accountnumber"] == customer["number"] == "C10001"
    # read the account, one match query in BC, the create, the number back
    assert h.requests() == {"GET accounts": 1, "GET customers": 1, "POST customers": 1, "PATCH accounts": 1}
    assert h.sync("dv", dv_id).outcome == Outcome.UNCHANGED  # settled: the next look is an echo


def test_bcs_values_still_reach_dataverse_when_the_write_bringing_them_back_fails() -> None:
    """The coupling is stored before BC's number is written back; if that write fails (or the host
    dies), the redelivered message must not take the account for an echo of the planned values."""
    h = Harness()
    account = h.dv.seed(CUSTOMER, {"name": "Half Done", "telephone1": "6", "address1_city": "Lyon"})
    dv_id = account["accountid"]
    real_update = h.dv.update

    def unavailable(*_: Any, **__: Any) -> Any:
        raise TransientError("Dataverse is unavailable", status=503)

    h.dv.update = unavailable  # type: ignore[method-assign]
    with pytest.raises(RequeueError):
        h.sync("dv", dv_id)
    assert h.dv.rows("accounts")[dv_id].get("accountnumber") is None
    h.dv.update = real_update  # type: ignore[method-assign]

    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.MODIFIED
    assert len(h.bc.rows("customers")) == 1
    assert h.dv.rows("accounts")[dv_id]["accountnumber"] == "C10001"
    assert h.sync("dv", dv_id).outcome == Outcome.UNCHANGED


def test_a_deletion_is_decided_on_both_records_as_they_are() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.bc.remove(CUSTOMER, bc_id)

    result = h.sync("bc", bc_id)

    assert result.outcome == Outcome.DELETED
    assert dv_id not in h.dv.rows("accounts")
    assert h.couplings.get("CUSTOMER", "dv", dv_id) is None
    # no presumed counterpart for a deletion: the account is read before it is deleted
    assert h.requests() == {"GET customers": 1, "GET accounts": 1, "DELETE accounts": 1}


def test_a_matching_uncoupled_record_is_coupled_not_duplicated() -> None:
    h = Harness()
    dv_id = h.dv.seed(CUSTOMER, {"accountnumber": "C7", "name": "Contoso"})["accountid"]
    bc_id = h.bc.seed(CUSTOMER, {"number": "C7", "displayName": "Contoso", "phoneNumber": "9", "city": "X"})[
        "id"
    ]

    result = h.sync("bc", bc_id)

    assert result.outcome in (Outcome.COUPLED, Outcome.MODIFIED)
    assert list(h.dv.rows("accounts")) == [dv_id]
    assert h.dv.rows("accounts")[dv_id]["telephone1"] == "9"
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.dv_id == dv_id


def test_throttling_requeues_the_message_after_the_servers_retry_after() -> None:
    h = Harness()
    bc_id, _ = h.coupled_customer()

    def throttled(*_: Any, **__: Any) -> Any:
        raise ThrottledError("slow down", status=429, retry_after=7)

    h.bc.get = throttled  # type: ignore[method-assign]
    with pytest.raises(RequeueError) as caught:
        h.sync("bc", bc_id)
    assert caught.value.delay == 7
    assert caught.value.message.attempt == 1
    # while the queue retries, the record says so: retrying 1 of 8, when, and BC's message
    retrying = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert retrying is not None and retrying.last_result == "retrying"
    assert retrying.attempts == 1 and retrying.next_attempt and "slow down" in retrying.last_error
    assert retrying.unsynced_since is not None

    # after the last requeue it is a failure on the record (visible, retried by an operator),
    # not a poison message that shows only an id
    result = h.sync("bc", bc_id, attempt=MAX_TRANSIENT_REQUEUES)
    assert result.outcome == "failed"
    assert f"gave up after {MAX_TRANSIENT_REQUEUES} retries" in result.error and "slow down" in result.error
    failed = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert failed is not None and failed.last_result == "failed" and failed.next_attempt is None
    assert failed.unsynced_since == retrying.unsynced_since  # the change held back is still the first one


def test_transient_requeues_back_off_within_the_one_policy() -> None:
    from shared.sync.engine import requeue_delay

    delays = [requeue_delay(attempt) for attempt in range(1, 12)]
    assert all(1 <= d <= 300 for d in delays)
    assert requeue_delay(1) <= 2 and requeue_delay(10) >= 150  # 2 s doubling, capped at 5 minutes


def test_the_processor_dispatches_chunks_record_by_record() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.bc.edit(CUSTOMER, bc_id, city="Denver")

    assert dispatch(h.engine, ChunkMessage(mapping="CUSTOMER", side="bc", ids=[bc_id])) is None
    assert h.dv.rows("accounts")[dv_id]["address1_city"] == "Denver"


def test_the_processor_fans_a_batch_out_into_one_message_per_record_without_an_api_request() -> None:
    h = Harness()
    ids = [f"{n:08x}-0000-4000-8000-000000000000" for n in range(3)]
    changes = [RecordChange(id=i, change="updated", modified="2026-01-01T10:00:00Z") for i in ids]
    batch = BatchMessage(mapping="CUSTOMER", side="bc", changes=changes, reason="bc webhook")

    assert dispatch(h.engine, batch) is None

    assert [(m.kind, m.id, m.side, m.reason, delay) for m, delay in h.queued] == [
        ("record", i, "bc", "bc webhook", 0) for i in ids
    ]
    assert h.requests() == {}


def test_every_outcome_is_journaled_with_its_request_count() -> None:
    h = Harness()
    bc_id, _ = h.coupled_customer()
    h.bc.edit(CUSTOMER, bc_id, phoneNumber="3")
    h.sync("bc", bc_id)

    modified = [row for row, _ in h.journal_table.rows.values() if row["outcome"] == "modified"]
    # one row per side (history of either record) and one in the time partition
    assert len(modified) == 3
    assert {(r["bc_id"], r["fields"], r["api_requests"]) for r in modified} == {(bc_id, "phoneNumber", 2)}


def test_the_local_currency_costs_no_reload_of_the_bc_currency_index(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.mapping.queries import LookupKey
    from shared.sync.resolver import LookupResolver

    ms = parse_mapping_set(
        """
version: 1
settings:
  bc_local_currency_code: USD
  ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}
mappings:
  - name: CURRENCY
    bc: {entity_set: currencies, key: code}
    dataverse: {table: transactioncurrency, entity_set: transactioncurrencies}
    direction: to_dataverse
    bc_blank_means_local_currency: true
    fields:
      - {bc: code, dv: isocurrencycode, direction: to_dataverse, match_priority: 1}
"""
    )
    currency = ms.entity("CURRENCY")
    bc, dv = MemoryBc(), MemoryDataverse()
    bc.seed(currency, {"code": "EUR"})
    usd = dv.seed(currency, {"isocurrencycode": "USD"})["transactioncurrencyid"]
    resolver = LookupResolver(ms, CouplingStore(MemoryTable()), bc, dv)  # type: ignore[arg-type]

    now = [1000.0]
    monkeypatch.setattr("shared.sync.resolver.time.monotonic", lambda: now[0])
    for _ in range(3):
        now[0] += 61  # past the minute after which a miss may reload the key index
        lookups = resolver.code_tables(currency)
        resolver.resolve(lookups, LookupKey("CURRENCY", "bc", "USD"))
        assert lookups.dataverse_id("CURRENCY", "USD") == usd

    # one read of BC's currency codes, one of the Dataverse currency, then the caches answer (USD
    # is no BC currency record: its miss is expected and reloads nothing)
    assert bc.requests == {"GET currencies": 1} and dv.requests == {"GET transactioncurrencies": 1}

    # The other way: the uncoupled Dataverse currency of the local code stands for BC's blank code
    # (the cached lookup answers it); another uncoupled currency stays unknown.
    other = dv.seed(currency, {"isocurrencycode": "JPY"})["transactioncurrencyid"]
    lookups = resolver.code_tables(currency)
    resolver.resolve(lookups, LookupKey("CURRENCY", "dv", usd.upper()))
    resolver.resolve(lookups, LookupKey("CURRENCY", "dv", other))
    assert lookups.bc_key("CURRENCY", usd.upper()) == "USD"
    assert lookups.bc_key("CURRENCY", other) is None
    assert dv.requests == {"GET transactioncurrencies": 1}


def _lose_the_create_answer(h: Harness, *, landed: bool) -> None:
    """The next BC create gets no answer; with `landed` it was made all the same."""
    from shared.connectors.errors import AmbiguousWriteError

    create = h.bc.create

    def lost(*args: Any, **kwargs: Any) -> Any:
        h.bc.create = create  # type: ignore[method-assign]
        if landed:
            create(*args, **kwargs)
        raise AmbiguousWriteError("no answer to the create", url="customers")

    h.bc.create = lost  # type: ignore[method-assign]


def test_a_create_whose_answer_was_lost_is_adopted_not_made_twice() -> None:
    h = Harness()
    dv_id = h.dv.seed(CUSTOMER, {"name": "Lost Answer", "telephone1": "7", "address1_city": "Rome"})[
        "accountid"
    ]
    _lose_the_create_answer(h, landed=True)
    with pytest.raises(RequeueError):
        h.sync("dv", dv_id)

    result = h.sync("dv", dv_id)

    assert result.outcome == Outcome.INSERTED and "adopted" in result.reason
    assert len(h.bc.rows("customers")) == 1
    assert h.dv.rows("accounts")[dv_id]["accountnumber"] == h.bc.rows("customers")[result.bc_id]["number"]


def test_a_create_that_may_still_be_in_flight_is_waited_for_not_repeated() -> None:
    import datetime as dt

    from shared.sync.engine import PENDING_CREATE_GRACE

    h = Harness()
    dv_id = h.dv.seed(CUSTOMER, {"name": "In Flight", "telephone1": "8", "address1_city": "Oslo"})[
        "accountid"
    ]
    _lose_the_create_answer(h, landed=False)
    with pytest.raises(RequeueError):
        h.sync("dv", dv_id)

    # another delivery for the same account, while that create could still land: no second create
    with pytest.raises(RequeueError) as waiting:
        h.sync("dv", dv_id)
    assert 1 <= waiting.value.delay <= PENDING_CREATE_GRACE.total_seconds()
    assert h.bc.rows("customers") == {} and "POST customers" not in h.bc.requests

    # past the grace nothing landed: the create is made, once
    later = dt.datetime.now(dt.UTC) + PENDING_CREATE_GRACE + dt.timedelta(seconds=1)
    h.engine.clock = lambda: later
    assert h.sync("dv", dv_id).outcome == Outcome.INSERTED
    assert len(h.bc.rows("customers")) == 1


def test_a_create_refused_because_the_key_exists_is_decided_again_then_fails_visibly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dataverse answers a create whose key is taken with 412 (often without a code): the engine
    re-reads and decides again (a record created meanwhile may match), and when the create is
    refused every time the record fails with that reason instead of poisoning the message."""
    from shared.connectors.errors import AlreadyExistsError

    h = Harness()
    bc_id = h.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum", "phoneNumber": "1", "city": "A"})[
        "id"
    ]
    attempts: list[int] = []

    def taken(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        raise AlreadyExistsError(
            "A record with matching key values already exists.", status=412, url="accounts"
        )

    monkeypatch.setattr(h.dv, "create", taken)
    result = h.sync("bc", bc_id)

    assert result.outcome == Outcome.FAILED
    assert len(attempts) == 4
    assert "refused the create 4 times because a record with its key already exists" in result.reason
    assert "bcsync couple CUSTOMER" in result.reason


SALES_USER = "5a1e5000-0000-0000-0000-000000000001"


def _journal_rows(h: Harness, outcome: str) -> list[dict[str, Any]]:
    return [row for row, _ in h.journal_table.rows.values() if row["outcome"] == outcome]


def test_a_journal_entry_says_per_field_old_and_new_who_changed_it_and_the_direction() -> None:
    h = Harness()
    _, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, name="Adatum Corp", _modifiedby_value=SALES_USER)

    h.sync("dv", dv_id)

    [row] = [r for r in _journal_rows(h, "modified") if r["PartitionKey"].startswith("t|")]
    assert (row["direction"], row["source"], row["user"]) == ("to_bc", "dv", SALES_USER)
    details = json.loads(row["details"])
    assert details["changes"] == [{
        "field": "displayName", "old": "Adatum", "new": "Adatum Corp", "direction": "to_bc", "from": "dv",
        "user": SALES_USER, "reason": "changed in Dataverse",
    }]  # fmt: skip
    entry = JournalEntry.from_row(row)
    assert entry.changes == details["changes"] and entry.conflicts == []


def test_a_resolved_conflict_is_journaled_with_both_values_and_the_winner() -> None:
    h = Harness(parse_mapping_set(MAPPING_TEXT.replace("deletion: propagate", "conflict: bc_wins")))
    bc_id, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, address1_city="Boston")
    h.bc.edit(CUSTOMER, bc_id, city="Chicago")

    h.sync("bc", bc_id)

    [row] = [r for r in _journal_rows(h, "modified") if r["PartitionKey"].startswith("t|")]
    details = json.loads(row["details"])
    assert details["conflicts"] == [
        {"field": "city", "bc": "Chicago", "dv": "Boston", "policy": "bc_wins", "winner": "bc",
         "why": "bc_wins"}
    ]  # fmt: skip
    assert details["changes"][0]["old"] == "Boston" and details["changes"][0]["new"] == "Chicago"


def test_field_times_are_kept_while_a_change_waits_and_dropped_once_it_is_synchronized() -> None:
    h = Harness(parse_mapping_set(MAPPING_TEXT.replace("deletion: propagate", "conflict: newest_wins")))
    bc_id, dv_id = h.coupled_customer()
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.seen is None  # settled: nothing waits
    h.bc.edit(CUSTOMER, bc_id, city="Chicago")
    h.dv.edit(CUSTOMER, dv_id, address1_city="Boston")
    h.sync("bc", bc_id)
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert coupling is not None and coupling.seen is None
    assert h.bc.rows("customers")[bc_id]["city"] == h.dv.rows("accounts")[dv_id]["address1_city"]


def test_a_dry_run_reads_and_decides_but_writes_nothing_anywhere() -> None:
    h = Harness()
    bc_id, dv_id = h.coupled_customer()
    h.dv.edit(CUSTOMER, dv_id, name="Adatum Corp", _modifiedby_value=SALES_USER)
    coupling = h.couplings.get("CUSTOMER", "bc", bc_id)
    journal_rows = len(h.journal_table.rows)
    new_bc = h.bc.seed(CUSTOMER, {"number": "C2", "displayName": "Trey", "phoneNumber": "", "city": "Oslo"})[
        "id"
    ]
    h.bc.requests.clear()
    h.dv.requests.clear()

    changed = h.engine.preview(SyncMessage(mapping="CUSTOMER", side="dv", id=dv_id))
    created = h.engine.preview(SyncMessage(mapping="CUSTOMER", side="bc", id=new_bc))

    assert (changed.outcome, changed.dry_run, changed.users) == (Outcome.MODIFIED, True, {"dv": SALES_USER})
    assert [(c.key, c.old, c.new, c.direction) for c in changed.changes] == [
        ("displayName", "Adatum", "Adatum Corp", "to_bc")
    ]
    assert created.outcome == Outcome.INSERTED and {c.key for c in created.changes} >= {"displayName", "city"}
    assert all(k.startswith("GET ") for k in h.requests()), h.requests()  # reads (and match queries) only
    assert h.bc.rows("customers")[bc_id]["displayName"] == "Adatum"
    assert h.couplings.get("CUSTOMER", "bc", bc_id).etag == coupling.etag  # type: ignore[union-attr]
    assert h.couplings.get("CUSTOMER", "bc", new_bc) is None
    assert len(h.journal_table.rows) == journal_rows and h.queued == []


def test_a_requeued_sync_keeps_when_it_first_saw_each_change() -> None:
    h = Harness(parse_mapping_set(MAPPING_TEXT.replace("deletion: propagate", "conflict: newest_wins")))
    bc_id, dv_id = h.coupled_customer()
    h.bc.edit(CUSTOMER, bc_id, city="Chicago")
    update = h.dv.update

    def unavailable(*_: Any, **__: Any) -> Any:
        raise TransientError("503", status=503)

    h.dv.update = unavailable  # type: ignore[method-assign]
    with pytest.raises(RequeueError):
        h.sync("bc", bc_id)
    kept = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert kept is not None and set(kept.seen or {}) == {"bc"} and set(kept.seen["bc"]) == {"city"}  # type: ignore[index]
    first_seen = kept.seen["bc"]["city"]  # type: ignore[index]

    h.dv.update = update  # type: ignore[method-assign]
    h.sync("bc", bc_id, attempt=1)
    assert h.dv.rows("accounts")[dv_id]["address1_city"] == "Chicago"
    settled = h.couplings.get("CUSTOMER", "bc", bc_id)
    assert settled is not None and settled.seen is None and first_seen[0] > 0


def test_stock_on_hand_is_asked_for_40_items_per_request() -> None:
    # What a quote line's availability column shows (Engine._show_availability): BC's `inventory` now.
    h = Harness()
    items = h.bc.rows("items")
    for n in range(90):
        item_id = f"00000000-0000-4000-8000-{n:012d}"
        items[item_id] = {"id": item_id, "inventory": n, "@odata.etag": 'W/"1"'}
    ids = list(items)[:85]

    inventory = h.engine.resolver.item_inventory([*ids, ids[0]])  # a repeated item is asked once

    assert inventory == {item_id: float(items[item_id]["inventory"]) for item_id in ids}
    assert h.bc.requests == {"GET items": 3}
