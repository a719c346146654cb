"""The Function App: create it and register the blueprints. Nothing else belongs here."""

import azure.functions as func

from sync_functions import admin, health, processor, products, statistics, timers, webhooks

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health.bp, webhooks.bp, processor.bp, timers.bp, admin.bp, products.bp, statistics.bp):
    app.register_functions(blueprint)
