"""The delta poll's two checks of what no change time shows (issue 11): a BC subscription that is
gone, and BC deletions no notification reports (the periodic sweep, every `BC_SWEEP_MINUTES`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from shared.connectors.business_central import WEBHOOK_SUPPORTED_ENTITY_SETS
from shared.feeds import poll
from shared.feeds.registration import missing_bc_subscriptions, resource_path
from shared.mapping.loader import load_mapping_set
from shared.messages import ScanMessage
from shared.store.watermarks import WatermarkStore
from tests.support.memory import MemoryTable

MAPPINGS = load_mapping_set("mappings/default.yaml")
COMPANY = "b18aed47-c385-49d2-b954-dbdf8ad71780"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@dataclass
class _Settings:
    bc_sweep_minutes: float = 10.0
    public_url: str = "https://sync.example"
    bc_company_ids: list[str] = field(default_factory=lambda: [COMPANY])


@dataclass
class _Storage:
    queued: list[Any] = field(default_factory=list)

    def enqueue(self, messages: list[Any], **_: Any) -> int:
        self.queued.extend(messages)
        return len(messages)


@dataclass
class _Rt:
    settings: _Settings = field(default_factory=_Settings)
    storage: _Storage = field(default_factory=_Storage)
    watermarks: WatermarkStore = field(default_factory=lambda: WatermarkStore(MemoryTable()))  # type: ignore[arg-type]
    scope: str = ""  # the home company


def _sweeps(rt: _Rt, now: dt.datetime, *, gap: bool = False) -> list[str | None]:
    before = len(rt.storage.queued)
    poll._queue_sweep(rt, MAPPINGS.entity("CONTACT"), now, poll.PollReport(), gap=gap)  # type: ignore[arg-type]
    return [m.sweep for m in rt.storage.queued[before:] if isinstance(m, ScanMessage)]


def test_the_deletion_sweep_is_queued_once_per_interval() -> None:
    rt = _Rt()
    assert _sweeps(rt, T0) == ["deletions"]  # the first poll sweeps at once
    assert _sweeps(rt, T0 + dt.timedelta(minutes=9)) == []
    assert _sweeps(rt, T0 + dt.timedelta(minutes=10)) == ["deletions"]
    [message] = rt.storage.queued[-1:]
    assert message.mapping == "CONTACT" and message.side == "bc" and message.since is None


def test_a_subscription_gap_sweeps_changes_and_deletions_at_once() -> None:
    rt = _Rt()
    _sweeps(rt, T0)
    assert _sweeps(rt, T0 + dt.timedelta(minutes=1), gap=True) == ["all"]


def test_zero_minutes_sweeps_at_every_poll() -> None:
    rt = _Rt(settings=_Settings(bc_sweep_minutes=0))
    assert _sweeps(rt, T0) == ["deletions"]
    assert _sweeps(rt, T0 + dt.timedelta(seconds=1)) == ["deletions"]


class _Bc:
    def __init__(self, subscriptions: list[dict[str, Any]]) -> None:
        self.subscriptions = subscriptions

    def list_subscriptions(self) -> list[dict[str, Any]]:
        return self.subscriptions

    def webhook_supported_entity_sets(self, company_id: str) -> frozenset[str]:
        return WEBHOOK_SUPPORTED_ENTITY_SETS


def test_missing_subscriptions_are_the_targets_bc_has_none_for_on_our_url() -> None:
    settings = _Settings()
    url = "https://sync.example/api/webhooks/bc"
    everything = missing_bc_subscriptions(_Bc([]), settings, MAPPINGS)  # type: ignore[arg-type]
    assert ("b18aed47-c385-49d2-b954-dbdf8ad71780", "customers") in everything
    assert all(entity_set not in ("contacts", "salespeoplePurchasers") for _, entity_set in everything)
    live = [{"notificationUrl": url, "resource": resource_path(c, s).lstrip("/")} for c, s in everything]
    assert missing_bc_subscriptions(_Bc(live), settings, MAPPINGS) == []  # type: ignore[arg-type]
    elsewhere = [{**sub, "notificationUrl": "https://other.example/hook"} for sub in live]
    assert missing_bc_subscriptions(_Bc(elsewhere), settings, MAPPINGS) == everything  # type: ignore[arg-type]


class _BcListing(_Bc):
    """A BC whose webhookSupportedResources page lists only some sets (e.g. an older release)."""

    def __init__(self, supported: frozenset[str]) -> None:
        super().__init__([])
        self.supported = supported
        self.asked: list[str] = []

    def webhook_supported_entity_sets(self, company_id: str) -> frozenset[str]:
        self.asked.append(company_id)
        return self.supported


def test_subscription_targets_are_what_bc_lists_as_webhook_supported() -> None:
    settings = _Settings()
    mapped = {entity_set for _, entity_set in missing_bc_subscriptions(_Bc([]), settings, MAPPINGS)}  # type: ignore[arg-type]
    assert "items" in mapped
    bc = _BcListing(frozenset(mapped - {"items"}) | {"contacts"})
    targets = missing_bc_subscriptions(bc, settings, MAPPINGS)  # type: ignore[arg-type]
    assert {entity_set for _, entity_set in targets} == (mapped - {"items"}) | {"contacts"}
    assert bc.asked == list(settings.bc_company_ids)  # asked per company
