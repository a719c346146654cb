"""The admin API (`/api/manage/...`): anonymous at the Functions level, because the service checks
the caller's Entra ID token and app role itself (`shared.ops.admin_api`). One catch-all function: the
routing table in `shared.ops.admin_api` decides what each path does, so a new endpoint needs no new
function."""

import azure.functions as func

from sync_functions.api_call import answer

bp = func.Blueprint()


@bp.route(route="manage/{*path}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage(req: func.HttpRequest) -> func.HttpResponse:
    # An empty rest (`/api/manage`) gives no `path` parameter at all; the API answers it with 404.
    return answer(req, f"manage/{req.route_params.get('path', '')}")
