"""Product availability for salespeople (`/api/products/.../availability`): BC inventory, asked live.
Anonymous at the Functions level; `shared.ops.admin_api` checks the Entra ID token and app role."""

import azure.functions as func

from sync_functions.api_call import answer

bp = func.Blueprint()


@bp.route(route="products/{number}/availability", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def product_availability(req: func.HttpRequest) -> func.HttpResponse:
    return answer(req, f"products/{req.route_params['number']}/availability")


@bp.route(
    route="products/by-id/{product_id}/availability", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def product_availability_by_id(req: func.HttpRequest) -> func.HttpResponse:
    path = f"products/by-id/{req.route_params['product_id']}/availability"
    return answer(req, path)
