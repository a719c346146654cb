"""The pure core: given a mapping, the coupling snapshot and both records, decide what to write.

No I/O, no clock, no randomness: the same inputs always give the same `Plan`. The engine reads the
records (or presumes an unchanged counterpart, `presumed_record`) and the lookups, calls `reconcile`,
performs the plan's writes conditionally on the records' ETags, then stores `take_snapshot` of the
records as read back after the writes.

Change detection is per side: a field changed on a side when that side's current value differs from the
value the snapshot holds *for that side*. Translation (value maps, lookups, normalisation) is only used to
compute what to write, so a lossy or server-normalised translation never looks like a change.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from shared.mapping.lookups import Lookups
from shared.mapping.queries import in_scope, modified_field, primary_key, scope_clauses, scope_filter
from shared.mapping.schema import EntityMapping, FieldMapping, MappingSet, Side
from shared.mapping.values import (
    SIDE_NAME,
    LookupMissing,
    MissingLookup,
    Record,
    TranslationError,
    bc_body,
    constant_value,
    dataverse_id_for,
    dv_body,
    expected_after_write,
    field_name,
    other,
    owner_team_bind,
    read,
    same,
    side_type,
    translate,
)
from shared.timestamps import iso_ms, parse_iso

Snapshot = dict[str, dict[str, Any]]  # {"bc": {field key: canonical value}, "dv": {...}}, JSON-serialisable
# When the service first saw each side's value of each field: {"bc": {field key: [epoch ms, value digest]}}.
# Stored on the coupling next to the snapshot; `newest_wins` decides per field with it.
FieldTimes = dict[str, dict[str, list[Any]]]
ChangeTimes = Mapping[str, Mapping[str, dt.datetime]]  # side -> field key -> when its value first appeared
FlowDirection = Literal["to_dataverse", "to_bc"]
SIDES: tuple[Side, Side] = ("bc", "dv")


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    MODIFIED = "modified"
    INSERTED = "inserted"
    COUPLED = "coupled"
    CONFLICT = "conflict"  # some fields conflict under policy `none`; the others are written
    SKIPPED = "skipped"
    FAILED = "failed"
    DEFERRED = "deferred"  # a lookup target is not coupled yet: sync `Plan.missing` first, then retry
    DELETED = "deleted"
    UNCOUPLED = "uncoupled"
    RESTORED = "restored"


@dataclass(frozen=True)
class Write:
    kind: Literal["create", "update", "delete"]
    body: dict[str, Any]  # ready to send: BC fields, or Dataverse columns and `x@odata.bind`
    fields: tuple[str, ...]  # field-mapping keys written
    record_id: str | None = None  # update/delete: the record; Dataverse create: the deterministic new id


@dataclass(frozen=True)
class FieldChange:
    key: str
    direction: FlowDirection
    old: Any  # target's value before (canonical)
    new: Any  # value written (canonical)
    reason: str


@dataclass(frozen=True)
class FieldConflict:
    """A field changed on both sides to different values. `winner` is the side whose value was kept
    (None under policy `none`: nothing written) and `why` says how the policy decided."""

    key: str
    bc_value: Any
    dv_value: Any
    policy: str
    winner: Side | None = None
    why: str = ""


@dataclass(frozen=True)
class Candidate:
    """A possible counterpart of an uncoupled record, found with `match_queries`."""

    record: Record
    already_coupled: bool = False


@dataclass(frozen=True)
class Plan:
    outcome: Outcome
    reason: str  # one line for the journal
    bc_write: Write | None = None
    dv_write: Write | None = None
    couple_with: tuple[Side, str] | None = None  # couple the source record with this record
    uncouple: bool = False  # remove the existing coupling (before any couple_with)
    snapshot: Snapshot | None = None  # expected snapshot if the writes land as planned
    changes: tuple[FieldChange, ...] = ()
    conflicts: tuple[FieldConflict, ...] = ()  # unresolved (policy none): nothing written for them
    resolved: tuple[FieldConflict, ...] = ()  # decided by a policy: both values and the winner (journal)
    missing: tuple[MissingLookup, ...] = ()  # couplings to establish first; then retry this record
    error: str | None = None  # operator-facing: what is wrong and what to do

    @property
    def writes(self) -> tuple[Write, ...]:
        return tuple(w for w in (self.bc_write, self.dv_write) if w is not None)

    def write_on(self, side: Side) -> Write | None:
        return self.bc_write if side == "bc" else self.dv_write


def take_snapshot(ms: MappingSet, mapping: EntityMapping, bc: Record | None, dv: Record | None) -> Snapshot:
    """The merge base to store after a sync: each side's mapped values, from the records as read back."""
    snapshot: Snapshot = {"bc": {}, "dv": {}}
    for f in _merged_fields(mapping):
        for side, record in zip(SIDES, (bc, dv), strict=True):
            if record is not None and _has_side(f, side):
                snapshot[side][f.key] = read(ms, f, side, record)
    return snapshot


