"""The names of the service's Table Storage tables, in one place.

`Storage.ensure` (run by `bcsync setup`) creates all of them; the runtime opens its stores on them.
Renaming one here strands the rows in the old table, so these are fixed once deployed.
"""

from __future__ import annotations

COUPLINGS = "Couplings"
JOURNAL = "SyncJournal"
# Poll watermarks, and a few rows that say how far a job got: the statistics hashes (partition
# `statistics`), the company registry (partition `companies`), the stock ledger cursor (`bc-ledger`).
WATERMARKS = "Watermarks"
SUBSCRIPTIONS = "Subscriptions"
REQUEST_BUDGET = "RequestBudget"  # the integration user's requests, shared by every instance

TABLES: tuple[str, ...] = (COUPLINGS, JOURNAL, WATERMARKS, SUBSCRIPTIONS, REQUEST_BUDGET)
