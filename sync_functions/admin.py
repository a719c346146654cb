"""The admin API (`/api/manage/...`): anonymous at the Functions level, because the service checks
the caller's Entra ID token and app role itself (`shared.admin_api`). The dev host has no catch-all
routes, so one function per path depth."""

import azure.functions as func

from shared.admin_api import ApiRequest, ApiResponse, handle

bp = func.Blueprint()


def _respond(answer: ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        answer.text(), status_code=answer.status, headers=answer.headers, mimetype="application/json"
    )


def _request(req: func.HttpRequest, path: str) -> ApiRequest:
    return ApiRequest(req.method, path, dict(req.params), dict(req.headers), req.get_body())


@bp.route(route="manage/{action}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage_action(req: func.HttpRequest) -> func.HttpResponse:
    return _respond(handle(_request(req, f"manage/{req.route_params['action']}")))


@bp.route(route="manage/{action}/{detail}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def manage_detail(req: func.HttpRequest) -> func.HttpResponse:
    path = f"manage/{req.route_params['action']}/{req.route_params['detail']}"
    return _respond(handle(_request(req, path)))