def presumed_record(
    ms: MappingSet,
    mapping: EntityMapping,
    side: Side,
    snapshot: Snapshot,
    *,
    record_id: str,
    etag: str,
    modified: str | None,
    key: str | None = None,
) -> dict[str, Any] | None:
    """The `side` record as it was at the last sync, rebuilt from the snapshot; None when the
    snapshot cannot stand in for it (a field mapped since, or a scope clause other than `eq`).

    The engine writes it with its stored ETag instead of reading it first: if the record changed
    since, the write is refused (412) and the engine reads it and decides again; if not, the
    snapshot is exactly what a read would have returned for every mapped field.
    """
    values = snapshot.get(side, {})
    record: dict[str, Any] = {}
    for f in _merged_fields(mapping):
        if not _has_side(f, side):
            continue
        if f.key not in values:
            return None
        record[field_name(ms, f, side)] = values[f.key]
    for clause in scope_clauses(mapping, side):
        # In scope at the last sync and unchanged since, so every clause held; only `eq` says how.
        if clause.op != "eq":
            return None
        record.setdefault(clause.field, clause.value)
    record[primary_key(mapping, side)] = record_id
    record[modified_field(mapping, side)] = modified
    record["@odata.etag"] = etag
    if side == "bc" and key is not None:
        record.setdefault(mapping.bc.key, key)
    return record


def _digest(value: Any) -> str:
    """A short fingerprint of a canonical value (the times are kept per value, not the values)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return f"{zlib.crc32(text.encode()):08x}"


def observe(
    ms: MappingSet,
    mapping: EntityMapping,
    seen: FieldTimes | None,
    side: Side,
    record: Record,
    now: dt.datetime,
) -> FieldTimes:
    """`seen` after reading `record` on `side` at `now`: a field whose value is the one seen before keeps
    its time; a new value is dated when it was first seen, or at the record's modified time if that is
    earlier (the record changed last then, so this value is at least that old). The service reads a
    changed record within seconds of its change notification, so a value is dated within seconds of
    its edit even when the record changes again before the pair can be synchronized."""
    result: FieldTimes = {s: dict(v) for s, v in (seen or {}).items()}
    mine = result.setdefault(side, {})
    try:
        modified: dt.datetime | None = parse_iso(str(record[modified_field(mapping, side)]))
    except (KeyError, ValueError):
        modified = None
    first_seen = min(now, modified) if modified is not None else now
    for f in _merged_fields(mapping):
        if not _has_side(f, side) or field_name(ms, f, side) not in record:
            continue
        digest = _digest(read(ms, f, side, record))
        known = mine.get(f.key)
        if not known or known[1] != digest:
            mine[f.key] = [int(first_seen.timestamp() * 1000), digest]
    return result


def unsynced_times(seen: FieldTimes | None, snapshot: Snapshot | None) -> FieldTimes | None:
    """The entries of `seen` still needed with this merge base: values that differ from the snapshot
    (a change not synchronized yet). After a settled sync none is left, so a coupling carries times only
    while a change waits (a conflict, a failure), which keeps its row small."""
    if not seen:
        return None
    base = snapshot or {}
    kept = {
        side: {
            key: entry
            for key, entry in fields.items()
            if key not in base.get(side, {}) or entry[1] != _digest(base[side][key])
        }
        for side, fields in seen.items()
    }
    kept = {side: fields for side, fields in kept.items() if fields}
    return kept or None


def change_times(seen: FieldTimes | None) -> dict[str, dict[str, dt.datetime]]:
    """`seen` as `reconcile`'s `changed_at`."""
    return {
        side: {key: dt.datetime.fromtimestamp(entry[0] / 1000, dt.UTC) for key, entry in fields.items()}
        for side, fields in (seen or {}).items()
    }


