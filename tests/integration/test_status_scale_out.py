"""The Sales status column (`status_column`) with several instances of the service: each instance
is its own `Engine` (what it wrote itself is all it remembers), all share one Couplings table in Azure
Storage (Azurite) and talk to the same BC and Dataverse (in-memory gateways here: the status
decisions are the engine's, the storage is real). Whichever instance syncs a record next must leave
the column saying what is true: the failure's sentence while it fails, empty once it is in sync."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.connectors.errors import ValidationError
from shared.mapping.loader import parse_mapping_set
from shared.messages import SyncMessage
from shared.store import tables
from shared.store.couplings import CouplingStore
from shared.store.journal import Journal
from shared.store.storage import Storage
from shared.sync.engine import Engine
from shared.sync.reconcile import Outcome
from tests.support.memory import MemoryBc, MemoryDataverse

pytestmark = pytest.mark.integration

MAPPINGS = parse_mapping_set("""
version: 1
settings: {ownership: {model: team, team_id: 00000000-0000-0000-0000-0000000000aa}}
mappings:
  - name: CUSTOMER
    bc: {entity_set: customers, key: number}
    dataverse:
      table: account
      entity_set: accounts
      couple_by_column: bcs_bcnumber
      status_column: bcs_bccouplingstatus
    fields:
      - {bc: displayName, dv: name, match_priority: 2}
      - {bc: city, dv: address1_city}
      - {key: bc_number, bc: number, dv: bcs_bcnumber, direction: to_dataverse}
""")
CUSTOMER = MAPPINGS.entity("CUSTOMER")
STATUS = "bcs_bccouplingstatus"


def _drop(messages: Any, delay: int) -> None:
    pass


class Instances:
    """Two instances of the service on one storage account, one BC and one Dataverse."""

    def __init__(self, storage: Storage) -> None:
        storage.ensure()
        self.bc, self.dv = MemoryBc(), MemoryDataverse()
        # A fresh scope per test keeps its rows apart in the shared table.
        couplings = CouplingStore(storage.table(tables.COUPLINGS), scope=f"t{uuid.uuid4().hex[:8]}:")
        journal = Journal(storage.table(tables.JOURNAL))
        self.a, self.b = (
            Engine(
                mappings=MAPPINGS, bc=self.bc, dv=self.dv, couplings=couplings, journal=journal, enqueue=_drop
            )
            for _ in range(2)
        )

    def account(self, number: str | None) -> str:
        row = {
            "name": f"Lead {uuid.uuid4().hex[:4]}",
            "address1_city": None,
            "bcs_bcnumber": number,
            STATUS: None,
        }
        return str(self.dv.seed(CUSTOMER, row)["accountid"])

    def sync(self, engine: Engine, dv_id: str) -> Any:
        return engine.sync_record(SyncMessage(mapping="CUSTOMER", side="dv", id=dv_id))

    def status(self, dv_id: str) -> str | None:
        return self.dv.rows("accounts")[dv_id][STATUS]

    def type_number(self, dv_id: str, number: str | None) -> None:
        self.dv.rows("accounts")[dv_id]["bcs_bcnumber"] = number


@pytest.fixture
def two(storage: Storage) -> Instances:
    return Instances(storage)


def test_a_refusal_shown_by_one_instance_is_emptied_by_the_other_once_the_record_syncs(
    two: Instances,
) -> None:
    dv_id = two.account("NOPE")
    refused = two.sync(two.a, dv_id)
    assert refused.outcome == Outcome.FAILED and two.status(dv_id) == refused.error

    # The salesperson clears the number: the account is a new customer, created in BC by instance B,
    # which never wrote this record's status and has no coupling that failed.
    two.type_number(dv_id, None)
    created = two.sync(two.b, dv_id)
    assert created.outcome == Outcome.INSERTED, created
    assert two.status(dv_id) is None, "a stale refusal stayed on a record in sync"


def test_a_refusal_is_shown_again_after_another_instance_emptied_it(two: Instances) -> None:
    two.bc.seed(CUSTOMER, {"number": "C1", "displayName": "Adatum"})
    dv_id = two.account("NOPE")
    first = two.sync(two.a, dv_id)
    assert first.outcome == Outcome.FAILED and two.status(dv_id) == first.error

    two.type_number(dv_id, "C1")  # corrected: instance B couples it and empties the status
    assert two.sync(two.b, dv_id).outcome == Outcome.MODIFIED and two.status(dv_id) is None
    two.type_number(dv_id, None)  # cleared: B uncouples it
    assert two.sync(two.b, dv_id).outcome == Outcome.UNCOUPLED
    two.type_number(dv_id, "NOPE")  # the same wrong number again, synced by instance A
    again = two.sync(two.a, dv_id)
    assert again.outcome == Outcome.FAILED and again.error == first.error
    assert two.status(dv_id) == again.error, "a failing record shows no reason"


def test_the_status_is_written_once_whichever_instance_syncs(two: Instances) -> None:
    dv_id = two.account("NOPE")
    two.sync(two.a, dv_id)
    two.dv.requests.clear()
    two.sync(two.b, dv_id)  # the same refusal on the other instance: already shown, not written again
    assert "PATCH accounts" not in two.dv.requests, two.dv.requests


def test_a_status_write_that_failed_is_made_by_the_next_sync_on_any_instance(
    two: Instances, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise ValidationError("the column is read-only for now", status=400, service="dataverse")

    dv_id = two.account("NOPE")
    monkeypatch.setattr(two.a, "_write_status", refuse)
    assert two.sync(two.a, dv_id).outcome == Outcome.FAILED  # the sync's own outcome stands
    assert two.status(dv_id) is None
    again = two.sync(two.b, dv_id)
    assert two.status(dv_id) == again.error
