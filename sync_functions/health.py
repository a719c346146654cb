import json

import azure.functions as func

from shared.ops.health import check_health

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    status, report = check_health()
    return func.HttpResponse(json.dumps(report), status_code=status, mimetype="application/json")
