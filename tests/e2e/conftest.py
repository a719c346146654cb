"""One local stack per test module (the runtime is process-wide, so modules run one stack at a
time). A module that needs different app settings overrides the `e2e_environment` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import E2EStack, running_stack


@pytest.fixture(scope="module")
def e2e_environment() -> dict[str, str]:
    """App settings added to the stack's own (e.g. `MAPPINGS_FILE`)."""
    return {}


@pytest.fixture(scope="module")
def e2e(e2e_environment: dict[str, str]) -> Iterator[E2EStack]:
    with running_stack(e2e_environment) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that injects faults cannot leak them into the next one, even when it fails."""
    yield
    if "e2e" in request.fixturenames:
        stack: E2EStack = request.getfixturevalue("e2e")
        stack.bc.faults.clear()
        stack.dv.injector.clear()
