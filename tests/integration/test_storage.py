import pytest
from azure.data.tables import TableServiceClient

from shared.messages import SyncMessage, decode_message, parse_json
from shared.store.storage import Storage
from shared.store.tables import TABLES

pytestmark = pytest.mark.integration


def test_queues_and_tables_are_created_idempotently(storage: Storage) -> None:
    first = storage.ensure()
    assert f"queue {storage.sync_queue_name}" in first
    assert f"queue {storage.sync_queue_name}-poison" in first
    assert storage.ensure() == []
    names = {t.name for t in storage.tables.list_tables()}
    assert set(TABLES) <= names


def test_messages_are_sent_base64_encoded_like_the_host_expects(storage: Storage) -> None:
    storage.ensure()
    storage.enqueue([SyncMessage(mapping="CUSTOMER", side="bc", id="42")])
    raw_client = storage.queues.get_queue_client(storage.sync_queue_name)  # no decode policy
    raw = raw_client.receive_message()
    assert raw is not None
    decoded = decode_message(raw.content)
    assert decoded.kind == "record" and decoded.id == "42"  # type: ignore[union-attr]


def test_table_client_reaches_azurite(storage_connection_string: str) -> None:
    tables = TableServiceClient.from_connection_string(storage_connection_string)
    client = tables.create_table_if_not_exists("Probe")
    client.upsert_entity({"PartitionKey": "p", "RowKey": "r", "v": 1})
    assert client.get_entity("p", "r")["v"] == 1


def test_a_claim_receives_many_waiting_messages_in_one_request(storage: Storage) -> None:
    """`StorageQueue.receive` (the coalescer's claims) asks for the whole count at once: without
    `messages_per_page` the SDK asks for one message per request, and a claim took one message."""
    from bench.service import StorageRequests
    from shared.sync.coalesce import StorageQueue

    storage.ensure()
    storage.queue().clear_messages()
    storage.enqueue([SyncMessage(mapping="CUSTOMER", side="dv", id=f"id-{n}") for n in range(12)])
    with StorageRequests() as requests:
        received = StorageQueue(storage.queue).receive(10, 30)
    assert len(received) == 10
    assert requests.counts["GET queue messages"] == 1
    assert {parse_json(m.content).id for m in received} <= {f"id-{n}" for n in range(12)}  # type: ignore[union-attr]


def test_parallel_requests_reuse_the_pools_connections_instead_of_opening_new_ones(storage: Storage) -> None:
    """24 workers at once against Azurite: each storage client keeps up to POOL_SIZE connections per
    host, so none is opened for one request and thrown away (requests' default pool keeps 10)."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    storage.ensure()
    table = storage.table(TABLES[0])
    discarded: list[str] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Connection pool is full" in record.getMessage():
                discarded.append(record.getMessage())

    watch = Watch()
    logging.getLogger("urllib3.connectionpool").addHandler(watch)
    try:
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda n: list(table.query_entities("PartitionKey eq 'none'")), range(240)))
    finally:
        logging.getLogger("urllib3.connectionpool").removeHandler(watch)
    assert discarded == [], f"{len(discarded)} connections thrown away"
