"""BC notifications of the service's own writes, known by their stamp without reading the record.

BC stamps a notification with the time its change began (`CurrentDateTime` in `OnDatabaseModify`),
before the platform sets the record's `lastModifiedDateTime`; a coupling keeps that
`lastModifiedDateTime` as the last sync read it back (its *horizon*). A change stamped before the
horizon is one that sync already saw (our write's own notification); a person's change after it is
stamped after it. Only for settled couplings; a change this misses still differs in
`lastModifiedDateTime`, so the delta poll finds it.

The processor applies this to the coupling it reads (`stamped_before_sync`). The BC webhook applies
it before anything is queued, to the horizons of the couplings this process stored lately
(`EchoHorizons`, fed by the coupling store): an echo of our own write then costs no queue message,
no storage read and no processing, as a Dataverse echo (made by the integration user) does. Each BC
update or create is also reported as soon as BC answers it (`Engine.bc_written`, on the one-record
path and in coalesced batches), before its coupling is stored, so the notification does not
overtake it. A horizon this process does not know (another instance wrote, a restart, an old
write) just queues the notification as before; a stale one is earlier than the stored one, so it
only recognises fewer echoes, never more.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict

from shared.messages import SyncMessage
from shared.store.couplings import Coupling
from shared.sync.reconcile import Outcome
from shared.timestamps import parse_iso

# Results after which the snapshot is trustworthy enough to call an unchanged source an echo.
SETTLED = {Outcome.UNCHANGED, Outcome.MODIFIED, Outcome.INSERTED, Outcome.COUPLED, Outcome.RESTORED}
ECHO_BY_STAMP = "BC stamped this change before the last sync read the record back (echo of that sync)"
# Horizons kept per process: BC notifies within a minute or so (30 s on a real tenant); the bound keeps
# memory small (about 200 bytes per record) whatever the traffic, the oldest going first.
MAX_HORIZONS = 50_000


def horizon(coupling: Coupling | None) -> dt.datetime | None:
    """The `lastModifiedDateTime` the coupling's last sync read back, if that sync settled the pair."""
    if coupling is None or coupling.state != "coupled" or coupling.skipped:
        return None
    if not coupling.bc_modified or coupling.last_result not in SETTLED or coupling.snapshot is None:
        return None
    return parse_iso(coupling.bc_modified)


def stamped_before(message: SyncMessage, known: dt.datetime | None) -> bool:
    """Whether `message` is a BC notification stamped before `known` (a coupling's horizon): never a
    deletion, nor a message without a stamp (a poll's)."""
    if message.side != "bc" or message.change not in ("created", "updated") or not message.modified:
        return False
    return known is not None and parse_iso(message.modified) < known


def stamped_before_sync(message: SyncMessage, coupling: Coupling | None) -> bool:
    """A BC notification that reports the service's own last write, by the coupling just read."""
    return stamped_before(message, horizon(coupling))


class EchoHorizons:
    """The horizons of the couplings this process stored lately, by company scope, mapping and BC id
    (thread-safe). The coupling store reports each write and deletion (`CouplingObserver`)."""

    def __init__(self, max_records: int = MAX_HORIZONS) -> None:
        self._max = max_records
        self._known: OrderedDict[tuple[str, str, str], dt.datetime] = OrderedDict()
        self._lock = threading.Lock()

    def stored(self, scope: str, coupling: Coupling) -> None:
        if coupling.bc_id:
            self._put((scope, coupling.mapping, coupling.bc_id.lower()), horizon(coupling))

    def wrote(self, scope: str, mapping: str, bc_id: str, bc_modified: str) -> None:
        """A write of this process answered with `bc_modified`, its coupling not stored yet: its
        notification is an echo already (if the coupling then cannot be stored, the record is decided
        again from both sides as they are, which covers the write)."""
        self._put((scope, mapping, bc_id.lower()), parse_iso(bc_modified))

    def deleted(self, scope: str, coupling: Coupling) -> None:
        if coupling.bc_id:
            self._put((scope, coupling.mapping, coupling.bc_id.lower()), None)

    def echo(self, scope: str, message: SyncMessage) -> bool:
        """Whether `message` is the notification of a write whose coupling this process stored."""
        with self._lock:
            known = self._known.get((scope, message.mapping, message.id.lower()))
        return stamped_before(message, known)

    def _put(self, key: tuple[str, str, str], known: dt.datetime | None) -> None:
        """The newest horizon of a record (None forgets it), the oldest records going first."""
        with self._lock:
            self._known.pop(key, None)
            if known is not None:
                self._known[key] = known
                while len(self._known) > self._max:
                    self._known.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()


# One per process: the coupling stores of every company view report to it, the BC webhook asks it.
ECHOES = EchoHorizons()
