"""OData v4 query options for the sandboxes: `$filter` compiled to a predicate, `$select`, `$orderby`.

Rows are plain dicts in wire form (strings, numbers, booleans, ISO datetime strings, GUID strings).
The filter grammar is the subset both services' clients use: comparisons, `and`/`or`/`not`,
parentheses, literals (null, booleans, numbers, quoted strings with `''` escaping, bare GUIDs, ISO
dates and datetimes, enum members `Namespace.Type'Member'` compared by member name),
`contains`/`startswith`/`endswith`, parameter aliases (`name eq @p1` with `@p1='x'` passed in
`aliases`), and Dataverse's query-function call form
`Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=["a","b"])` (and `NotIn`; arrays take
single- or double-quoted values, as Microsoft's examples use both). Other query functions are supplied
by the caller (`functions`), as they depend on the service (its clock, its caller).

Comparison semantics follow OData v4 (`null eq null` is true, `null ne 'a'` is true, an ordering
comparison with null is false). String comparison is case-insensitive by default, as the SQL
collation behind both services is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


class QueryError(ValueError):
    """A query option the service would refuse; the message is fit for a 400 answer."""


class OrAcrossFieldsError(QueryError):
    """`or` between conditions on different properties, for a service that cannot express it (BC)."""


class UnknownPropertyError(QueryError):
    """A property name that is not a column of the table; `.name` is the offending name."""

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        super().__init__(message or f"Could not find a property named '{name}'.")


# --- tokens ---------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<dstring>"(?:[^"\\]|\\.)*")
  | (?P<alias>@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\w:-]))
  | (?P<enum>[A-Za-z_][A-Za-z0-9_.]*'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?(?![\w-]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[(),\[\]=])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string guid datetime date number name punct end
    text: str
    value: Any = None
    pos: int = 0


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise QueryError(f"Syntax error at position {pos} in '{text}': unexpected '{text[pos]}'.")
        kind = match.lastgroup or ""
        raw = match.group()
        pos = match.end()
        if kind == "ws":
            continue
        tokens.append(_Token(kind, raw, _literal_value(kind, raw), match.start()))
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


def _literal_value(kind: str, raw: str) -> Any:
    if kind == "string":
        return raw[1:-1].replace("''", "'")
    if kind == "enum":  # `Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'`: the member name
        return raw[raw.index("'") + 1 : -1].replace("''", "'")
    if kind == "dstring":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise QueryError(f"{raw} is not a valid double-quoted string.") from None
    if kind == "guid":
        return raw.lower()
    if kind == "datetime":
        return parse_instant(raw)
    if kind == "date":
        return dt.date.fromisoformat(raw)
    if kind == "number":
        digits = raw.rstrip("mMdDfFlL")
        if re.fullmatch(r"-?\d+", digits):
            return int(digits)
        return Decimal(digits)
    return None


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 datetime as an aware UTC datetime (no offset means UTC)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(f"'{text}' is not a valid ISO 8601 datetime.") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


# --- parser ---------------------------------------------------------------------------------------

_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_STRING_FUNCTIONS = {"contains", "startswith", "endswith"}
_IN_FUNCTIONS = {"microsoft.dynamics.crm.in": False, "microsoft.dynamics.crm.notin": True}

Operand = Callable[[Row], Any]


@dataclass(frozen=True)
class FunctionCall:
    """A query-function call `Name(Param=value, ...)` handed to a `QueryFunction`.

    `args` holds literal values (lists for `[...]`); `column(name)` resolves a `PropertyName` argument to
    a getter over rows (raising `UnknownPropertyError`), `case_insensitive` is the filter's mode.
    """

    name: str
    args: Mapping[str, Any]
    column: Callable[[str], Operand]
    case_insensitive: bool

    def arg(self, name: str, kind: type | tuple[type, ...] = object) -> Any:
        value = self.args.get(name)
        if value is None or not isinstance(value, kind):
            raise QueryError(
                f"{self.name} needs the parameter {name}; see Microsoft's query function reference."
            )
        return value


QueryFunction = Callable[[FunctionCall], Predicate]


class _Parser:
    def __init__(
        self,
        text: str,
        fields: Collection[str] | None,
        case_insensitive: bool,
        functions: Mapping[str, QueryFunction] | None = None,
        aliases: Mapping[str, str] | None = None,
        or_single_field: bool = False,
    ) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.fields = fields
        self.case_insensitive = case_insensitive
        self.functions = {k.lower(): v for k, v in (functions or {}).items()}
        self.aliases = aliases or {}
        self.or_single_field = or_single_field
        self.names: list[str] = []  # every property named so far, in order

    # token helpers
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            found = token.text or "end of expression"
            raise QueryError(f"Syntax error in '{self.text}': expected '{text}' but found '{found}'.")

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "name" and token.text.lower() == word:
            self.index += 1
            return True
        return False

    # grammar: or_expr := and_expr ("or" and_expr)*; and_expr := unary ("and" unary)*
    def parse(self) -> Predicate:
        if self.peek().kind == "end":
            raise QueryError("The $filter expression is empty.")
        predicate = self.or_expr()
        if self.peek().kind != "end":
            raise QueryError(f"Syntax error in '{self.text}': unexpected '{self.peek().text}'.")
        return predicate

    def or_expr(self) -> Predicate:
        first_name = len(self.names)
        parts = [self.and_expr()]
        while self.keyword("or"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        if self.or_single_field and len(set(self.names[first_name:])) > 1:
            raise OrAcrossFieldsError(
                "The 'OR' operator is not supported on distinct fields on an OData filter."
            )
        texts = [p for p in parts if isinstance(p, _TextEquals)]
        if len(texts) == len(parts) and len({p.name for p in texts}) == 1:
            return _any_text(texts, self.case_insensitive)
        return lambda row: any(p(row) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.keyword("and"):
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(p(row) for p in parts)

    def unary(self) -> Predicate:
        if self.keyword("not"):
            inner = self.unary()
            return lambda row: not inner(row)
        return self.comparison()

    def comparison(self) -> Predicate:
        token = self.peek()
        if token.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        if token.kind == "name" and token.text.lower() in _STRING_FUNCTIONS:
            return self.string_function()
        if token.kind == "name" and token.text.lower() in _IN_FUNCTIONS:
            return self.in_function()
        if token.kind == "name" and token.text.lower() in self.functions:
            return self.query_function()
        if token.kind == "name" and self.tokens[self.index + 1].text == "(":
            raise QueryError(f"The function '{token.text}' is not supported in $filter here.")
        left = self.operand()
        op_token = self.peek()
        op = op_token.text.lower()
        if op_token.kind != "name" or op not in _COMPARISONS:
            if left.is_property and (op_token.kind == "end" or op in {"and", "or"} or op == ")"):
                # A bare boolean property (`creditonhold`) means `creditonhold eq true`.
                return lambda row: left.get(row) is True
            found = op_token.text or "end of expression"
            raise QueryError(
                f"Syntax error in '{self.text}': expected a comparison operator, found '{found}'."
            )
        self.take()
        right = self.operand()
        test = _compare(op, left, right, self.case_insensitive)
        if op == "eq" and left.is_property and not right.is_property and isinstance(right.constant, str):
            return _TextEquals(left.name, right.constant, test)
        return test

    def string_function(self) -> Predicate:
        name = self.take().text.lower()
        self.expect("(")
        subject = self.operand()
        self.expect(",")
        needle = self.operand()
        self.expect(")")
        fold = _fold if self.case_insensitive else _identity

        def test(row: Row) -> bool:
            value, part = subject.get(row), needle.get(row)
            if not isinstance(value, str) or not isinstance(part, str):
                return False
            value, part = fold(value), fold(part)
            if name == "contains":
                return part in value
            if name == "startswith":
                return value.startswith(part)
            return value.endswith(part)

        return test

    def call_args(self) -> dict[str, Any]:
        """`(Name=value, ...)` of a query-function call; values are literals, aliases or `[...]` lists."""
        self.expect("(")
        args: dict[str, Any] = {}
        while True:
            arg = self.take()
            if arg.kind != "name":
                raise QueryError(
                    f"Syntax error in '{self.text}': expected a parameter name, found '{arg.text}'."
                )
            self.expect("=")
            args[arg.text] = self.value()
            if self.peek().text == ",":
                self.take()
                continue
            self.expect(")")
            return args

    def value(self) -> Any:
        """A literal, an alias (`@p1`, resolved from the aliases) or an array of them."""
        token = self.peek()
        if token.kind == "alias":
            self.take()
            if token.text not in self.aliases:
                raise QueryError(
                    f"The parameter alias {token.text} has no value: add {token.text}=... to the query."
                )
            inner = _Parser(self.aliases[token.text], self.fields, self.case_insensitive)
            result = inner.value()
            if inner.peek().kind != "end":
                raise QueryError(f"The value of {token.text} is not a single literal or array.")
            return result
        if token.text == "[":
            self.take()
            values: list[Any] = []
            while self.peek().text != "]":
                values.append(self.value())
                if self.peek().text == ",":
                    self.take()
                elif self.peek().text != "]":
                    raise QueryError(f"Syntax error in '{self.text}': expected ',' or ']' in an array.")
            self.expect("]")
            return values
        return self.literal_token().value

    def function_column(self, name: str) -> _Operand:
        # A query function names a lookup by its logical name (`ownerid`); rows carry `_ownerid_value`.
        if self.fields is not None and name not in self.fields and f"_{name}_value" in self.fields:
            name = f"_{name}_value"
        return self.property_operand(name)

    def query_function(self) -> Predicate:
        name = self.take().text
        args = self.call_args()
        call = FunctionCall(name, args, lambda n: self.function_column(n).get, self.case_insensitive)
        return self.functions[name.lower()](call)

    def in_function(self) -> Predicate:
        negate = _IN_FUNCTIONS[self.take().text.lower()]
        args = self.call_args()
        prop, candidates = args.get("PropertyName"), args.get("PropertyValues")
        if not isinstance(prop, str) or not isinstance(candidates, list):
            raise QueryError("Microsoft.Dynamics.CRM.In needs PropertyName='name' and PropertyValues=[...].")
        operand = self.function_column(prop)
        wanted = [_Operand.const(v) for v in candidates]
        tests = [_compare("eq", operand, w, self.case_insensitive) for w in wanted]
        # Text values (ids, codes) are looked up in a set: a read-back of 1,000 ids by `In` must not
        # cost 1,000 comparisons per row.
        fold = str.casefold if self.case_insensitive else str
        keys = {fold(v) for v in candidates if isinstance(v, str)}

        def test(row: Row) -> bool:
            value = operand.get(row)
            if isinstance(value, uuid.UUID):
                value = str(value)
            if isinstance(value, str) and not _looks_numeric(value):
                hit = fold(value) in keys
            else:
                hit = any(t(row) for t in tests)
            return not hit if negate else hit

        return test

    def literal_token(self) -> _Token:
        token = self.take()
        if token.kind in {"string", "dstring", "enum", "guid", "datetime", "date", "number"}:
            return token
        if token.kind == "name" and token.text.lower() in {"null", "true", "false"}:
            value = {"null": None, "true": True, "false": False}[token.text.lower()]
            return _Token("literal", token.text, value, token.pos)
        raise QueryError(f"Syntax error in '{self.text}': expected a literal value, found '{token.text}'.")

    def operand(self) -> _Operand:
        token = self.peek()
        if token.kind == "name" and token.text.lower() not in {"null", "true", "false"}:
            self.take()
            return self.property_operand(token.text)
        if token.kind == "alias":
            return _Operand.const(self.value())
        return _Operand.const(self.literal_token().value)

    def property_operand(self, name: str) -> _Operand:
        if self.fields is not None and name not in self.fields:
            raise UnknownPropertyError(name)
        self.names.append(name)
        return _Operand.prop(name)


@dataclass(frozen=True)
class _Operand:
    get: Operand
    is_property: bool
    constant: Any = None
    name: str = ""

    @staticmethod
    def prop(name: str) -> _Operand:
        return _Operand(lambda row: row.get(name), True, name=name)

    @staticmethod
    def const(value: Any) -> _Operand:
        return _Operand(lambda row: value, False, value)


@dataclass(frozen=True)
class _TextEquals:
    """`name eq 'text'` (a GUID literal is text too), kept recognisable so that an `or` of many (a
    client reading records by id) tests a set instead of every comparison on every row."""

    name: str
    text: str
    test: Predicate

    def __call__(self, row: Row) -> bool:
        return self.test(row)


def _any_text(parts: Sequence[_TextEquals], case_insensitive: bool) -> Predicate:
    """The `or` of `parts`, exactly as `_compare` decides each: a text value equals a text literal
    when both are the same after folding; any other value is compared part by part."""
    fold = _fold if case_insensitive else _identity
    texts = {fold(p.text) for p in parts}
    name = parts[0].name

    def test(row: Row) -> bool:
        value = row.get(name)
        if isinstance(value, str):
            return fold(value) in texts
        return any(p(row) for p in parts)

    return test


def _fold(text: str) -> str:
    return text.casefold()


def _identity(text: str) -> str:
    return text


def _normalise(value: Any, other: Any, case_insensitive: bool) -> Any:
    """Bring a row value into the domain of the literal it is compared with."""
    if value is None:
        return None
    if isinstance(other, dt.datetime):
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_instant(str(value))
        except QueryError:
            return str(value)
    if isinstance(other, dt.date):
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value)[:10])
        except ValueError:
            return str(value)
    if isinstance(value, bool) or isinstance(other, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        return Decimal(str(value))
    if isinstance(value, str) and isinstance(other, (int, float, Decimal)):
        # `In` passes every value as a string, numbers included: compare those as numbers.
        try:
            return Decimal(value)
        except ArithmeticError:
            return value.casefold() if case_insensitive else value
    if isinstance(value, uuid.UUID):
        return str(value).lower()
    if isinstance(value, str):
        return value.casefold() if case_insensitive else value
    return value


def _looks_numeric(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _compare(op: str, left: _Operand, right: _Operand, case_insensitive: bool) -> Predicate:
    def test(row: Row) -> bool:
        a_raw, b_raw = left.get(row), right.get(row)
        a = _normalise(a_raw, b_raw, case_insensitive)
        b = _normalise(b_raw, a_raw, case_insensitive)
        if op == "eq":
            return a == b
        if op == "ne":
            return a != b
        if a is None or b is None:
            return False
        try:
            return _ORDERINGS[op](a, b)
        except TypeError:
            return False

    return test


# --- public API -----------------------------------------------------------------------------------


def compile_filter(
    text: str,
    *,
    fields: Collection[str] | None = None,
    case_insensitive: bool = True,
    functions: Mapping[str, QueryFunction] | None = None,
    aliases: Mapping[str, str] | None = None,
    or_single_field: bool = False,
) -> Predicate:
    """Compile an OData `$filter` into a predicate over wire-form rows.

    `functions` are extra query functions by full name (`Microsoft.Dynamics.CRM.Between`); `aliases` the
    request's parameter aliases (`{"@p1": "'name'"}`). Raises `UnknownPropertyError` for a name not in
    `fields` (when given), `OrAcrossFieldsError` for an `or` whose conditions name more than one
    property when `or_single_field` (BC turns a filter into per-field filters and cannot express that),
    `QueryError` otherwise.
    """
    return _Parser(text, fields, case_insensitive, functions, aliases, or_single_field).parse()


def compare_values(op: str, value: Any, literal: Any, *, case_insensitive: bool = True) -> bool:
    """`value <op> literal` with the filter's semantics (`op` one of eq ne gt ge lt le)."""
    return _compare(op, _Operand.const(value), _Operand.const(literal), case_insensitive)({})


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_select(text: str | None, fields: Collection[str]) -> list[str] | None:
    """`$select` as a list of column names, or None when absent (all columns)."""
    if text is None or not text.strip():
        return None
    names = _split_list(text)
    for name in names:
        if name not in fields:
            raise UnknownPropertyError(name)
    return names


