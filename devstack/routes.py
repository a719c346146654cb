"""HTTP trigger route templates, matched the way the Azure Functions host matches them.

The host maps every HTTP function's `route` with ASP.NET Core routing templates
(`Microsoft.Azure.WebJobs.Extensions.Http.WebJobsRouteBuilder`: one `Route` per function, under the
`api` prefix, with the function's methods as an `HttpMethodRouteConstraint`) into a
`RouteCollection`, and the first route that matches serves the request. What is implemented here:

- literal segments, compared case-insensitively;
- parameters `{name}`, optional `{name?}`, with a default `{name=value}`, with inline constraints
  `{name:int}`, `{name:int:min(1)}`, `{name:regex(^\\d+$)}` (the ASP.NET Core constraint names);
- catch-all parameters `{*name}` / `{**name}` as the last segment: they take the rest of the path,
  slashes included, and match an empty rest too (then the parameter has no value, as in ASP.NET
  Core, so `route_params` has no such key);
- a trailing slash is ignored except by a catch-all, which keeps it (ASP.NET Core's path
  tokenizer does the same);
- precedence: **none by template**. The host's `RouteCollection` tries routes in the order of its
  function list, which is by function name (Azure/azure-functions-host#9876, #3153; the fix,
  Azure/azure-webjobs-sdk-extensions#842, is not merged). So `items/recent` beats `items/{id}` only if
  its function's name sorts first; `routes_in_host_order` reproduces that order, and the dev host
  does not paper over it, so a shadowed route shows up here as it would in Azure.

Not implemented (the app uses none; a template using them is refused at start-up rather than
silently matched differently): complex segments mixing literals and parameters (`{a}.{b}`), and the
`file`/`nonfile` constraints.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

Constraint = Callable[[str], bool]

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


def _integer(text: str, bounds: tuple[int, int]) -> int | None:
    if not _INTEGER.match(text):
        return None
    value = int(text)
    return value if bounds[0] <= value <= bounds[1] else None


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _guid(text: str) -> bool:
    # Guid.TryParse takes the D, N, B and P forms; uuid.UUID takes those and a `urn:uuid:` prefix,
    # which .NET refuses.
    if text.lower().startswith("urn:"):
        return False
    try:
        uuid.UUID(text.strip("()") if text.startswith("(") and text.endswith(")") else text)
    except ValueError:
        return False
    return True


def _datetime(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _args(name: str, raw: str | None, count: tuple[int, ...]) -> list[str]:
    args = [a.strip() for a in raw.split(",")] if raw is not None else []
    if len(args) not in count:
        raise RouteTemplateError(f"constraint {name!r} takes {' or '.join(map(str, count))} argument(s)")
    return args


def _long_arg(name: str, text: str) -> int:
    value = _integer(text, _INT64)
    if value is None:
        raise RouteTemplateError(f"constraint {name!r} needs an integer argument, got {text!r}")
    return value


def _constraint(name: str, raw: str | None) -> Constraint:
    """One ASP.NET Core inline route constraint (DefaultInlineConstraintResolver's names)."""
    key = name.lower()
    if key in ("int", "long", "bool", "guid", "alpha", "decimal", "double", "float", "datetime", "required"):
        _args(name, raw, (0,))
    if key == "int":
        return lambda v: _integer(v, _INT32) is not None
    if key == "long":
        return lambda v: _integer(v, _INT64) is not None
    if key == "bool":
        return lambda v: v.lower() in ("true", "false")
    if key == "guid":
        return _guid
    if key == "alpha":
        return lambda v: re.fullmatch(r"[a-z]*", v, re.IGNORECASE) is not None
    if key in ("decimal", "double", "float"):
        return _number
    if key == "datetime":
        return _datetime
    if key == "required":
        return lambda v: v != ""
    if key in ("min", "max"):
        (bound,) = (_long_arg(name, a) for a in _args(name, raw, (1,)))
        if key == "min":
            return lambda v: (n := _integer(v, _INT64)) is not None and n >= bound
        return lambda v: (n := _integer(v, _INT64)) is not None and n <= bound
    if key == "range":
        low, high = (_long_arg(name, a) for a in _args(name, raw, (2,)))
        return lambda v: (n := _integer(v, _INT64)) is not None and low <= n <= high
    if key in ("minlength", "maxlength"):
        (size,) = (_long_arg(name, a) for a in _args(name, raw, (1,)))
        return (lambda v: len(v) >= size) if key == "minlength" else (lambda v: len(v) <= size)
    if key == "length":
        sizes = [_long_arg(name, a) for a in _args(name, raw, (1, 2))]
        low, high = (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])
        return lambda v: low <= len(v) <= high
    if key == "regex":
        if raw is None:
            raise RouteTemplateError("constraint 'regex' needs a pattern")
        # RegexRouteConstraint: IgnoreCase | CultureInvariant, and IsMatch (not anchored).
        pattern = re.compile(raw, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    # ASP.NET Core fails start-up the same way: "The constraint reference '...' could not be resolved".
    raise RouteTemplateError(f"the constraint reference {name!r} could not be resolved")


class RouteTemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    literal: str | None = None  # a literal segment, or None for a parameter
    name: str = ""
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    constraints: tuple[Constraint, ...] = ()

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.constraints)


