"""Deletion under `deletion: propagate` (default.yaml's CUSTOMER uses `none`; that case is in
test_engine_e2e). This module runs its own stack on a copy of default.yaml with the policy changed."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.harness import E2EStack, mapping_file, wait_for

pytestmark = pytest.mark.e2e

CUSTOMER = "CUSTOMER"


@pytest.fixture(scope="module")
def e2e_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("mappings")
    return mapping_file(folder, "propagate", CUSTOMER={"deletion": "propagate"})


@pytest.mark.parametrize("deleted_in", ["bc", "dv"])
def test_deleting_one_side_deletes_the_other_and_the_coupling(e2e: E2EStack, deleted_in: str) -> None:
    assert e2e.rt.mappings.entity(CUSTOMER).deletion == "propagate"
    customer = e2e.bc_create("customers", {"displayName": f"Doomed {uuid.uuid4().hex[:6]}"})
    coupling = e2e.wait_coupled(CUSTOMER, "bc", customer["id"])
    dv_id = str(coupling.dv_id)
    e2e.settle()

    if deleted_in == "bc":
        e2e.bc_delete("customers", customer["id"])
        wait_for(lambda: e2e.dv_get("accounts", dv_id) is None, "the account to be deleted")
    else:
        response = e2e.dv_http.delete(f"accounts({dv_id})")
        assert response.status_code == 204, response.text
        wait_for(lambda: e2e.bc_get("customers", customer["id"]) is None, "the customer to be deleted")
    e2e.settle()

    assert e2e.coupling(CUSTOMER, "bc", customer["id"]) is None
    assert e2e.coupling(CUSTOMER, "dv", dv_id) is None
    side, record_id = ("bc", customer["id"]) if deleted_in == "bc" else ("dv", dv_id)
    outcomes = [e.outcome for e in e2e.rt.journal.history(CUSTOMER, side, record_id)]
    assert outcomes[0] == "deleted", outcomes
    assert not e2e.failures()