def parse_orderby(text: str | None, fields: Collection[str]) -> list[tuple[str, bool]]:
    """`$orderby` as `[(column, descending)]`; empty when absent."""
    if text is None or not text.strip():
        return []
    result: list[tuple[str, bool]] = []
    for clause in _split_list(text):
        parts = clause.split()
        if len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in {"asc", "desc"}):
            raise QueryError(f"Syntax error in $orderby clause '{clause}': expected 'name [asc|desc]'.")
        if parts[0] not in fields:
            raise UnknownPropertyError(parts[0])
        result.append((parts[0], len(parts) == 2 and parts[1].lower() == "desc"))
    return result


def sort_key(value: Any) -> tuple[int, Any]:
    """A total order over wire values: nulls first (as SQL Server sorts), strings case-insensitive."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float, Decimal)):
        return (2, value)
    if isinstance(value, str):
        return (3, value.casefold())
    return (4, str(value))


def sort_rows(rows: Iterable[Row], orderby: Sequence[tuple[str, bool]]) -> list[Any]:
    """Rows sorted by `orderby` (stable; later clauses break ties of earlier ones)."""
    result = list(rows)
    for name, descending in reversed(orderby):
        result.sort(key=lambda row, n=name: sort_key(row.get(n)), reverse=descending)  # type: ignore[misc]
    return result
