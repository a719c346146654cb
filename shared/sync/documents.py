"""Documents with lines, decided as one unit: the pure part (no I/O, no clock).

A document mapping (an entity mapping with `lines`) merges its header with `reconcile` like any record,
and each line pair with `reconcile` and the lines' own mapping (`EntityMapping.line_mapping()`). Line
identity is a coupling of its own, kept on the document's coupling next to the header snapshot:

    snapshot = {"bc": {header values}, "dv": {header values},
                "lines": {"<dv line id>": {"bc_id": "<bc line id>", "bc": {...}, "dv": {...}}}}

A line that exists on one side only is created on the other; a coupled line missing on one side is
removed on the other (the lines' mapping has `deletion: propagate`); a line changed on one side is
written to the other, field by field, under the header's conflict policy. Header totals are never
mapped (the schema refuses them): each system computes its own from its lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shared.mapping.lookups import Lookups
from shared.mapping.queries import primary_key
from shared.mapping.schema import EntityMapping, MappingSet, Side
from shared.mapping.values import SIDE_NAME, MissingLookup, Record
from shared.sync.reconcile import Outcome, Plan, Snapshot, reconcile, take_snapshot

LINES_KEY = "lines"  # the snapshot's key for the line couplings


@dataclass(frozen=True)
class LinePlan:
    """One line pair: `bc_id` / `dv_id` as known before the writes (None: to be created there)."""

    position: int  # 1-based, in the order of the source document (for messages)
    bc_id: str | None
    dv_id: str | None
    plan: Plan


@dataclass(frozen=True)
class DocumentPlan:
    header: Plan
    lines: tuple[LinePlan, ...] = ()
    outcome: Outcome = Outcome.UNCHANGED
    reason: str = ""
    error: str | None = None
    missing: tuple[MissingLookup, ...] = ()

    def as_plan(self) -> Plan:
        """The header plan carrying the document's outcome, reason, error and missing couplings."""
        return replace(
            self.header, outcome=self.outcome, reason=self.reason, error=self.error, missing=self.missing
        )

    @property
    def line_writes(self) -> bool:
        return any(lp.plan.writes for lp in self.lines)

    def changes(self) -> list[Any]:
        found = list(self.header.changes)
        for lp in self.lines:
            found += [replace(c, key=f"line {lp.position}.{c.key}") for c in lp.plan.changes]
        return found


def lines_of(mapping: EntityMapping, side: Side, record: Record | None) -> list[dict[str, Any]]:
    """The lines a document was read with (the header's navigation property)."""
    if record is None or mapping.lines is None:
        return []
    name = mapping.lines.bc.entity_set if side == "bc" else mapping.lines.dataverse.navigation
    value = record.get(name)
    lines = [dict(line) for line in value] if isinstance(value, list) else []
    # In the order each system lists them (BC's line numbers, Dataverse's sequence numbers): a new
    # document's lines are created in that order on the other side, which keeps it.
    order = mapping.lines.bc.order_field if side == "bc" else mapping.lines.dataverse.order_column
    if order and all(isinstance(line.get(order), int | float) for line in lines):
        lines.sort(key=lambda line: line[order])
    return lines


