"""The Sales-side solution in a Dataverse sandbox as `bcsync setup` leaves it: imported (through the
sandbox's own import path) and the integration user holding Integration Administrator and Integration
User. For stacks that do not run set-up (tests, benchmarks); set-up's own import is what `make run`
and tests/integration/ops/test_ops_solution.py exercise."""

from __future__ import annotations

import functools
from typing import Any

from devstack.dataverse.config import INTEGRATION_USER_ID
from shared.sales.solution import ROLE_ADMINISTRATOR, ROLE_USER, pack


@functools.cache
def packed() -> bytes:
    return pack()


def install(sandbox: Any, *, user_id: str = INTEGRATION_USER_ID) -> None:
    sandbox.import_solution(packed())
    for role in (ROLE_ADMINISTRATOR, ROLE_USER):
        sandbox.assign_role(user_id, role)
