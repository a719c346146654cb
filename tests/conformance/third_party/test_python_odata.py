"""`python-odata` (PyPI), a schema-driven OData v4 client, reading the BC sandbox's `$metadata`.

It builds its entity classes from the EDMX at `<service root>/$metadata` and then queries with them, so
it only works when the metadata and the data agree. It reaches the sandbox as BC's API host name
through the loopback proxy of `conftest.tls_bc` (requests' documented HTTPS_PROXY and
REQUESTS_CA_BUNDLE), unpatched.
"""

from __future__ import annotations

import pytest
import requests
from odata import ODataService

from devstack.bc import DEFAULT_COMPANY_ID
from tests.conformance.third_party.conftest import BC_HOST, TlsBc

pytestmark = pytest.mark.integration
SERVICE_ROOT = f"https://{BC_HOST}/v2.0/contoso/production/api/v2.0/"


@pytest.fixture
def service(tls_bc: TlsBc) -> ODataService:
    tls_bc.sandbox.reset()
    session = requests.Session()
    session.headers["Authorization"] = "Bearer integration-user"
    return ODataService(SERVICE_ROOT, session=session, reflect_entities=True, quiet_progress=True)


def test_reflected_types_match_the_data(service: ODataService, tls_bc: TlsBc) -> None:
    assert set(service.entities) == {"companies"}  # as in BC, every other set is reached through a company
    Company = service.entities["companies"]
    company = service.query(Company).filter(Company.name == "CRONUS USA, Inc.").first()
    assert company.id == DEFAULT_COMPANY_ID and company.displayName == "CRONUS USA, Inc. (Sandbox)"
    customers = company.customers
    assert {c.number for c in customers} == {"C00010", "C00020"}
    first = customers[0]
    stored = tls_bc.sandbox.get("customers", first.id)
    assert first.displayName == stored["displayName"] and float(first.creditLimit) == stored["creditLimit"]
    lines = [(name, getattr(first, name)) for name in ("city", "country", "blocked", "taxLiable")]
    assert lines == [(name, stored[name]) for name, _ in lines]
    items = company.items
    assert {i.number for i in items} == {"I00010", "I00020"}
    assert all(hasattr(i, "inventoryPostingGroupCode") for i in items)
    assert set(tls_bc.proxy.tunnelled) == {BC_HOST} and not tls_bc.proxy.refused


def test_queries_built_from_the_schema(service: ODataService) -> None:
    Company = service.entities["companies"]
    by_display_name = service.query(Company).filter(Company.displayName == "CRONUS Canada (Sandbox)").all()
    assert [c.name for c in by_display_name] == ["CRONUS Canada, Inc."]
    ordered = service.query(Company).order_by(Company.name.desc()).all()
    assert [c.name for c in ordered] == ["CRONUS USA, Inc.", "CRONUS Canada, Inc."]
    selected = service.query(Company).select(Company.id, Company.name).order_by(Company.name.asc()).first()
    assert selected == {"id": "7e9a1b3c-5d7f-4a2b-8c4d-6e8f0a2b4c6d", "name": "CRONUS Canada, Inc."}
