"""A document line changed in Sales notifies on its own (its document's totals may not move): the line's
notification becomes its document's sync, named by the image of the line's lookup to it; the steps that
set-up registers for it (pure: no servers)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from shared.feeds.dataverse_webhook import parse_dataverse_webhook
from shared.feeds.intake import DataverseIntakeConfig, handle_dataverse_webhook
from shared.feeds.registration import LINE_MESSAGES, ensure_dataverse_webhooks, line_tables
from shared.mapping.loader import load_mapping_set
from shared.messages import SyncMessage
from tests.support import webhook_samples as samples

MAPPINGS = load_mapping_set("mappings/default.yaml")
SECRET = "s3cret-webhook-key-0123456789"
INTEGRATION_USER = "11111111-1111-1111-1111-111111111111"
CONFIG = DataverseIntakeConfig("webhook_key", SECRET, "x-bcsync-key", INTEGRATION_USER)
LINE = "5d1f4ac1-5c6e-4a0e-9a8b-3f2d1c0e9a70"
ORDER = "7e2f4ac1-5c6e-4a0e-9a8b-3f2d1c0e9a71"


def _line_change(message: str = "Update", image: str | None = "PostImage", user: str | None = None) -> bytes:
    context: dict[str, Any] = samples.dataverse_update()
    context.update(MessageName=message, PrimaryEntityName="salesorderdetail", PrimaryEntityId=LINE)
    if user:
        context["InitiatingUserId"] = user
    reference = {"Id": ORDER, "LogicalName": "salesorder", "Name": None}
    entity = {
        "Attributes": [{"key": "salesorderid", "value": reference}],
        "Id": LINE,
        "LogicalName": "salesorderdetail",
    }
    context["PostEntityImages"], context["PreEntityImages"] = [], []
    if image is not None:
        context["PreEntityImages" if image == "PreImage" else "PostEntityImages"] = [
            {"key": image, "value": entity}
        ]
    return json.dumps(context).encode()


def _call(body: bytes) -> Any:
    return handle_dataverse_webhook({}, {"code": SECRET}, body, config=CONFIG, mappings=MAPPINGS)


def test_the_parser_reads_the_references_of_the_images() -> None:
    change = parse_dataverse_webhook(_line_change(), {})
    assert change.image_references == {"salesorderid": ORDER}
    assert parse_dataverse_webhook(_line_change(image=None), {}).image_references == {}


def test_a_line_change_syncs_its_document() -> None:
    answer = _call(_line_change())
    assert answer.status == 202, answer.body
    [message] = answer.messages
    assert isinstance(message, SyncMessage)
    assert (message.mapping, message.side, message.id, message.change) == (
        "SALES ORDER",
        "dv",
        ORDER,
        "updated",
    )
    assert LINE in message.reason


def test_a_line_removed_names_its_document_through_the_pre_image() -> None:
    [message] = _call(_line_change("Delete", "PreImage")).messages
    assert isinstance(message, SyncMessage) and (message.id, message.change) == (ORDER, "updated")


def test_a_line_notification_without_its_image_is_ignored_and_says_what_to_do() -> None:
    answer = _call(_line_change(image=None))
    assert answer.status == 202 and answer.messages == []
    assert "bcsync setup" in json.dumps(answer.body)


def test_our_own_line_writes_are_echoes() -> None:
    assert _call(_line_change(user=INTEGRATION_USER)).messages == []


def test_setup_registers_line_update_and_delete_steps_with_the_documents_lookup_as_image() -> None:
    tables = line_tables(MAPPINGS)
    assert tables["salesorderdetail"][1] == "salesorderid" and tables["quotedetail"][1] == "quoteid"
    assert {"productid", "quantity", "priceperunit", "uomid"} <= tables["salesorderdetail"][0]
    assert "invoicedetail" not in tables  # posted invoices flow to Sales only

    class Dv:
        steps: list[tuple[str, str, Any, Any]] = []

        def list_webhook_endpoints(self) -> list[dict[str, Any]]:
            return []

        def ensure_webhook_endpoint(self, *args: Any) -> str:
            return "e1"

        def list_steps(self, endpoint: str) -> list[dict[str, Any]]:
            return []

        def ensure_step(
            self, endpoint: str, message: str, table: str, filtering: Any, image: Any = None
        ) -> str:
            self.steps.append((message, table, filtering, image))
            return "s"

    dv = Dv()
    settings = SimpleNamespace(
        dataverse_webhook_auth_type="webhook_key",
        dataverse_webhook_secret=SECRET,
        dataverse_webhook_secret_name="k",
        public_url="https://f.example",
    )
    ensure_dataverse_webhooks(dv, settings, MAPPINGS)  # type: ignore[arg-type]
    line_steps = [(m, image) for m, t, _f, image in dv.steps if t == "salesorderdetail"]
    assert line_steps == [(m, ["salesorderid"]) for m in LINE_MESSAGES] and "Create" not in LINE_MESSAGES
    header_steps = [(m, image) for m, t, _f, image in dv.steps if t == "salesorder"]
    assert header_steps == [("Create", None), ("Update", None), ("Delete", None)]
