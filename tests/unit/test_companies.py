"""Several BC companies: keys, ids, messages and the Dataverse tag (`shared.companies`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from shared.companies import COMPANY_BIND, company_filter, key_prefix
from shared.mapping.loader import load_mapping_set
from shared.mapping.values import dataverse_id_for
from shared.messages import BatchMessage, SyncMessage, pack
from shared.sales.statistics import CustomerFigures, statistics_row
from shared.store.couplings import CouplingStore, partition
from shared.store.journal import Journal
from shared.sync.engine import Engine
from shared.sync.gateways import CompanyTag, DataverseGateway
from shared.sync.reconcile import Outcome
from tests.support.memory import MemoryBc, MemoryDataverse, MemoryTable
from tests.unit.test_engine import CUSTOMER, MAPPINGS

HOME = "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c"
OTHER = "7E9A1B3C-5D7F-4A2B-8C4D-6E8F0A2B4C6D"
ROW = "11111111-2222-3333-4444-555555555555"


def test_the_home_company_keeps_the_keys_of_a_single_company_deployment() -> None:
    assert key_prefix(HOME, HOME) == key_prefix(HOME.upper(), HOME) == ""
    assert key_prefix(OTHER, HOME) == OTHER.lower() + ":"
    assert dataverse_id_for("CUSTOMER", "abc", key_prefix(HOME, HOME)) == dataverse_id_for("CUSTOMER", "abc")
    assert dataverse_id_for("CUSTOMER", "abc", key_prefix(OTHER, HOME)) != dataverse_id_for("CUSTOMER", "abc")


def _engine(bc: MemoryBc, dv: MemoryDataverse, table: MemoryTable, scope: str) -> Engine:
    return Engine(
        mappings=MAPPINGS,
        bc=bc,
        dv=dv,
        couplings=CouplingStore(table, scope),  # type: ignore[arg-type]
        journal=Journal(MemoryTable(), scope),  # type: ignore[arg-type]
        enqueue=lambda messages, delay: None,
    )


def test_two_companies_with_the_same_bc_id_get_two_dataverse_records_and_two_couplings() -> None:
    # BC copies SystemIds when it copies a company: both companies hold a customer with this id.
    table, dv = MemoryTable(), MemoryDataverse()
    home_bc, other_bc = MemoryBc(), MemoryBc()
    bc_id = home_bc.seed(CUSTOMER, {"number": "C1", "displayName": "Home"})["id"]
    other_bc.seed(CUSTOMER, {"id": bc_id, "number": "C2", "displayName": "Copied"})
    home = _engine(home_bc, dv, table, "")
    other = _engine(other_bc, dv, table, key_prefix(OTHER, HOME))

    first = home.sync_record(SyncMessage(mapping="CUSTOMER", side="bc", id=bc_id))
    second = other.sync_record(SyncMessage(mapping="CUSTOMER", side="bc", id=bc_id))

    assert (first.outcome, second.outcome) == (Outcome.INSERTED, Outcome.INSERTED)
    assert first.dv_id == dataverse_id_for(CUSTOMER, bc_id) != second.dv_id
    assert {r["name"] for r in dv.rows("accounts").values()} == {"Home", "Copied"}
    home_pair, other_pair = (
        home.couplings.get("CUSTOMER", "bc", bc_id),
        other.couplings.get("CUSTOMER", "bc", bc_id),
    )
    assert home_pair is not None and other_pair is not None
    assert (home_pair.dv_id, other_pair.dv_id) == (first.dv_id, second.dv_id)
    # The home company's row is where a single-company deployment stored it.
    assert (partition("CUSTOMER", f"dv:{first.dv_id}"), f"dv:{first.dv_id}") in table.rows
    assert other.couplings.get("CUSTOMER", "dv", str(first.dv_id)) is None


def test_messages_of_two_companies_are_never_batched_together() -> None:
    messages = [
        SyncMessage(
            mapping="CUSTOMER", side="bc", id=f"00000000-0000-0000-0000-00000000000{i}", company=company
        )
        for i, company in enumerate([HOME, OTHER, HOME, OTHER])
    ]
    packed = pack(messages)
    assert sorted(positions for _, positions in packed) == [[0, 2], [1, 3]]
    for batch, positions in packed:
        assert isinstance(batch, BatchMessage)
        assert {r.company for r in batch.records()} == {messages[positions[0]].company}


class _Client:
    """What `DataverseGateway` sends, without a server."""

    def __init__(self) -> None:
        self.created: list[tuple[str, Mapping[str, Any]]] = []
        self.filters: list[str | None] = []

    def create(self, entity_set: str, body: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        self.created.append((entity_set, body))
        return dict(body)

    def query_pages(self, entity_set: str, *, filter: str | None, **_: Any) -> Sequence[list[dict[str, Any]]]:
        self.filters.append(filter)
        return []


def test_a_company_tags_what_it_creates_and_reads_only_its_rows_of_tagged_tables() -> None:
    ms = load_mapping_set("mappings/default.yaml")
    account, currency = ms.entity("CUSTOMER"), ms.entity("CURRENCY")
    for home in (True, False):
        client = _Client()
        gateway = DataverseGateway(client, CompanyTag(lambda: ROW, home))  # type: ignore[arg-type]
        gateway.create(account, {"name": "n"}, select=[], record_id=None)
        gateway.create(currency, {"isocurrencycode": "EUR"}, select=[], record_id=None)
        gateway.query_pages(account, select=[], filter="accountnumber eq 'C1'")
        gateway.query_pages(currency, select=[], filter="isocurrencycode eq 'EUR'")
        assert client.created[0][1][COMPANY_BIND] == f"/bcbi_companies({ROW})"
        assert COMPANY_BIND not in client.created[1][1]  # currencies are shared by all companies
        own = company_filter(ROW, include_untagged=home)
        assert client.filters == [f"{own} and (accountnumber eq 'C1')", "isocurrencycode eq 'EUR'"]
    assert company_filter(ROW, include_untagged=True) == (
        f"(_bcbi_companyid_value eq {ROW} or _bcbi_companyid_value eq null)"
    )
    untagged = _Client()
    DataverseGateway(untagged).create(account, {"name": "n"}, select=[], record_id=None)  # type: ignore[arg-type]
    assert untagged.created == [("accounts", {"name": "n"})]  # one company: nothing tagged


def test_another_companys_statistics_row_never_overwrites_one_with_the_same_customer_number() -> None:
    figures = CustomerFigures("c1", "C00010", "Adatum")
    as_of = dt.date(2026, 3, 1)
    home = statistics_row(figures, "a-home", as_of)
    other, again = (
        statistics_row(figures, "a-other", as_of, by_id=True),
        statistics_row(figures, "a-other", as_of, by_id=True),
    )
    assert home["@odata.id"] == "bcs_customerstatistics(bcs_customerno='C00010')"  # as before
    assert "@odata.id" not in other and other["bcs_customerstatisticid"] == again["bcs_customerstatisticid"]
    assert other["bcs_accountid@odata.bind"] == "/accounts(a-other)"
