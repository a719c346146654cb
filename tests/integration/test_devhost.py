"""The dev host drives queue, timer and HTTP triggers like the Functions host (real Azurite)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from devstack.host import DevHost, QueueOptions
from devstack.serve import ServerHandle, serve_in_thread
from shared.messages import SyncMessage, decode_message
from shared.store.storage import Storage
from tests.integration import devhost_app

pytestmark = pytest.mark.integration

HOST_JSON = {
    "extensions": {
        "queues": {
            "batchSize": 4,
            "maxPollingInterval": "00:00:00.2",
            "visibilityTimeout": "00:00:00",
            "maxDequeueCount": 3,
        }
    }
}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def host(
    storage: Storage, storage_connection_string: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DevHost, ServerHandle]]:
    storage.ensure()
    monkeypatch.setenv("TEST_QUEUE", storage.sync_queue_name)
    monkeypatch.setenv("TEST_SCHEDULE", "*/1 * * * * *")
    devhost_app.received.clear()
    devhost_app.timer_runs.clear()
    dev = DevHost(
        devhost_app.app,
        storage_connection_string=storage_connection_string,
        host_json=HOST_JSON,
        function_key="fkey-" + uuid.uuid4().hex,
        master_key="mkey-" + uuid.uuid4().hex,
    )
    server = serve_in_thread(dev.http_app)
    dev.start()
    yield dev, server
    dev.stop()
    server.stop()


def test_queue_options_come_from_host_json() -> None:
    opts = QueueOptions.from_host_json(HOST_JSON, cores=2)
    assert (opts.batch_size, opts.max_dequeue_count, opts.visibility_timeout) == (4, 3, 0.0)
    assert opts.max_polling_interval == pytest.approx(0.2)
    assert opts.new_batch_threshold == 4  # (batchSize / 2) * cores
    defaults = QueueOptions.from_host_json({})
    assert (defaults.batch_size, defaults.max_dequeue_count, defaults.message_encoding) == (16, 5, "base64")


def test_queue_trigger_receives_and_decodes_a_message_sent_by_shared(
    host: tuple[DevHost, ServerHandle], storage: Storage
) -> None:
    message = SyncMessage(mapping="CUSTOMER", side="bc", id="abc")
    storage.enqueue([message])
    wait_for(lambda: len(devhost_app.received) == 1)
    got = devhost_app.received[0]
    assert decode_message(base64.b64encode(str(got["body"]).encode())) == message
    assert got["dequeue_count"] == 1
    wait_for(lambda: storage.queue().get_queue_properties().approximate_message_count == 0)


def test_failing_message_is_retried_then_poisoned_with_body_intact(
    host: tuple[DevHost, ServerHandle], storage: Storage
) -> None:
    body = '{"explode": true, "payload": "keep me"}'
    storage.queue().send_message(body)
    poison = storage.queue(storage.poison_queue_name)
    wait_for(lambda: poison.get_queue_properties().approximate_message_count == 1)
    attempts = [r["dequeue_count"] for r in devhost_app.received]
    assert attempts == [1, 2, 3]  # maxDequeueCount = 3
    poisoned = poison.receive_message()
    assert poisoned is not None and poisoned.content == body
    assert storage.queue().get_queue_properties().approximate_message_count == 0
    assert [i.outcome for i in host[0].invocations if i.function == "consume"][-1] == "poisoned"


def test_a_short_lease_is_renewed_while_the_function_runs_so_it_is_delivered_once(
    host: tuple[DevHost, ServerHandle], storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease is read at each receive: 2 s, while the function takes 5 s.
    monkeypatch.setenv("DEVHOST_PROCESSING_LEASE_SECONDS", "2")
    storage.queue().send_message('{"slow": 5}')
    wait_for(lambda: any(i.function == "consume" for i in host[0].invocations), timeout=20)
    assert len(devhost_app.received) == 1, devhost_app.received  # not delivered again after 2 s
    assert [i.outcome for i in host[0].invocations if i.function == "consume"] == ["succeeded"]
    wait_for(lambda: storage.queue().get_queue_properties().approximate_message_count == 0)


def test_undecodable_message_goes_to_poison_without_calling_the_function(
    host: tuple[DevHost, ServerHandle], storage: Storage
) -> None:
    raw = storage.queues.get_queue_client(storage.sync_queue_name)  # no base64 policy
    raw.send_message("this is not base64 %%%")
    poison = storage.queues.get_queue_client(storage.poison_queue_name)
    wait_for(lambda: poison.get_queue_properties().approximate_message_count == 1)
    assert devhost_app.received == []
    assert poison.receive_message().content == "this is not base64 %%%"


def test_timer_fires_on_its_schedule(host: tuple[DevHost, ServerHandle]) -> None:
    wait_for(lambda: len(devhost_app.timer_runs) >= 2, timeout=5)
    assert devhost_app.timer_runs[0] is False


def test_timer_can_be_invoked_with_the_master_key(host: tuple[DevHost, ServerHandle]) -> None:
    dev, server = host
    devhost_app.timer_runs.clear()
    assert httpx.post(f"{server.url}/admin/functions/tick").status_code == 401
    r = httpx.post(f"{server.url}/admin/functions/tick", headers={"x-functions-key": dev.master_key or ""})
    assert r.status_code == 202
    assert devhost_app.timer_runs  # ran synchronously before 202


def test_http_trigger_with_route_params_and_queue_output(
    host: tuple[DevHost, ServerHandle], storage: Storage
) -> None:
    dev, server = host
    r = httpx.get(f"{server.url}/api/orders/SO-1/lines/7", params={"q": "x", "code": dev.function_key})
    assert r.status_code == 200
    assert r.json() == {"order": "SO-1", "line": "7", "q": "x"}
    r = httpx.post(
        f"{server.url}/api/orders/SO-1/lines/7",
        content=b"hello-out",
        headers={"x-functions-key": dev.function_key or ""},
    )
    assert r.status_code == 200
    wait_for(lambda: any(rec["body"] == "hello-out" for rec in devhost_app.received))


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_function_level_route_rejects_missing_or_wrong_key(
    host: tuple[DevHost, ServerHandle], key: str | None
) -> None:
    _, server = host
    headers = {"x-functions-key": key} if key else {}
    r = httpx.get(f"{server.url}/api/orders/1/lines/1", headers=headers)
    assert r.status_code == 401
    r = httpx.get(f"{server.url}/api/orders/1/lines/1", params={"code": key or ""})
    assert r.status_code == 401


def test_anonymous_route_needs_no_key_and_wrong_method_is_refused(host: tuple[DevHost, ServerHandle]) -> None:
    _, server = host
    assert httpx.get(f"{server.url}/api/open").text == "hello"
    assert httpx.post(f"{server.url}/api/open").status_code == 405


def _served_by(server: ServerHandle, path: str) -> tuple[str, dict[str, str]]:
    r = httpx.get(f"{server.url}/api/{path}")
    assert r.status_code == 200, r.text
    return r.json()["function"], r.json()["route_params"]


def test_catch_all_route_takes_several_segments_or_none(host: tuple[DevHost, ServerHandle]) -> None:
    _, server = host
    assert _served_by(server, "files/a/b/c.txt") == ("files_catch_all", {"rest": "a/b/c.txt"})
    assert _served_by(server, "files/one") == ("files_catch_all", {"rest": "one"})
    # An empty rest matches too, and then the parameter has no value at all (as in ASP.NET Core).
    assert _served_by(server, "files") == ("files_catch_all", {})
    assert _served_by(server, "files/") == ("files_catch_all", {})
    # Literal segments are case-insensitive, values are decoded (an encoded slash stays in its segment).
    assert _served_by(server, "FILES/a%20b/c%2Fd") == ("files_catch_all", {"rest": "a b/c/d"})


def test_overlapping_routes_follow_the_hosts_function_name_order(host: tuple[DevHost, ServerHandle]) -> None:
    _, server = host
    assert _served_by(server, "files/index") == ("a_files_index", {})  # sorts before files_catch_all
    # Sorts after the catch-all: shadowed, as it would be on the Functions host (azure-functions-host#9876).
    assert _served_by(server, "files/latest") == ("files_catch_all", {"rest": "latest"})


def test_route_constraints_are_enforced(host: tuple[DevHost, ServerHandle]) -> None:
    dev, server = host
    key = {"x-functions-key": dev.function_key or ""}
    assert httpx.get(f"{server.url}/api/orders/SO-1/lines/7", headers=key).status_code == 200
    assert httpx.get(f"{server.url}/api/orders/SO-1/lines/seven", headers=key).status_code == 404
    assert httpx.get(f"{server.url}/api/orders/SO-1/lines/7/extra", headers=key).status_code == 404
