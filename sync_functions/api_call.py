"""One HTTP trigger -> `shared.ops.admin_api.handle` adapter for the admin and salespeople endpoints."""

import azure.functions as func

from shared.ops.admin_api import ApiRequest, handle


def answer(req: func.HttpRequest, path: str) -> func.HttpResponse:
    """Hand the request to the service's API (which checks the caller's token and role) and return
    its answer as JSON."""
    response = handle(ApiRequest(req.method, path, dict(req.params), dict(req.headers), req.get_body()))
    return func.HttpResponse(
        response.text(), status_code=response.status, headers=response.headers, mimetype="application/json"
    )