def reconcile(
    ms: MappingSet,
    mapping: EntityMapping,
    *,
    snapshot: Snapshot | None,
    bc: Record | None,
    dv: Record | None,
    lookups: Lookups,
    candidates: Sequence[Candidate] = (),
    changed_at: ChangeTimes | None = None,
    id_scope: str = "",
) -> Plan:
    """Decide what to do with one record pair.

    snapshot None: not coupled; then exactly one of bc/dv is the source and `candidates` are possible
    counterparts. snapshot given: coupled; a None record means that side was deleted.
    `changed_at` (from `change_times`): when each side's current value of a field first appeared;
    `newest_wins` compares these per field, and falls back to the records' modified times for a field
    it has no time for.
    """
    ctx = _Ctx(ms, mapping, lookups, changed_at or {}, id_scope)
    if snapshot is None:
        return ctx.uncoupled(bc, dv, candidates)
    if bc is None or dv is None:
        return ctx.deleted(snapshot, bc, dv)
    for side, record in zip(SIDES, (bc, dv), strict=True):
        if not in_scope(mapping, side, record):
            return Plan(
                Outcome.SKIPPED,
                f"{SIDE_NAME[side]} record is out of scope ({scope_filter(mapping, side)})",
                snapshot=snapshot,
            )
    return ctx.merge(bc, dv, snapshot=snapshot).plan(ctx, bc, dv, snapshot, Outcome.MODIFIED)


# -- internals ---------------------------------------------------------------------------------------------


def _merged_fields(mapping: EntityMapping) -> list[FieldMapping]:
    return [f for f in mapping.fields if not f.create_only]


def _has_side(f: FieldMapping, side: Side) -> bool:
    return (f.bc if side == "bc" else f.dv) is not None


def _flow(side: Side) -> FlowDirection:
    return "to_dataverse" if side == "dv" else "to_bc"


@dataclass
class _Merge:
    """Per-field decisions for one record pair, turned into a Plan by `plan`."""

    new: dict[Side, dict[str, Any]]
    values: dict[Side, list[tuple[FieldMapping, Any]]] = field(default_factory=lambda: {"bc": [], "dv": []})
    changes: list[FieldChange] = field(default_factory=list)
    conflicts: list[FieldConflict] = field(default_factory=list)
    resolved: list[FieldConflict] = field(default_factory=list)
    conflict_messages: list[str] = field(default_factory=list)
    missing: list[MissingLookup] = field(default_factory=list)
    waits: list[str] = field(
        default_factory=list
    )  # the missing lookups' own messages (failed_lookup_message)
    errors: list[str] = field(default_factory=list)

    def set(self, f: FieldMapping, target: Side, old: Any, value: Any, reason: str, ms: MappingSet) -> None:
        self.values[target].append((f, value))
        self.new[target][f.key] = expected_after_write(ms, f, target, value)
        self.changes.append(FieldChange(f.key, _flow(target), old, value, reason))

    def write(
        self, ctx: _Ctx, target: Side, kind: Literal["create", "update"], record_id: str | None
    ) -> Write | None:
        values = self.values[target]
        if not values:
            return None
        body = bc_body(ctx.ms, values) if target == "bc" else dv_body(ctx.ms, values)
        return Write(kind, body, tuple(f.key for f, _ in values), record_id)

    def blocked(self, previous: Snapshot | None) -> Plan | None:
        """A plan that writes nothing because a field cannot be carried across (yet)."""
        if self.errors:
            return Plan(Outcome.FAILED, self.errors[0], snapshot=previous, error="; ".join(self.errors))
        if self.missing:
            names = ", ".join(f"{m.mapping} {m.value}" for m in self.missing)
            # The lookups' own messages say what the record waits for and what to do: the failure
            # when the waits are used up (Engine._defer), the reason shown in a dry run.
            return Plan(
                Outcome.DEFERRED,
                f"waiting for {names} to be coupled",
                snapshot=previous,
                missing=tuple(self.missing),
                error="; ".join(self.waits) or None,
            )
        return None

    def plan(self, ctx: _Ctx, bc: Record, dv: Record, previous: Snapshot | None, written: Outcome) -> Plan:
        blocked = self.blocked(previous)
        if blocked is not None:
            return blocked
        bc_write = self.write(ctx, "bc", "update", str(bc["id"]))
        dv_write = self.write(ctx, "dv", "update", str(dv[ctx.mapping.dataverse.primary_key]))
        if self.conflicts:
            outcome, reason = Outcome.CONFLICT, f"{len(self.conflicts)} field conflict(s)"
        elif written is Outcome.COUPLED:
            outcome, reason = Outcome.COUPLED, "matched an uncoupled record"
        elif bc_write or dv_write:
            outcome, reason = written, ", ".join(f"{c.key} {c.direction}" for c in self.changes)
        else:
            outcome, reason = Outcome.UNCHANGED, "no mapped value changed"
        return Plan(
            outcome,
            reason,
            bc_write=bc_write,
            dv_write=dv_write,
            snapshot={"bc": self.new["bc"], "dv": self.new["dv"]},
            changes=tuple(self.changes),
            conflicts=tuple(self.conflicts),
            resolved=tuple(self.resolved),
            error="; ".join(self.conflict_messages) or None,
        )


