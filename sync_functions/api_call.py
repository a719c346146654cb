"""One HTTP trigger -> `shared.ops.admin_api.handle` adapter for the admin and salespeople endpoints,
and -> `shared.ops.operator_page.handle_page` for the operator's web page under `manage/ui`."""

import azure.functions as func

from shared.ops.admin_api import ApiRequest, handle
from shared.ops.operator_page import handle_page


def answer(req: func.HttpRequest, path: str) -> func.HttpResponse:
    """Hand the request to the service's API (which checks the caller's token and role) and return
    its answer as JSON."""
    response = handle(ApiRequest(req.method, path, dict(req.params), dict(req.headers), req.get_body()))
    return func.HttpResponse(
        response.text(), status_code=response.status, headers=response.headers, mimetype="application/json"
    )


def page(req: func.HttpRequest, path: str) -> func.HttpResponse:
    """The operator page (same sign-in and roles as the API), as HTML."""
    response = handle_page(ApiRequest(req.method, path, dict(req.params), dict(req.headers), req.get_body()))
    return func.HttpResponse(
        response.body, status_code=response.status, headers=response.headers, mimetype="text/html",
        charset="utf-8",
    )  # fmt: skip
