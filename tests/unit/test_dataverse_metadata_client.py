"""The Dataverse client's table-metadata reads: change tracking asked once per table (cached for
hours), option sets from the typed attribute casts; httpx's MockTransport, no server."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from shared.connectors import dataverse
from shared.connectors.credentials import StaticTokenCredential
from shared.connectors.dataverse import CHANGE_TRACKING_NOT_ENABLED, METADATA_TTL_SECONDS, DataverseClient
from shared.connectors.errors import ValidationError
from shared.connectors.retry import RetryPolicy

BASE = "https://org.crm.dynamics.com/api/data/v9.2/"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_with(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[DataverseClient, list[httpx.Request], Clock]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.Client(transport=httpx.MockTransport(record))
    client = DataverseClient(
        BASE, StaticTokenCredential("tok"), http=http, policy=RetryPolicy(base_delay=0), sleep=lambda s: None
    )
    clock = Clock()
    client._clock = clock
    return client, seen, clock


def tracking(enabled: dict[str, bool]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.split("LogicalName='")[1].split("'")[0]
        return httpx.Response(200, json={"MetadataId": "m", "ChangeTrackingEnabled": enabled[name]})

    return handler


def test_change_tracking_is_asked_once_per_table_not_per_poll() -> None:
    client, seen, clock = client_with(tracking({"account": True, "contact": True}))

    assert client.change_tracking_enabled("account") is True
    assert client.change_tracking_enabled("account") is True
    clock.now += 10 * METADATA_TTL_SECONDS  # on stays on: Dataverse cannot turn it off again
    assert client.change_tracking_enabled("account") is True
    assert client.change_tracking_enabled("contact") is True

    assert [r.url.path.split("/")[-1] for r in seen] == [
        "EntityDefinitions(LogicalName='account')",
        "EntityDefinitions(LogicalName='contact')",
    ]
    assert seen[0].url.params["$select"] == "ChangeTrackingEnabled"


def test_a_table_without_change_tracking_is_asked_again_after_the_ttl_or_on_refresh() -> None:
    flags = {"account": False}
    client, seen, clock = client_with(tracking(flags))

    assert client.change_tracking_enabled("account") is False
    clock.now += METADATA_TTL_SECONDS - 1
    assert client.change_tracking_enabled("account") is False
    assert len(seen) == 1
    flags["account"] = True  # an administrator turned it on
    clock.now += 2
    assert client.change_tracking_enabled("account") is True
    assert len(seen) == 2
    assert client.change_tracking_enabled("account", refresh=True) is True
    assert len(seen) == 3


def test_a_refused_delta_request_marks_the_table_untracked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "EntityDefinitions" in request.url.path:
            return httpx.Response(200, json={"ChangeTrackingEnabled": True})
        message = "Entity account isn't enabled for change tracking."
        return httpx.Response(400, json={"error": {"code": CHANGE_TRACKING_NOT_ENABLED, "message": message}})

    client, seen, _ = client_with(handler)
    assert client.change_tracking_enabled("account") is True

    with pytest.raises(ValidationError) as refused:
        client.changes("accounts", select=["accountid"], delta_link=None)

    assert refused.value.code == CHANGE_TRACKING_NOT_ENABLED
    assert seen[-1].headers["prefer"].startswith("odata.track-changes")
    assert client.change_tracking_enabled("account") is False  # from the refusal, no new request
    assert len(seen) == 2


def test_option_sets_read_each_cast_with_its_options() -> None:
    answers = {
        "PicklistAttributeMetadata": [
            {"LogicalName": "customertypecode", "OptionSet": {"Options": [
                {"Value": 3, "Label": {"UserLocalizedLabel": {"Label": "Customer"}, "LocalizedLabels": []}},
            ]}},
            # A column bound to a global choice.
            {"LogicalName": "industrycode", "OptionSet": None, "GlobalOptionSet": {"Options": [
                {"Value": 7, "Label": {"LocalizedLabels": [{"Label": "Consulting", "LanguageCode": 1033}]}},
            ]}},
        ],
        "StateAttributeMetadata": [
            {"LogicalName": "statecode", "OptionSet": {"Options": [{"Value": 0, "Label": {}}]}},
        ],
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        cast = request.url.path.rsplit(".", 1)[1]
        return httpx.Response(200, json={"value": answers[cast]})

    client, seen, _ = client_with(handler)

    options = client.option_sets("account", ("PicklistAttributeMetadata", "StateAttributeMetadata"))

    assert options == {
        "customertypecode": {3: "Customer"},
        "industrycode": {7: "Consulting"},
        "statecode": {0: ""},
    }
    assert len(seen) == 2
    assert seen[0].url.path.endswith(
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    )
    assert seen[0].url.params["$select"] == "LogicalName"
    assert seen[0].url.params["$expand"] == "OptionSet($select=Options)"
    assert client.stats.requests["GET EntityDefinitions"] == 2


def test_enabling_change_tracking_puts_the_whole_definition_and_publishes() -> None:
    definition = {
        "@odata.context": f"{BASE}$metadata#EntityDefinitions/$entity",
        "MetadataId": "70816501-edb9-4740-a16c-6a5efbc05d84",
        "LogicalName": "account",
        "ChangeTrackingEnabled": False,
        "DisplayName": {"LocalizedLabels": [{"Label": "Account", "LanguageCode": 1033}]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=definition)
        return httpx.Response(204)

    client, seen, _ = client_with(handler)
    client.enable_change_tracking("account")

    get, put, publish = seen
    assert get.method == "GET" and get.url.path.endswith("EntityDefinitions(LogicalName='account')")
    assert put.method == "PUT" and put.url.path.endswith(
        "EntityDefinitions(70816501-edb9-4740-a16c-6a5efbc05d84)"
    )
    assert put.headers["mscrm.mergelabels"] == "true"
    body = json.loads(put.content)
    assert body["ChangeTrackingEnabled"] is True and body["DisplayName"] == definition["DisplayName"]
    assert "@odata.context" not in body
    assert publish.url.path.endswith("/PublishXml")
    assert "<entity>account</entity>" in json.loads(publish.content)["ParameterXml"]
    assert client.change_tracking_enabled("account") is True and len(seen) == 3


def test_logical_names_are_checked_before_they_go_into_a_url() -> None:
    client, seen, _ = client_with(tracking({}))
    with pytest.raises(ValueError):
        client.change_tracking_enabled("account')/x")
    assert seen == [] and dataverse.OPTION_SET_CASTS[0] == "PicklistAttributeMetadata"
