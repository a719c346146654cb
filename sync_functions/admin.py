"""The admin API (`/api/manage/...`): anonymous at the Functions level, because the service checks
the caller's Entra ID token and app role itself (`shared.ops.admin_api`). The dev host has no catch-all
routes, so one function per path depth."""

import azure.functions as func

from sync_functions.api_call import answer

bp = func.Blueprint()


@bp.route(route="manage/{action}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage_action(req: func.HttpRequest) -> func.HttpResponse:
    return answer(req, f"manage/{req.route_params['action']}")


@bp.route(route="manage/{action}/{detail}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage_detail(req: func.HttpRequest) -> func.HttpResponse:
    path = f"manage/{req.route_params['action']}/{req.route_params['detail']}"
    return answer(req, path)
