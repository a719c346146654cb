"""Product availability for salespeople (`/api/products/.../availability`): BC inventory, asked live.
Anonymous at the Functions level; `shared.admin_api` checks the Entra ID token and app role."""

import azure.functions as func

from shared.admin_api import ApiRequest, ApiResponse, handle

bp = func.Blueprint()


def _respond(answer: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        answer.text(), status_code=answer.status, headers=answer.headers, mimetype="application/json"
    )


def _request(req: func.HttpRequest, path: str) -> ApiRequest:
    return ApiRequest(req.method, path, dict(req.params), dict(req.headers), req.get_body())


@bp.route(route="products/{number}/availability", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def product_availability(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(handle(_request(req, f"products/{req.route_params['number']}/availability")))


@bp.route(
    route="products/by-id/{product_id}/availability", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def product_availability_by_id(req: func.HttpRequest) -> func.HttpResponse:
    path = f"products/by-id/{req.route_params['product_id']}/availability"
    return _respond(handle(_request(req, path)))
