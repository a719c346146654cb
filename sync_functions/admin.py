"""The admin API (`/api/manage/...`): anonymous at the Functions level, because the service checks
the caller's Entra ID token and app role itself (`shared.ops.admin_api`). One catch-all function: the
routing table in `shared.ops.admin_api` decides what each path does, so a new endpoint needs no new
function. The operator's web page lives under the same route (`manage/ui`)."""

import azure.functions as func

from shared.ops.operator_page import is_page
from sync_functions.api_call import answer, page

bp = func.Blueprint()


@bp.route(route="manage/{*path}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage(req: func.HttpRequest) -> func.HttpResponse:
    # An empty rest (`/api/manage`) gives no `path` parameter at all; the API answers it with 404.
    path = f"manage/{req.route_params.get('path', '')}"
    # The operator's web page (`manage/ui...`) shares the route, the sign-in and the roles.
    return page(req, path) if is_page(path) else answer(req, path)
