"""Hypothesis strategies for fuzzing JSON webhook parsers: arbitrary JSON, and mutated documents."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    # Strings that look like what the parsers expect, so mutations get past the first checks.
    st.sampled_from(
        [
            "",
            "Update",
            "contact",
            "6d81597f-0f9f-e711-8122-000d3aa2331c",
            "00000000-0000-0000-0000-000000000000",
            "/Date(1506409448000-0700)/",
            "/Date(99999999999999)/",
            "Target",
            "updated",
            "collection",
            "2018-10-26T12:54:20.467Z",
            "2018-10-26T12:54:20",
            "someClientState",
            "\ud800",  # a lone surrogate: valid JSON (escaped), not encodable as UTF-8
            "someClientState\udfff",
            "http://evil.example/x",
            "' or 1 eq 1",
        ]
    ),
)

json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, document: Any, max_mutations: int = 3) -> Any:
    """`document` with a few nodes replaced by arbitrary JSON or removed."""
    result = copy.deepcopy(document)
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        paths = _paths(result)
        path = draw(st.sampled_from(paths))
        if not path:
            return draw(json_values)
        parent = result
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_values)
        else:
            del parent[path[-1]]
    return result
