"""The sandboxes' OData `$filter`/`$select`/`$orderby` parsing, checked against rows in wire form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.sandbox_common.odata_query import (
    FunctionCall,
    OrAcrossFieldsError,
    Predicate,
    QueryError,
    UnknownPropertyError,
    compile_filter,
    parse_orderby,
    parse_select,
    sort_rows,
)
from shared import odata

ROWS = [
    {
        "id": "6d81597f-0f9f-e711-8122-000d3aa2331c",
        "name": "O'Brien Ltd",
        "n": 5,
        "amount": 10.5,
        "modifiedon": "2026-01-01T10:00:00Z",
        "active": True,
        "city": None,
        "day": "2026-01-01",
    },
    {
        "id": "2e451703-c686-e711-80e5-00155db19e6d",
        "name": "Contoso",
        "n": 12,
        "amount": 0,
        "modifiedon": "2026-01-02T00:00:00Z",
        "active": False,
        "city": "Paris",
        "day": "2026-02-01",
    },
    {
        "id": "60c4e274-0d87-e711-80e5-00155db19e6d",
        "name": "contoso east",
        "n": -3,
        "amount": 99.99,
        "modifiedon": "2025-12-31T23:59:59.500Z",
        "active": True,
        "city": "Oslo",
        "day": "2025-12-31",
    },
]
FIELDS = set(ROWS[0])


def names(text: str, *, case_insensitive: bool = True) -> list[str]:
    predicate = compile_filter(text, fields=FIELDS, case_insensitive=case_insensitive)
    return [r["name"] for r in ROWS if predicate(r)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n eq 5", ["O'Brien Ltd"]),
        ("n gt 0", ["O'Brien Ltd", "Contoso"]),
        ("n ge 5 and n le 12", ["O'Brien Ltd", "Contoso"]),
        ("n lt 0 or n eq 12", ["Contoso", "contoso east"]),
        ("not (n eq 5)", ["Contoso", "contoso east"]),
        ("amount gt 10.4", ["O'Brien Ltd", "contoso east"]),
        ("name eq 'O''Brien Ltd'", ["O'Brien Ltd"]),
        ("name eq 'CONTOSO'", ["Contoso"]),
        ("city eq null", ["O'Brien Ltd"]),
        ("city ne null", ["Contoso", "contoso east"]),
        ("city ne 'Paris'", ["O'Brien Ltd", "contoso east"]),
        ("city gt 'A'", ["Contoso", "contoso east"]),
        ("active eq true", ["O'Brien Ltd", "contoso east"]),
        ("active eq false", ["Contoso"]),
        ("active", ["O'Brien Ltd", "contoso east"]),
        ("id eq 2E451703-C686-E711-80E5-00155DB19E6D", ["Contoso"]),
        ("modifiedon gt 2026-01-01T00:00:00Z", ["O'Brien Ltd", "Contoso"]),
        ("modifiedon ge 2025-12-31T23:59:59.5Z", ["O'Brien Ltd", "Contoso", "contoso east"]),
        ("modifiedon lt 2026-01-01T11:00:00+01:00", ["contoso east"]),
        ("day ge 2026-01-01", ["O'Brien Ltd", "Contoso"]),
        ("contains(name,'toso')", ["Contoso", "contoso east"]),
        ("startswith(name, 'contoso')", ["Contoso", "contoso east"]),
        ("endswith(name,'EAST')", ["contoso east"]),
        ("(n eq 5 or n eq 12) and not contains(name,'Ltd')", ["Contoso"]),
        ("Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['contoso','Nobody'])", ["Contoso"]),
        (
            "Microsoft.Dynamics.CRM.In(PropertyName='n',PropertyValues=['5','-3'])",
            ["O'Brien Ltd", "contoso east"],
        ),
        ("Microsoft.Dynamics.CRM.NotIn(PropertyName='n',PropertyValues=['5'])", ["Contoso", "contoso east"]),
    ],
)
def test_filter_selects_matching_rows(text: str, expected: list[str]) -> None:
    assert names(text) == expected


def test_case_sensitive_mode_distinguishes_case() -> None:
    assert names("name eq 'contoso'", case_insensitive=False) == []
    assert names("startswith(name,'contoso')", case_insensitive=False) == ["contoso east"]


def test_filters_built_by_the_client_builder_round_trip() -> None:
    text = odata.and_(odata.eq("name", "O'Brien Ltd"), odata.gt("modifiedon", "2025-01-01T00:00:00Z"))
    assert names(text) == ["O'Brien Ltd"]
    assert names(odata.dataverse_in("n", [12, -3])) == ["Contoso", "contoso east"]
    assert names(odata.not_(odata.any_eq("name", ["Contoso", "contoso east"]))) == ["O'Brien Ltd"]


def test_unknown_property_names_the_property() -> None:
    with pytest.raises(UnknownPropertyError) as info:
        compile_filter("nosuch eq 1", fields=FIELDS)
    assert info.value.name == "nosuch"
    assert "nosuch" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "n eq",
        "n eq 5 and",
        "(n eq 5",
        "n eq 5)",
        "n is 5",
        "name eq 'unterminated",
        "n eq 5 n eq 6",
        "Microsoft.Dynamics.CRM.In(PropertyName='n')",
        "contains(name)",
    ],
)
def test_malformed_filters_raise_query_error(text: str) -> None:
    with pytest.raises(QueryError):
        compile_filter(text, fields=FIELDS)


def test_without_fields_any_property_is_allowed() -> None:
    assert compile_filter("whatever eq null")({}) is True


def test_parse_select() -> None:
    assert parse_select(None, FIELDS) is None
    assert parse_select("", FIELDS) is None
    assert parse_select("name, n", FIELDS) == ["name", "n"]
    with pytest.raises(UnknownPropertyError):
        parse_select("name,bogus", FIELDS)


def test_parse_orderby_and_sort_rows() -> None:
    orderby = parse_orderby("city desc, n", FIELDS)
    assert orderby == [("city", True), ("n", False)]
    assert [r["name"] for r in sort_rows(ROWS, orderby)] == ["Contoso", "contoso east", "O'Brien Ltd"]
    assert [r["n"] for r in sort_rows(ROWS, parse_orderby("name asc", FIELDS))] == [12, -3, 5]
    # Nulls sort first ascending, as SQL Server does.
    assert sort_rows(ROWS, [("city", False)])[0]["city"] is None
    with pytest.raises(QueryError):
        parse_orderby("name sideways", FIELDS)
    with pytest.raises(UnknownPropertyError):
        parse_orderby("bogus desc", FIELDS)


@pytest.mark.parametrize("text", ["tolower(name) eq 'a'", "Microsoft.Dynamics.CRM.Above(PropertyName='x')"])
def test_unknown_functions_are_named(text: str) -> None:
    name = text.split("(", 1)[0]
    with pytest.raises(QueryError, match=f"The function '{name}' is not supported"):
        compile_filter(text)


def test_in_takes_double_quoted_values_and_aliases() -> None:
    text = 'Microsoft.Dynamics.CRM.In(PropertyName=\'name\',PropertyValues=["contoso","x"])'
    assert names(text) == ["Contoso"]
    predicate = compile_filter("n eq @p1", fields=FIELDS, aliases={"@p1": "5"})
    assert [r["name"] for r in ROWS if predicate(r)] == ["O'Brien Ltd"]
    with pytest.raises(QueryError, match="@p2 has no value"):
        compile_filter("n eq @p2", fields=FIELDS)


def test_caller_supplied_query_functions_get_their_arguments() -> None:
    seen: list[dict[str, object]] = []

    def positive(call: FunctionCall) -> Predicate:
        seen.append(dict(call.args))
        get = call.column(call.arg("PropertyName", str))
        return lambda row: (get(row) or 0) > 0

    text = "X.Positive(PropertyName='n',PropertyValues=[\"1\",2])"
    predicate = compile_filter(text, fields=FIELDS, functions={"X.Positive": positive})
    assert [r["name"] for r in ROWS if predicate(r)] == [r["name"] for r in ROWS if r["n"] > 0]
    assert seen == [{"PropertyName": "n", "PropertyValues": ["1", 2]}]


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("n eq 1 or n eq 5", False),
        ("(n eq 1 or n eq 5) and name ne 'x'", False),
        ("not (n eq 1 or n gt 4) and active", False),
        (odata.any_eq("name", ["a", "b", "c"]), False),
        ("n eq 1 or name eq 'x'", True),
        ("n eq 1 or (n eq 2 and active)", True),
        ("active and (n eq 1 or name eq 'x')", True),
        ("startswith(name,'O') or contains(city,'x')", True),
    ],
)
def test_or_single_field_refuses_or_across_properties_only(text: str, refused: bool) -> None:
    if refused:
        with pytest.raises(OrAcrossFieldsError, match="not supported on distinct fields"):
            compile_filter(text, or_single_field=True)
    else:
        compile_filter(text, or_single_field=True)
    compile_filter(text)  # without the option (Dataverse) every `or` is fine


# An `or` of many `eq` on one property (a client reading records by id) is tested against a set:
# it must decide every row exactly as the comparisons one by one do.
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["a", "A", "Straße", "STRASSE", "5", "é", ""]),
)


@given(
    values=st.lists(_VALUES, min_size=1, max_size=8),
    literals=st.lists(st.sampled_from(["a", "strasse", "5", "É", "x'y", ""]), min_size=2, max_size=5),
    case_insensitive=st.booleans(),
)
def test_an_or_of_text_equalities_decides_as_its_comparisons_one_by_one(
    values: list[object], literals: list[str], case_insensitive: bool
) -> None:
    clauses = [odata.eq("v", text) for text in literals]
    together = compile_filter(" or ".join(clauses), case_insensitive=case_insensitive)
    alone = [compile_filter(c, case_insensitive=case_insensitive) for c in clauses]
    for value in values:
        row = {"v": value}
        assert together(row) == any(p(row) for p in alone), (value, literals)
