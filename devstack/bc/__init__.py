"""Business Central API v2.0 sandbox: `create_app(config)` returns the ASGI app.

See `docs/bc-sandbox.md` for URLs, users, the default company and the `/_sandbox/` control surface.
"""

from devstack.bc.app import create_app
from devstack.bc.config import BcSandboxConfig
from devstack.bc.sandbox import BcSandbox
from devstack.bc.seed_data import DEFAULT_COMPANY_ID, SECOND_COMPANY_ID

__all__ = ["DEFAULT_COMPANY_ID", "SECOND_COMPANY_ID", "BcSandbox", "BcSandboxConfig", "create_app"]
