"""Which BC sets get a webhook subscription (shared/feeds/registration.py): the mapped sets that BC lists
as webhook-supported in each company (`webhookSupportedResources`), not a fixed list; the others are fed
by the delta poll only."""

from __future__ import annotations

from types import SimpleNamespace

from shared.feeds.registration import bc_subscription_targets
from shared.mapping import load_mapping_set

COMPANY_A = "b18aed47-c385-49d2-b954-dbdf8ad71780"
COMPANY_B = "7dbba574-5f69-4167-a43e-fb975045de15"


class _Bc:
    """What each company's `webhookSupportedResources` page lists."""

    def __init__(self, supported: dict[str, frozenset[str]]) -> None:
        self.supported = supported
        self.asked: list[str] = []

    def webhook_supported_entity_sets(self, company_id: str) -> frozenset[str]:
        self.asked.append(company_id)
        return self.supported[company_id]


def test_subscriptions_follow_what_each_company_lists_as_webhook_supported() -> None:
    mappings = load_mapping_set()
    mapped = {m.bc.entity_set for m in mappings.entities() if m.writes_to("dv")}
    assert {"customers", "items"} <= mapped
    bc = _Bc(
        {
            COMPANY_A: frozenset({"customers", "items", "subscriptionsNobodyMaps"}),
            COMPANY_B: frozenset({"customers"}),  # e.g. a BC whose items page has webhooks off
        }
    )
    settings = SimpleNamespace(bc_company_ids=[COMPANY_A, COMPANY_B])
    targets = bc_subscription_targets(settings, mappings, bc)  # type: ignore[arg-type]
    assert targets == [(COMPANY_A, "customers"), (COMPANY_A, "items"), (COMPANY_B, "customers")]
    assert bc.asked == [COMPANY_A, COMPANY_B]
