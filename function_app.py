"""The Function App: check the configuration, create the app and register the blueprints.

The check runs at import, while the Functions host indexes the app: invalid settings or a broken
mapping file raise `StartupError`, whose one message lists every problem. The Python worker then
reports the indexing failure with that message and the host registers no function at all, instead
of starting "healthy" with webhooks that all answer 503 (README, Configuration).
"""

import azure.functions as func

from shared.startup import check_startup
from sync_functions import admin, health, processor, products, statistics, timers, webhooks

check_startup()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health.bp, webhooks.bp, processor.bp, timers.bp, admin.bp, products.bp, statistics.bp):
    app.register_functions(blueprint)
