"""The names of the service's Table Storage tables, in one place.

`Storage.ensure` (run by `bcsync setup`) creates all of them; the runtime opens its stores on them.
Renaming one here strands the rows in the old table, so these are fixed once deployed.
"""

from __future__ import annotations

COUPLINGS = "Couplings"
JOURNAL = "SyncJournal"
WATERMARKS = "Watermarks"  # poll watermarks, and the statistics hashes in partition `statistics`
SUBSCRIPTIONS = "Subscriptions"
REQUEST_BUDGET = "RequestBudget"  # the integration user's requests, shared by every instance

TABLES: tuple[str, ...] = (COUPLINGS, JOURNAL, WATERMARKS, SUBSCRIPTIONS, REQUEST_BUDGET)
