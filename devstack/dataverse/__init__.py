"""A local Dataverse Web API (v9.2) sandbox: see docs/dataverse-sandbox.md."""

from devstack.dataverse.app import create_app
from devstack.dataverse.config import DataverseSandboxConfig, SandboxUser
from devstack.dataverse.sandbox import DataverseSandbox

__all__ = ["DataverseSandbox", "DataverseSandboxConfig", "SandboxUser", "create_app"]
