"""The choice (option set) values the mappings put into Dataverse, and which of them a Dataverse
environment does not have (pure: set-up reads the options, `shared.ops.setup` reports).

A value the target column does not offer is refused by Dataverse on every write of the record
("A validation error occurred. The value … of 'customertypecode' on record of type 'account' is outside
the valid range"), so each is checked once at set-up instead of failing record by record:
- constants written to Dataverse (`customertypecode: 3`),
- `value_map` values of a field (invoice `statecode`),
- the value maps of `option_set` mappings (PAYMENT TERMS), for every column that looks them up,
- filter values on Dataverse columns (a value that does not exist matches nothing).

Which columns are choice columns is only known from the table's metadata: an integer constant of a
column that is not a choice column (`exchangerate`) is not an option; a column an `option_set` mapping
translates into must be one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.mapping.schema import EntityMapping, MappingSet, OptionSetMapping

# Attribute metadata types holding options (their casts answer `$expand=OptionSet`), by column.
STATE_COLUMN, STATUS_COLUMN = "statecode", "statuscode"
SHOWN_OPTIONS = 12


@dataclass(frozen=True)
class OptionValue:
    mapping: str  # the mapping that writes it ("SALES ORDER LINES" for a document's lines)
    field: str  # the field mapping's key, or "filter"
    table: str  # Dataverse logical name
    column: str
    value: int
    source: str  # what in the mapping file holds it: "constant", "value_map 'Open'", ...
    choice_required: bool  # the column must be a choice column (an option_set mapping's)


@dataclass(frozen=True)
class OptionProblem:
    value: OptionValue
    detail: str
    fix: str


def _is_option(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def option_values(ms: MappingSet) -> list[OptionValue]:
    """Every integer the mappings write to (or filter on) a Dataverse column, in mapping-file order."""
    result: list[OptionValue] = []
    for m in ms.entities():
        result += _of_mapping(ms, m)
        if m.lines is not None:
            result += _of_mapping(ms, m.line_mapping())
    return result


def _of_mapping(ms: MappingSet, m: EntityMapping) -> list[OptionValue]:
    table = m.dataverse.table
    found: list[OptionValue] = []
    for f in m.fields:
        if f.dv is None or not f.writes_to("dv"):
            continue
        if f.has_constant:
            if _is_option(f.constant):
                found.append(OptionValue(m.name, f.key, table, f.dv, int(f.constant), "constant", False))  # type: ignore[arg-type]
            continue
        for bc_value, dv_value in (f.value_map or {}).items():
            if _is_option(dv_value):
                found.append(
                    OptionValue(m.name, f.key, table, f.dv, int(dv_value), f"value_map {bc_value!r}", False)
                )
        target = ms.get(f.lookup) if f.lookup else None
        if isinstance(target, OptionSetMapping):
            for code, dv_value in target.value_map.items():
                found.append(
                    OptionValue(
                        m.name, f.key, table, f.dv, dv_value, f"option_set {target.name} code {code!r}", True
                    )
                )
    for clause in m.dataverse.filter:
        if _is_option(clause.value) and not clause.field.startswith("_"):
            found.append(
                OptionValue(m.name, "filter", table, clause.field, int(clause.value), "filter", False)  # type: ignore[arg-type]
            )
    return found


def casts_needed(values: Sequence[OptionValue]) -> dict[str, tuple[str, ...]]:
    """Table -> the attribute metadata types to read for these values (Picklist always; State and
    Status only where `statecode` / `statuscode` are written): one request each."""
    needed: dict[str, list[str]] = {}
    for v in values:
        casts = needed.setdefault(v.table, ["PicklistAttributeMetadata"])
        extra = {STATE_COLUMN: "StateAttributeMetadata", STATUS_COLUMN: "StatusAttributeMetadata"}.get(
            v.column
        )
        if extra and extra not in casts:
            casts.append(extra)
    return {table: tuple(casts) for table, casts in needed.items()}


def option_problems(
    values: Sequence[OptionValue],
    options: Mapping[str, Mapping[str, Mapping[int, str]]],
    *,
    mappings_file: str,
) -> list[OptionProblem]:
    """The values their column does not offer. `options`: table -> choice column -> {value: label}
    (a table missing from it was not read and is not judged)."""
    problems: list[OptionProblem] = []
    seen: set[tuple[str, str, str, int, str]] = set()
    for v in values:
        if v.table not in options:
            continue
        key = (v.mapping, v.table, v.column, v.value, v.source)
        if key in seen:
            continue
        seen.add(key)
        column = options[v.table].get(v.column)
        where = (
            f"the {v.source} of field {v.field}" if v.field != "filter" else "a filter of the Dataverse side"
        )
        if column is None:
            if v.choice_required:
                problems.append(
                    OptionProblem(
                        v,
                        f"{v.mapping} writes option values ({where}) to {v.table}.{v.column}, which is not a "
                        f"choice column of table {v.table}",
                        f"point the field's `dv` at the table's choice column in {mappings_file}, or create "
                        f"{v.column} as a choice column of {v.table}",
                    )
                )
            continue
        if v.value in column:
            continue
        offered = ", ".join(
            f"{value} {label}".strip() for value, label in list(column.items())[:SHOWN_OPTIONS]
        )
        more = f" (and {len(column) - SHOWN_OPTIONS} more)" if len(column) > SHOWN_OPTIONS else ""
        what = (
            f"{v.mapping}'s Dataverse filter compares {v.table}.{v.column} with {v.value}"
            if v.field == "filter"
            else f"{v.mapping} writes {v.value} ({where}) to {v.table}.{v.column}"
        )
        problems.append(
            OptionProblem(
                v,
                f"{what}, which has no option {v.value}; its options are {offered or 'none'}{more}",
                f"change the value in {mappings_file} to one of these options, or add the option {v.value} "
                f"to the choice column {v.column} of table {v.table} (make.powerapps.com > Tables > "
                f"{v.table} > Columns > {v.column})",
            )
        )
    return problems
