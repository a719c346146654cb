"""Finding the customer of a company contact reads the namesakes with their relations in one request
(`customers?$filter=displayName eq ...&$expand=contactsInformation`), not one request per namesake."""

from __future__ import annotations

import pytest

from shared.mapping.loader import load_mapping_set
from shared.store.couplings import CouplingStore
from shared.sync.gateways import BusinessCentralGateway
from shared.sync.resolver import LookupResolver
from tests.integration.bc.conftest import Bc
from tests.support.memory import MemoryDataverse, MemoryTable

pytestmark = pytest.mark.integration


def test_company_contact_to_customer_in_two_requests_whatever_the_namesakes(bc: Bc) -> None:
    mappings = load_mapping_set("mappings/default.yaml")
    customers = next(m for m in mappings.entities() if m.bc.entity_set == "customers")
    ids = bc.sandbox.seed(
        "customers",
        [{"displayName": "Namesake Ltd"}, {"displayName": "Namesake Ltd"}, {"displayName": "Namesake Ltd"}],
    )
    wanted = ids[2]
    number = bc.sandbox.company_contact(wanted)["number"]
    with bc.client() as client:
        resolver = LookupResolver(
            mappings,
            CouplingStore(MemoryTable()),
            BusinessCentralGateway(client, bc.company),
            MemoryDataverse(),  # type: ignore[arg-type]
        )
        assert resolver.related_to_company_contact(customers, number) == wanted
        assert client.stats.requests == {"GET contacts": 1, "GET customers": 1}
        # The namesakes' relations were learnt on the way: asking for one of them costs nothing.
        other = bc.sandbox.company_contact(ids[0])["number"]
        assert resolver.related_to_company_contact(customers, other) == ids[0]
        assert client.stats.requests == {"GET contacts": 1, "GET customers": 1}
