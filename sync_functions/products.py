"""Product availability for salespeople (`/api/products/.../availability`): BC inventory, asked live.
Anonymous at the Functions level; `shared.ops.admin_api` checks the Entra ID token and app role, and
its routing table tells `products/{number}/availability` from `products/by-id/{id}/availability`."""

import azure.functions as func

from sync_functions.api_call import answer

bp = func.Blueprint()


@bp.route(route="products/{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def products(req: func.HttpRequest) -> func.HttpResponse:
    return answer(req, f"products/{req.route_params.get('path', '')}")
