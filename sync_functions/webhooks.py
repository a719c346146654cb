"""HTTP webhooks from Dataverse and Business Central. They keep their own secrets (anonymous auth
level; never a bearer token), answer fast, and only enqueue."""

import logging

import azure.functions as func

from shared.feeds.intake import WebhookAnswer
from shared.feeds.webhooks import receive_bc_webhook, receive_dataverse_webhook

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _respond(answer: WebhookAnswer) -> func.HttpResponse:
    headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after else None
    return func.HttpResponse(
        answer.body, status_code=answer.status, mimetype=answer.content_type, headers=headers
    )


@bp.route(route="webhooks/dataverse", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    answer = receive_dataverse_webhook(dict(req.headers), dict(req.params), req.get_body())
    return _respond(answer)


# BC's handshake method is not documented: accept POST and GET.
# https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions
@bp.route(route="webhooks/bc", methods=["POST", "GET"], auth_level=func.AuthLevel.ANONYMOUS)
def bc_webhook(req: func.HttpRequest) -> func.HttpResponse:
    answer = receive_bc_webhook(dict(req.params), req.get_body())
    return _respond(answer)
