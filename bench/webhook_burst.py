"""Time to answer one BC notification POST of 1,000 entries (issue 13, point 5), against Azurite.

Runs the real intake (`shared.feeds.webhooks.receive_bc_webhook`: authenticate, parse, echo
lookups in Couplings, enqueue) on an Azurite of its own, then the same POST again (a redelivery).
Prints the answer times and how many messages each POST queued.

    python -m bench.webhook_burst [--entries 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

from bench.service import SandboxPorts, service_settings
from devstack.azurite import start_azurite

COMPANY = "b18aed47-c385-49d2-b954-dbdf8ad71780"
CLIENT_STATE = "bench-client-state-0123456789"


def body(entries: int) -> bytes:
    return json.dumps(
        {
            "value": [
                {
                    "subscriptionId": "bench-subscription",
                    "clientState": CLIENT_STATE,
                    "expirationDateTime": "2030-01-01T00:00:00Z",
                    "resource": f"/api/v2.0/companies({COMPANY})/customers({uuid.uuid4()})",
                    "changeType": "updated",
                    "lastModifiedDateTime": "2026-01-01T10:00:00.123Z",
                }
                for _ in range(entries)
            ]
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1000)
    args = parser.parse_args()
    azurite = start_azurite()
    try:
        # No API is called: the sandboxes' addresses are a closed port.
        os.environ.update(
            service_settings(
                azurite.connection_string, SandboxPorts(bc=9, dv=9),
                SYNC_QUEUE_NAME=f"bench-{uuid.uuid4().hex[:8]}", BC_COMPANY_IDS=COMPANY,
                BC_WEBHOOK_CLIENT_STATE=CLIENT_STATE,
                DATAVERSE_INTEGRATION_USER_ID="11111111-1111-1111-1111-111111111111",
            )
        )  # fmt: skip
        from shared import runtime
        from shared.feeds.webhooks import receive_bc_webhook

        runtime.reset()
        rt = runtime.get_runtime()
        rt.storage.ensure()
        queue = rt.storage.queue()
        payload = body(args.entries)
        receive_bc_webhook({}, body(1))  # warm up: connections, mappings
        queue.clear_messages()
        for label in ("first POST", "redelivery"):
            start = time.perf_counter()
            answer = receive_bc_webhook({}, payload)
            elapsed = time.perf_counter() - start
            depth = queue.get_queue_properties().approximate_message_count
            print(
                f"{label}: {args.entries} entries answered {answer.status} in {elapsed * 1000:.0f} ms; "
                f"queue holds {depth} messages; answer {answer.body[:80]}"
            )
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
