"""`python -m devstack traces [FILE]`: the traces of the last changes in a `TELEMETRY_FILE`, as trees.

The local stack (`make run`) exports OpenTelemetry to that file (shared/telemetry.py); this prints
each trace from its root (the webhook or poll that saw the change) through the queue message down to the
API requests and the coupling write, with durations and the attributes an operator reads first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

# Attributes shown after a span's name, in this order (the rest are in the file).
SHOWN = (
    "bcsync.mapping", "bcsync.side", "bcsync.record_id", "bcsync.outcome", "bcsync.messages",
    "messaging.batch.message_count", "bcsync.delay_seconds",
    "http.response.status_code", "bcsync.retry_count", "bcsync.operation", "error.type",
)  # fmt: skip


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _millis(span: dict[str, Any]) -> float:
    return (_time(span["end_time"]) - _time(span["start_time"])).total_seconds() * 1000


def render(lines: Iterable[dict[str, Any]], last: int = 5, *, skip_empty: bool = True) -> list[str]:
    """The `last` traces (by their root's start) as indented text. `skip_empty` leaves out traces of a
    single span (a handshake, a webhook that queued nothing)."""
    spans = [line for line in lines if line.get("signal") == "span"]
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        traces.setdefault(span["context"]["trace_id"], []).append(span)
    if skip_empty:
        traces = {k: v for k, v in traces.items() if len(v) > 1}
    ordered = sorted(traces.values(), key=lambda t: min(s["start_time"] for s in t))[-last:]
    out: list[str] = []
    for trace in ordered:
        children: dict[str | None, list[dict[str, Any]]] = {}
        ids = {s["context"]["span_id"] for s in trace}
        for span in sorted(trace, key=lambda s: s["start_time"]):
            parent = span["parent_id"] if span["parent_id"] in ids else None
            children.setdefault(parent, []).append(span)
        first = min(s["start_time"] for s in trace)
        out.append(f"trace {trace[0]['context']['trace_id'][2:]}  {first}")
        stack = [(span, 1) for span in reversed(children.get(None, []))]
        while stack:
            span, depth = stack.pop()
            attributes = span.get("attributes", {})
            shown = "  ".join(f"{k.split('.')[-1]}={attributes[k]}" for k in SHOWN if k in attributes)
            out.append(f"{'  ' * depth}{span['name']}  {_millis(span):.0f} ms  {shown}".rstrip())
            stack.extend(
                (child, depth + 1) for child in reversed(children.get(span["context"]["span_id"], []))
            )
    return out


def main(path: str, last: int) -> int:
    from shared.telemetry import load_lines

    try:
        lines = load_lines(path)
    except FileNotFoundError:
        print(f"no telemetry file {path}: start the stack with `make run` (it sets TELEMETRY_FILE)")
        return 1
    rendered = render(lines, last)
    print("\n".join(rendered) if rendered else f"no traces of changes in {path} yet")
    return 0