@dataclass(frozen=True)
class _Ctx:
    ms: MappingSet
    mapping: EntityMapping
    lookups: Lookups
    changed_at: ChangeTimes = field(default_factory=dict)
    id_scope: str = ""  # the company's key prefix, for the deterministic ids of created records

    # -- coupled pair: three-way merge ------------------------------------------------------------

    def merge(
        self, bc: Record, dv: Record, *, snapshot: Snapshot | None, source: Side | None = None
    ) -> _Merge:
        """Merge field by field. Without a snapshot (just matched), `source` is the side that changed."""
        records: dict[Side, Record] = {"bc": bc, "dv": dv}
        m = _Merge(new={"bc": {}, "dv": {}})
        for f in _merged_fields(self.mapping):
            current = {s: read(self.ms, f, s, records[s]) if _has_side(f, s) else None for s in SIDES}
            for s in SIDES:
                if _has_side(f, s):
                    m.new[s][f.key] = current[s]
            if f.has_constant:
                target = f.target_of_constant
                self._carry(m, f, target, current[target], constant_value(self.ms, f), "constant")
                continue
            changed = {s: self._changed(f, s, current[s], snapshot, source) for s in SIDES}
            if not (changed["bc"] or changed["dv"]):
                continue
            decision = self._decide(m, f, changed, current, records, snapshot)
            if decision is None:
                continue
            target, reason = decision
            src = other(target)
            self._translate_and_carry(m, f, target, current, current[src], reason)
        return m

    def _changed(
        self, f: FieldMapping, side: Side, value: Any, snapshot: Snapshot | None, source: Side | None
    ) -> bool:
        if snapshot is None:
            return side == source
        base = snapshot.get(side, {})
        if f.key not in base:
            # A field added to the mapping since the last sync: a value on this side is news; an empty one is
            # not, so a new field fills the empty side instead of conflicting with it.
            return value is not None
        return not same(self.ms, f, side, base[f.key], value)

    def _decide(
        self,
        m: _Merge,
        f: FieldMapping,
        changed: dict[Side, bool],
        current: dict[Side, Any],
        records: dict[Side, Record],
        snapshot: Snapshot | None,
    ) -> tuple[Side, str] | None:
        """Which side to write (the target) and why; None when nothing is to be written."""
        if f.direction != "bidirectional":
            target: Side = "dv" if f.direction == "to_dataverse" else "bc"
            src = other(target)
            if changed[src]:
                return target, f"changed in {SIDE_NAME[src]}"
            return target, f"one-way field edited in {SIDE_NAME[target]}: restored from {SIDE_NAME[src]}"
        if changed["bc"] != changed["dv"]:
            src = "bc" if changed["bc"] else "dv"
            return other(src), f"changed in {SIDE_NAME[src]}"
        if self._agree(f, current):
            return None
        policy = f.conflict or self.mapping.conflict
        decided: tuple[Side, str] | None = None
        if policy == "bc_wins":
            decided = "bc", "bc_wins"
        elif policy == "dataverse_wins":
            decided = "dv", "dataverse_wins"
        elif policy == "newest_wins":
            newer = self._newer(m, f, records)
            if newer is None:
                return None
            decided = newer
        if decided is not None:
            winner, why = decided
            m.resolved.append(FieldConflict(f.key, current["bc"], current["dv"], policy, winner, why))
            return other(winner), f"changed on both sides; {why}"
        m.conflicts.append(FieldConflict(f.key, current["bc"], current["dv"], policy))
        m.conflict_messages.append(
            f"field {f.key!r} changed on both sides since the last sync: BC {f.bc} = {current['bc']!r}, "
            f"Dataverse {f.dv} = {current['dv']!r}; the conflict policy is none: make the values equal on "
            f"one side, or set `conflict` (bc_wins, dataverse_wins, newest_wins) on the field or mapping"
        )
        # Keep the old base for this field so it stays in conflict until someone resolves it.
        for s in SIDES:
            if snapshot is not None and f.key in snapshot.get(s, {}):
                m.new[s][f.key] = snapshot[s][f.key]
            else:
                m.new[s].pop(f.key, None)
        return None

    def _agree(self, f: FieldMapping, current: dict[Side, Any]) -> bool:
        """Both sides changed: do they hold the same value? (An untranslatable value counts as different.)"""
        try:
            as_dv = translate(self.ms, self.mapping, f, "dv", current["bc"], self.lookups)
        except (LookupMissing, TranslationError):
            return False
        return same(self.ms, f, "dv", as_dv, current["dv"])

    def _newer(self, m: _Merge, f: FieldMapping, records: dict[Side, Record]) -> tuple[Side, str] | None:
        """The side whose value of `f` appeared last, and why. Per field: when the service first saw each
        side's value (`changed_at`); a side without that time counts from its record's modified time."""
        stamps: dict[Side, dt.datetime] = {}
        sources: dict[Side, str] = {}
        for s in SIDES:
            seen = self.changed_at.get(s, {}).get(f.key)
            if seen is not None:
                stamps[s], sources[s] = seen, "first seen"
                continue
            name = modified_field(self.mapping, s)
            try:
                stamps[s], sources[s] = parse_iso(str(records[s][name])), name
            except (KeyError, ValueError):
                m.errors.append(
                    f"newest_wins needs {SIDE_NAME[s]} {name} as an ISO timestamp; include it in $select"
                )
                return None
        # A tie goes to BC, the system of record, so the result never depends on argument order.
        newer: Side = "dv" if stamps["dv"] > stamps["bc"] else "bc"
        detail = ", ".join(f"{SIDE_NAME[s]} {sources[s]} {iso_ms(stamps[s])}" for s in SIDES)
        tie = " (a tie goes to BC)" if stamps["dv"] == stamps["bc"] else ""
        return newer, f"newest_wins: {SIDE_NAME[newer]} is newer{tie}; {detail}"

    def _translate_and_carry(
        self, m: _Merge, f: FieldMapping, target: Side, current: dict[Side, Any], value: Any, reason: str
    ) -> None:
        try:
            desired = translate(self.ms, self.mapping, f, target, value, self.lookups)
        except TranslationError as exc:
            m.errors.append(str(exc))
            return
        except LookupMissing as exc:
            if f.clear_on_failed_lookup:
                desired, reason = (
                    None,
                    f"{reason}; {exc.missing.mapping} {exc.missing.value} not coupled: cleared",
                )
            elif exc.missing.resolvable:
                m.missing.append(exc.missing)
                m.waits.append(str(exc))
                return
            else:
                m.errors.append(str(exc))
                return
        self._carry(m, f, target, current[target], desired, reason)

    def _carry(self, m: _Merge, f: FieldMapping, target: Side, old: Any, desired: Any, reason: str) -> None:
        if desired is None and f.not_null:
            return  # e.g. a customer without salesperson keeps its owner
        if same(self.ms, f, target, desired, old):
            return
        m.set(f, target, old, desired, reason, self.ms)

    # -- uncoupled record: match, create or skip ----------------------------------------------------

    def uncoupled(self, bc: Record | None, dv: Record | None, candidates: Sequence[Candidate]) -> Plan:
        if bc is not None and dv is not None:
            raise ValueError("an uncoupled pair has one source record; pass the other one as a Candidate")
        if bc is None and dv is None:
            return Plan(Outcome.SKIPPED, "no record on either side")
        source: Side = "bc" if bc is not None else "dv"
        record = bc if bc is not None else dv
        assert record is not None
        if not in_scope(self.mapping, source, record):
            return Plan(Outcome.SKIPPED, f"out of scope ({scope_filter(self.mapping, source)})")
        match, error = self._match(source, record, candidates)
        if error is not None:
            return Plan(Outcome.FAILED, error, error=error)
        target = other(source)
        if match is not None:
            pair = {source: record, target: match.record}
            merged = self.merge(pair["bc"], pair["dv"], snapshot=None, source=source)
            plan = merged.plan(self, pair["bc"], pair["dv"], None, Outcome.COUPLED)
            if plan.outcome in (Outcome.FAILED, Outcome.DEFERRED):
                return plan
            counterpart_id = str(match.record[primary_key(self.mapping, target)])
            return replace(plan, couple_with=(target, counterpart_id))
        if self.mapping.only_coupled:
            return Plan(
                Outcome.SKIPPED,
                f"no uncoupled {SIDE_NAME[target]} match and {self.mapping.name} only syncs coupled records "
                "(only_coupled: true); couple it manually or set only_coupled: false",
            )
        if not self.mapping.writes_to(target):
            return Plan(
                Outcome.SKIPPED,
                f"no uncoupled {SIDE_NAME[target]} match, and {self.mapping.name} is "
                f"{self.mapping.direction}: "
                f"it never creates {SIDE_NAME[target]} records",
            )
        if not self.mapping.creates_on(target):
            return Plan(
                Outcome.SKIPPED,
                f"{self.mapping.name} creates records {self.mapping.creates} only: "
                f"a {SIDE_NAME[source]} record is not created in {SIDE_NAME[target]}",
            )
        return self.create(source, record, Outcome.INSERTED, previous=None)

    def _match(
        self, source: Side, record: Record, candidates: Sequence[Candidate]
    ) -> tuple[Candidate | None, str | None]:
        """Try match priorities in ascending order; exactly one uncoupled match couples."""
        target = other(source)
        groups: dict[int, list[FieldMapping]] = {}
        for f in self.mapping.fields:
            if f.match_priority is not None and not f.has_constant:
                groups.setdefault(f.match_priority, []).append(f)
        in_target_scope = [c for c in candidates if in_scope(self.mapping, target, c.record)]
        for priority in sorted(groups):
            wanted: list[tuple[FieldMapping, Any]] = []
            try:
                for f in groups[priority]:
                    value = translate(
                        self.ms, self.mapping, f, target, read(self.ms, f, source, record), self.lookups
                    )
                    if value is not None:
                        wanted.append((f, value))
            except (LookupMissing, TranslationError):
                continue  # this priority cannot be evaluated yet; a later one may still match
            if not wanted:
                continue  # empty values are ignored, as in the built-in connector
            matches = [
                c
                for c in in_target_scope
                if not c.already_coupled and all(self._equal(f, target, v, c.record) for f, v in wanted)
            ]
            if len(matches) == 1:
                return matches[0], None
            if len(matches) > 1:
                pk = primary_key(self.mapping, target)
                ids = ", ".join(str(c.record[pk]) for c in matches)
                on = ", ".join(f"{f.key}={v!r}" for f, v in wanted)
                return None, (
                    f"{len(matches)} uncoupled {SIDE_NAME[target]} records match on {on}: {ids}; "
                    "couple one manually or make the match fields unique"
                )
        return None, None

    def _equal(self, f: FieldMapping, side: Side, wanted: Any, record: Record) -> bool:
        actual = read(self.ms, f, side, record)
        if side_type(self.ms, f, side) == "text" and not f.case_sensitive_match:
            wanted = wanted.casefold() if isinstance(wanted, str) else wanted
            actual = actual.casefold() if isinstance(actual, str) else actual
        return same(self.ms, f, side, wanted, actual)

    def create(self, source: Side, record: Record, outcome: Outcome, previous: Snapshot | None) -> Plan:
        """Create the counterpart of `record` on the other side from every field that flows there."""
        target = other(source)
        source_id = record[primary_key(self.mapping, source)]
        m = _Merge(new={"bc": {}, "dv": {}})
        for f in self.mapping.fields:
            if _has_side(f, source) and not f.create_only:
                m.new[source][f.key] = read(self.ms, f, source, record)
            if not _has_side(f, target):
                continue
            if not f.create_only:
                m.new[target][f.key] = None
            if not f.writes_to(target):
                continue
            if f.has_constant:
                self._carry(m, f, target, None, constant_value(self.ms, f), "constant")
            else:
                current = {source: read(self.ms, f, source, record), target: None}
                self._translate_and_carry(m, f, target, current, current[source], "create")
        for f in self.mapping.fields:
            if f.create_only:
                m.new[target].pop(f.key, None)
        blocked = m.blocked(previous)
        if blocked is not None:
            return blocked
        if target == "dv":
            new_id = dataverse_id_for(self.mapping, str(record["id"]), self.id_scope)
            write = m.write(self, "dv", "create", new_id) or Write("create", {}, (), new_id)
            body = {self.mapping.dataverse.primary_key: new_id, **write.body}
            if self.ms.settings.ownership.model == "team" and self.mapping.owner is not None:
                body.update(owner_team_bind(self.ms))
            write = Write("create", body, write.fields, new_id)
            couple: tuple[Side, str] | None = ("dv", new_id)
        else:
            write = m.write(self, "bc", "create", None) or Write("create", {}, ())
            couple = None  # BC assigns the id; the engine couples with the created record
        return Plan(
            outcome,
            f"create in {SIDE_NAME[target]} from {SIDE_NAME[source]} {source_id}",
            bc_write=write if target == "bc" else None,
            dv_write=write if target == "dv" else None,
            couple_with=couple,
            uncouple=outcome is Outcome.RESTORED,
            snapshot={"bc": m.new["bc"], "dv": m.new["dv"]},
            changes=tuple(m.changes),
        )

    # -- coupled record deleted on one or both sides ------------------------------------------------

    def deleted(self, snapshot: Snapshot, bc: Record | None, dv: Record | None) -> Plan:
        if bc is None and dv is None:
            return Plan(Outcome.UNCOUPLED, "deleted on both sides; coupling removed", uncouple=True)
        gone: Side = "bc" if bc is None else "dv"
        kept: Side = other(gone)
        record = dv if bc is None else bc
        assert record is not None
        kept_id = str(record[primary_key(self.mapping, kept)])
        what = f"the coupled {SIDE_NAME[gone]} record was deleted"
        policy = self.mapping.deletion
        if policy == "remove_coupling":
            return Plan(
                Outcome.UNCOUPLED, f"{what}; coupling removed (deletion: remove_coupling)", uncouple=True
            )
        if policy == "propagate":
            if not self.mapping.writes_to(kept):
                return Plan(
                    Outcome.UNCOUPLED,
                    f"{what}; {self.mapping.name} is {self.mapping.direction}, "
                    f"so {SIDE_NAME[kept]} {kept_id} is kept and the coupling removed",
                    uncouple=True,
                )
            write = Write("delete", {}, (), kept_id)
            return Plan(
                Outcome.DELETED,
                f"{what}; deleting {SIDE_NAME[kept]} {kept_id} (deletion: propagate)",
                bc_write=write if kept == "bc" else None,
                dv_write=write if kept == "dv" else None,
                uncouple=True,
            )
        if policy == "restore":
            if not self.mapping.writes_to(gone):
                error = (
                    f"{what}; deletion policy is restore but {self.mapping.name} is "
                    f"{self.mapping.direction} and cannot write to {SIDE_NAME[gone]}: "
                    "set deletion to remove_coupling or propagate"
                )
                return Plan(Outcome.FAILED, error, snapshot=snapshot, error=error)
            return self.create(kept, record, Outcome.RESTORED, previous=snapshot)
        error = (
            f"{what} but {SIDE_NAME[kept]} {kept_id} still exists; the deletion policy of "
            f"{self.mapping.name} is none: delete it too, remove the coupling, or set `deletion` "
            "(remove_coupling, restore, propagate)"
        )
        return Plan(Outcome.FAILED, error, snapshot=snapshot, error=error)
