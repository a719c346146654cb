"""The `BulkDelete` action: an asynchronous job, visible as an `asyncoperations` row, that deletes rows.

As Dataverse (https://learn.microsoft.com/power-apps/developer/data-platform/delete-data-bulk and the
BulkDelete action reference): `POST BulkDelete` with `QuerySet` (QueryExpression objects: `EntityName`,
`Criteria` with `FilterOperator` and `Conditions`), `JobName`, `SendEmailNotification`, `ToRecipients`,
`CCRecipients`, `RecurrencePattern`, `StartDateTime` answers `BulkDeleteResponse` `{"JobId"}`; the job
(asyncoperation, operationtype 13) waits, then runs, and ends Succeeded (statecode 3, statuscode 30) or
Failed (31). The job runs at its `StartDateTime` or `delay` after submission on the sandbox clock, on
the first Web API request after that moment (so `advance_clock` fast-forwards it).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devstack.dataverse import errors
from devstack.dataverse.errors import DataverseError
from devstack.dataverse.schema import Table
from devstack.dataverse.store import Caller, Store, utc_iso
from devstack.sandbox_common.odata_query import Predicate, compare_values, parse_instant

BULK_DELETE_OPERATION = 13  # asyncoperation.operationtype "Bulk Delete"
_OPERATORS = {
    "Equal": "eq",
    "NotEqual": "ne",
    "GreaterThan": "gt",
    "GreaterEqual": "ge",
    "LessThan": "lt",
    "LessEqual": "le",
}
_SUPPORTED = (*_OPERATORS, "Null", "NotNull", "In", "NotIn", "Like", "BeginsWith", "EndsWith")


@dataclass
class _Job:
    job_id: str
    due: dt.datetime
    queries: list[tuple[Table, Predicate]]
    caller: Caller


class BulkDeleteJobs:
    def __init__(self, store: Store, delay: Callable[[], float]) -> None:
        self.store = store
        self._delay = delay
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()

    def submit(self, body: Mapping[str, Any], caller: Caller) -> str:
        """Validate the request, record the waiting job; returns its id (`JobId`)."""
        query_set = body.get("QuerySet")
        if not isinstance(query_set, list) or not query_set:
            raise errors.bad_request(
                "BulkDelete needs a non-empty 'QuerySet' array of QueryExpression objects."
            )
        queries = [_compile(self.store, query, index) for index, query in enumerate(query_set)]
        name = body.get("JobName")
        if not isinstance(name, str) or not name:
            raise errors.bad_request("BulkDelete needs 'JobName' (the name of the asynchronous job).")
        if body.get("RecurrencePattern"):
            raise errors.bad_request(
                "The sandbox does not implement recurring bulk delete jobs: send an empty RecurrencePattern."
            )
        now = self.store.clock()
        due = now + dt.timedelta(seconds=self._delay())
        if body.get("StartDateTime"):
            try:
                due = max(due, parse_instant(str(body["StartDateTime"])))
            except ValueError:
                text = body["StartDateTime"]
                raise errors.bad_request(f"StartDateTime '{text}' is not a datetime.") from None
        row = self.store.create(
            "asyncoperations",
            {
                "name": name,
                "operationtype": BULK_DELETE_OPERATION,
                "statecode": 0,
                "statuscode": 0,
                "primaryentitytype": queries[0][0].logical_name,
                "correlationid": caller.correlation_id or None,
            },
            caller,
        )
        job_id = str(row["asyncoperationid"])
        with self._lock:
            self._jobs.append(_Job(job_id, due, queries, caller))
        return job_id

    def run_due(self) -> None:
        now = self.store.clock()
        with self._lock:
            due = [job for job in self._jobs if job.due <= now]
            self._jobs = [job for job in self._jobs if job.due > now]
        for job in due:
            self._run(job)

    def _run(self, job: _Job) -> None:
        deleted = 0
        try:
            for table, predicate in job.queries:
                with self.store.lock:
                    rows = list(self.store.table(table.entity_set).rows.values())
                ids = [r[table.primary_key] for r in rows if predicate(r)]
                for record_id in ids:
                    if self.store.get(table.entity_set, record_id) is not None:
                        self.store.delete(table.entity_set, record_id, job.caller)
                        deleted += 1
            result = {"statecode": 3, "statuscode": 30, "message": f"{deleted} record(s) deleted."}
        except DataverseError as exc:
            result = {"statecode": 3, "statuscode": 31, "message": exc.message, "errorcode": 0}
        result["completedon"] = utc_iso(self.store.clock())
        self.store.update("asyncoperations", job.job_id, result, job.caller)


def _compile(store: Store, query: Any, index: int) -> tuple[Table, Predicate]:
    if not isinstance(query, Mapping) or not isinstance(query.get("EntityName"), str):
        raise errors.bad_request(f"QuerySet[{index}] must be a QueryExpression with 'EntityName'.")
    table = store.table_by_logical_name(query["EntityName"])
    if table is None:
        raise errors.bad_request(f"QuerySet[{index}]: the table '{query['EntityName']}' does not exist.")
    criteria = query.get("Criteria") or {}
    if criteria.get("Filters"):
        raise errors.bad_request(
            f"QuerySet[{index}]: the sandbox does not implement nested Criteria.Filters; use Conditions."
        )
    operator = str(criteria.get("FilterOperator") or "And")
    if operator not in ("And", "Or"):
        raise errors.bad_request(
            f"QuerySet[{index}]: FilterOperator must be 'And' or 'Or', got '{operator}'."
        )
    tests = [_condition(table, c, index) for c in criteria.get("Conditions") or []]
    combine = all if operator == "And" else any
    return table, lambda row: combine(t(row) for t in tests) if tests else True


def _condition(table: Table, condition: Any, index: int) -> Predicate:
    if not isinstance(condition, Mapping):
        raise errors.bad_request(
            f"QuerySet[{index}]: each condition is an object with AttributeName, Operator, Values."
        )
    name, operator = str(condition.get("AttributeName")), str(condition.get("Operator"))
    column = name if name in table.columns else f"_{name}_value"
    if column not in table.columns:
        raise errors.unknown_property(table.logical_name, name)
    values = [v.get("Value") if isinstance(v, Mapping) else v for v in condition.get("Values") or []]
    if operator in _OPERATORS:
        if len(values) != 1:
            raise errors.bad_request(
                f"QuerySet[{index}]: the {operator} condition on {name} needs exactly one value."
            )
        op, wanted = _OPERATORS[operator], values[0]
        return lambda row: compare_values(op, row.get(column), wanted)
    if operator == "Null":
        return lambda row: row.get(column) is None
    if operator == "NotNull":
        return lambda row: row.get(column) is not None
    if operator in ("In", "NotIn"):
        negate = operator == "NotIn"
        return lambda row: any(compare_values("eq", row.get(column), v) for v in values) != negate
    if operator in ("Like", "BeginsWith", "EndsWith") and len(values) == 1:
        text = str(values[0]).casefold()
        if operator == "Like":
            return lambda row: _like(str(row.get(column) or "").casefold(), text)
        if operator == "BeginsWith":
            return lambda row: str(row.get(column) or "").casefold().startswith(text)
        return lambda row: str(row.get(column) or "").casefold().endswith(text)
    raise errors.bad_request(
        f"QuerySet[{index}]: the condition operator '{operator}' is not supported by the sandbox "
        f"(supported: {', '.join(_SUPPORTED)})."
    )


def _like(value: str, pattern: str) -> bool:
    """SQL LIKE with `%` wildcards (the sandbox does not implement `_` or `[...]`)."""
    parts = pattern.split("%")
    if len(parts) == 1:
        return value == pattern
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]):
        return False
    position = len(parts[0])
    for part in parts[1:-1]:
        found = value.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return position <= len(value) - len(parts[-1])