def _split_outside_parens(text: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _parameter(body: str, template: str) -> Segment:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    name, *constraint_texts = _split_outside_parens(body, ":")
    default: str | None = None
    if constraint_texts and "=" in constraint_texts[-1] and "(" not in constraint_texts[-1].split("=")[0]:
        constraint_texts[-1], default = constraint_texts[-1].split("=", 1)
    elif "=" in name:
        name, default = name.split("=", 1)
    optional = False
    if constraint_texts and constraint_texts[-1].endswith("?"):
        constraint_texts[-1], optional = constraint_texts[-1][:-1], True
    elif name.endswith("?"):
        name, optional = name[:-1], True
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise RouteTemplateError(f"bad parameter name {name!r} in route {template!r}")
    constraints = []
    for text in constraint_texts:
        match = re.fullmatch(r"(\w+)(?:\((.*)\))?", text, re.DOTALL)
        if match is None:
            raise RouteTemplateError(f"bad constraint {text!r} in route {template!r}")
        constraints.append(_constraint(match.group(1), match.group(2)))
    return Segment(
        name=name, optional=optional, default=default, catch_all=catch_all, constraints=tuple(constraints)
    )


@dataclass(frozen=True)
class RouteTemplate:
    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        """`template` as given to `route=` (without the `api/` prefix)."""
        text = template.strip().strip("/")
        segments: list[Segment] = []
        for raw in text.split("/") if text else []:
            unescaped = raw.replace("{{", "").replace("}}", "")  # `{{` and `}}` are literal braces
            if raw.startswith("{") and raw.endswith("}") and unescaped.count("{") == 1:
                body = raw[1:-1].replace("{{", "{").replace("}}", "}")
                segments.append(_parameter(body, template))
            elif "{" in unescaped or "}" in unescaped:
                raise RouteTemplateError(
                    f"route {template!r}: segment {raw!r} mixes literals and parameters, which the dev "
                    "host does not support"
                )
            elif raw == "":
                raise RouteTemplateError(f"route {template!r} has an empty segment")
            else:
                segments.append(Segment(literal=raw.replace("{{", "{").replace("}}", "}")))
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            if segment.catch_all and not last:
                raise RouteTemplateError(
                    f"route {template!r}: a catch-all parameter must be the last segment"
                )
            if segment.optional and not last:
                raise RouteTemplateError(
                    f"route {template!r}: an optional parameter must be the last segment"
                )
        return cls(template, tuple(segments))

    def match(self, path: str) -> dict[str, str] | None:
        """The route values for `path` (below `/api/`, still percent-encoded), or None if it does not
        match. Parameters that took no value (an empty catch-all, a missing optional) are absent."""
        raw_segments = path.split("/") if path else []
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.catch_all:
                rest = "/".join(raw_segments[index:])
                value = unquote(rest)
                if value:
                    if not segment.accepts(value):
                        return None
                    values[segment.name] = value
                elif segment.default is not None:
                    values[segment.name] = segment.default
                return values
            given = raw_segments[index] if index < len(raw_segments) else None
            # ASP.NET Core's path tokenizer ignores one trailing slash: `a/b/` is `a/b`.
            if given == "" and index == len(raw_segments) - 1:
                given = None
            if given is None:
                if segment.literal is None and (segment.optional or segment.default is not None):
                    if segment.default is not None:
                        values[segment.name] = segment.default
                    continue
                return None
            decoded = unquote(given)
            if segment.literal is not None:
                if decoded.lower() != segment.literal.lower():
                    return None
                continue
            if decoded == "" or not segment.accepts(decoded):
                return None
            values[segment.name] = decoded
        extra = raw_segments[len(self.segments) :]
        if extra and extra != [""]:
            return None
        return values


T = TypeVar("T")


def routes_in_host_order(routes: Iterable[tuple[str, T]]) -> list[T]:
    """`(function name, route)` pairs in the order the Functions host tries them: by function name,
    case-insensitively (see the module docstring: it is not by how specific the template is)."""
    return [route for _, route in sorted(routes, key=lambda pair: (pair[0].casefold(), pair[0]))]