def line_couplings(snapshot: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """dv line id -> {"bc_id", "bc", "dv"} from a document snapshot."""
    if not snapshot:
        return {}
    return {k: dict(v) for k, v in (snapshot.get(LINES_KEY) or {}).items()}


def header_snapshot(snapshot: Mapping[str, Any] | None) -> Snapshot | None:
    if snapshot is None:
        return None
    return {"bc": dict(snapshot.get("bc") or {}), "dv": dict(snapshot.get("dv") or {})}


def side_state(ms: MappingSet, mapping: EntityMapping, side: Side, record: Record) -> dict[str, Any]:
    """What a document's echo check compares: its header values and each line's, by line id."""
    lm = mapping.line_mapping()
    by_side = (record, None) if side == "bc" else (None, record)
    lines: dict[str, Any] = {}
    for line in lines_of(mapping, side, record):
        pair = (line, None) if side == "bc" else (None, line)
        lines[str(line[primary_key(lm, side)])] = take_snapshot(ms, lm, *pair)[side]
    return {"header": take_snapshot(ms, mapping, *by_side)[side], "lines": lines}


def stored_state(snapshot: Mapping[str, Any] | None, side: Side) -> dict[str, Any] | None:
    """`side_state` as the coupling's snapshot remembers it."""
    if snapshot is None:
        return None
    lines: dict[str, Any] = {}
    for dv_id, pair in line_couplings(snapshot).items():
        line_id = dv_id if side == "dv" else pair.get("bc_id")
        if line_id:
            lines[str(line_id)] = pair.get(side) or {}
    return {"header": dict(snapshot.get(side) or {}), "lines": lines}


def reconcile_document(
    ms: MappingSet,
    mapping: EntityMapping,
    *,
    snapshot: Mapping[str, Any] | None,
    bc: Record | None,
    dv: Record | None,
    lookups: Lookups,
) -> DocumentPlan:
    """Decide a document: its header with `reconcile`, then every line pair with the lines' mapping.

    `snapshot` None: the document is not coupled (one of `bc`/`dv` is the source). A failed or waiting
    line fails or defers the whole document, so a document is never half written."""
    header = reconcile(ms, mapping, snapshot=header_snapshot(snapshot), bc=bc, dv=dv, lookups=lookups)
    if header.outcome in (Outcome.SKIPPED, Outcome.FAILED, Outcome.DEFERRED) or (bc is None and dv is None):
        return _summarise(mapping, header, ())
    if snapshot is not None and (bc is None or dv is None):
        return _summarise(mapping, header, ())  # the document itself was deleted on one side
    lm = mapping.line_mapping()
    bc_lines = {str(line["id"]): line for line in lines_of(mapping, "bc", bc)}
    dv_pk = primary_key(lm, "dv")
    dv_lines = {str(line[dv_pk]): line for line in lines_of(mapping, "dv", dv)}
    plans: list[LinePlan] = []
    seen_bc: set[str] = set()
    seen_dv: set[str] = set()
    for dv_id, pair in line_couplings(snapshot).items():
        bc_id = str(pair.get("bc_id") or "")
        bc_line, dv_line = bc_lines.get(bc_id), dv_lines.get(dv_id)
        seen_bc.add(bc_id)
        seen_dv.add(dv_id)
        if bc_line is None and dv_line is None:
            continue  # gone on both sides: the coupling is dropped
        base: Snapshot = {"bc": dict(pair.get("bc") or {}), "dv": dict(pair.get("dv") or {})}
        plan = reconcile(ms, lm, snapshot=base, bc=bc_line, dv=dv_line, lookups=lookups)
        plans.append(LinePlan(0, bc_id, dv_id, plan))
    for bc_id, line in bc_lines.items():
        if bc_id not in seen_bc:
            plan = reconcile(ms, lm, snapshot=None, bc=line, dv=None, lookups=lookups)
            plans.append(LinePlan(0, bc_id, None, plan))
    for dv_id, line in dv_lines.items():
        if dv_id not in seen_dv:
            plan = reconcile(ms, lm, snapshot=None, bc=None, dv=line, lookups=lookups)
            plans.append(LinePlan(0, None, dv_id, plan))
    numbered = tuple(replace(lp, position=i) for i, lp in enumerate(plans, start=1))
    return _summarise(mapping, header, numbered)


def _summarise(mapping: EntityMapping, header: Plan, lines: Sequence[LinePlan]) -> DocumentPlan:
    failed = [lp for lp in lines if lp.plan.outcome == Outcome.FAILED]
    if header.outcome == Outcome.FAILED or failed:
        errors = ([header.error or header.reason] if header.outcome == Outcome.FAILED else []) + [
            f"line {lp.position}: {lp.plan.error or lp.plan.reason}" for lp in failed
        ]
        failure = f"{mapping.name}: " + "; ".join(errors)
        return DocumentPlan(header, tuple(lines), Outcome.FAILED, failure, failure)
    missing = tuple(header.missing) + tuple(m for lp in lines for m in lp.plan.missing)
    waiting = [lp for lp in lines if lp.plan.outcome == Outcome.DEFERRED]
    if header.outcome == Outcome.DEFERRED or waiting:
        reasons = ([header.reason] if header.outcome == Outcome.DEFERRED else []) + [
            f"line {lp.position}: {lp.plan.reason}" for lp in waiting
        ]
        reason = "the document waits: " + "; ".join(reasons)
        waits = [header.error] if header.outcome == Outcome.DEFERRED and header.error else []
        waits += [f"line {lp.position}: {lp.plan.error}" for lp in waiting if lp.plan.error]
        return DocumentPlan(header, tuple(lines), Outcome.DEFERRED, reason, "; ".join(waits) or None, missing)
    if header.outcome == Outcome.SKIPPED:
        return DocumentPlan(header, tuple(lines), Outcome.SKIPPED, header.reason)
    created = sum(1 for lp in lines if any(w.kind == "create" for w in lp.plan.writes))
    changed = sum(1 for lp in lines if any(w.kind == "update" for w in lp.plan.writes))
    removed = sum(1 for lp in lines if any(w.kind == "delete" for w in lp.plan.writes))
    summary = ", ".join(
        f"{n} line{'s' if n != 1 else ''} {what}"
        for n, what in ((created, "created"), (changed, "changed"), (removed, "removed"))
        if n
    )
    outcome = header.outcome
    if outcome == Outcome.UNCHANGED and (created or changed or removed):
        outcome = Outcome.MODIFIED
    reason = header.reason + (f"; {summary}" if summary else "")
    conflicts = [lp for lp in lines if lp.plan.outcome == Outcome.CONFLICT]
    error: str | None = None
    if conflicts and outcome != Outcome.CONFLICT:
        outcome = Outcome.CONFLICT
    if outcome == Outcome.CONFLICT:
        parts = [header.error] if header.error else []
        parts += [f"line {lp.position}: {lp.plan.error or lp.plan.reason}" for lp in conflicts]
        error = "; ".join(parts)
    return DocumentPlan(header, tuple(lines), outcome, reason, error)


def describe_writes(mapping: EntityMapping, plan: DocumentPlan) -> dict[str, list[str]]:
    """The document's plan in words, per side (for a dry run and the journal): what each write does."""
    out: dict[str, list[str]] = {"bc": [], "dv": []}
    for side in ("bc", "dv"):
        w = plan.header.write_on(side)  # type: ignore[arg-type]
        if w is not None:
            out[side].append(f"{w.kind} {SIDE_NAME[side]} {mapping.name} header ({', '.join(w.fields)})")
        for lp in plan.lines:
            lw = lp.plan.write_on(side)  # type: ignore[arg-type]
            if lw is not None:
                out[side].append(f"{lw.kind} line {lp.position} ({', '.join(lw.fields)})")
    return out


@dataclass
class LineState:
    """A line coupling being rebuilt after the writes."""

    bc_id: str | None
    dv_id: str | None
    snapshot: Snapshot = field(default_factory=lambda: {"bc": {}, "dv": {}})


def document_snapshot(header: Snapshot, lines: Sequence[LineState]) -> dict[str, Any]:
    """The snapshot stored on the document's coupling (see the module docstring)."""
    return {
        "bc": header["bc"],
        "dv": header["dv"],
        LINES_KEY: {
            ls.dv_id: {"bc_id": ls.bc_id, "bc": ls.snapshot["bc"], "dv": ls.snapshot["dv"]}
            for ls in lines
            if ls.dv_id and ls.bc_id
        },
    }
