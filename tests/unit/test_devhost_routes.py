"""Route templates as the Functions host matches them (devstack/routes.py), without a server."""

from __future__ import annotations

import pytest

from devstack.routes import RouteTemplate, RouteTemplateError, routes_in_host_order


@pytest.mark.parametrize(
    ("template", "path", "values"),
    [
        ("manage/{*path}", "manage/runs/abc", {"path": "runs/abc"}),
        ("manage/{*path}", "manage/status", {"path": "status"}),
        ("manage/{*path}", "manage", {}),
        ("manage/{*path}", "manage/", {}),
        ("manage/{*path}", "manage/runs/", {"path": "runs/"}),  # a catch-all keeps a trailing slash
        ("manage/{**path}", "manage/a/b", {"path": "a/b"}),
        ("manage/{*path}", "managed/x", None),
        ("manage/{*path}", "Manage/x", {"path": "x"}),
        ("orders/{id}/lines/{line:int}", "orders/SO-1/lines/7", {"id": "SO-1", "line": "7"}),
        ("orders/{id}/lines/{line:int}", "orders/SO-1/lines/7/", {"id": "SO-1", "line": "7"}),
        ("orders/{id}/lines/{line:int}", "orders/SO-1/lines/x", None),
        ("orders/{id}/lines/{line:int}", "orders/SO-1/lines/99999999999", None),  # beyond int32
        ("orders/{id}/lines/{line:int}", "orders/SO-1/lines", None),
        ("orders/{id}", "orders//", None),
        (
            "items/{id:guid}",
            "items/5a1e5000-0000-4000-8000-0000000000a1",
            {"id": "5a1e5000-0000-4000-8000-0000000000a1"},
        ),
        ("items/{id:guid}", "items/not-a-guid", None),
        ("items/{id:int:range(1,10)}", "items/10", {"id": "10"}),
        ("items/{id:int:range(1,10)}", "items/11", None),
        ("items/{code:length(3)}", "items/abc", {"code": "abc"}),
        ("items/{code:regex(^[a-z]{{2}}\\d$)}", "items/AB1", {"code": "AB1"}),
        ("items/{code:alpha}", "items/ab1", None),
        ("items/{id?}", "items", {}),
        ("items/{id:int?}", "items/4", {"id": "4"}),
        ("items/{id=all}", "items", {"id": "all"}),
        ("items/{id}", "items/a%20b", {"id": "a b"}),
    ],
)
def test_matching(template: str, path: str, values: dict[str, str] | None) -> None:
    assert RouteTemplate.parse(template).match(path) == values


@pytest.mark.parametrize(
    "template",
    ["files/{*rest}/more", "items/{id?}/more", "items/{id:nosuch}", "items/{a}.{b}", "items//x", "items/{9}"],
)
def test_templates_the_host_would_refuse_are_refused(template: str) -> None:
    with pytest.raises(RouteTemplateError):
        RouteTemplate.parse(template)


def test_routes_are_tried_in_function_name_order_not_by_specificity() -> None:
    routes = [("manage_any", "manage/{*path}"), ("Health", "health"), ("a_manage_status", "manage/status")]
    assert routes_in_host_order(routes) == ["manage/status", "health", "manage/{*path}"]
