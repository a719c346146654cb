"""The Function App: create it and register the blueprints. Nothing else belongs here."""

import azure.functions as func

from sync_functions import health, processor, webhooks

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health.bp, webhooks.bp, processor.bp):
    app.register_functions(blueprint)
