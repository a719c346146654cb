"""Configuration of the Dataverse sandbox: organisation, users and the service-protection limits.

Defaults are the real service's values (service protection limits:
https://learn.microsoft.com/power-apps/developer/data-platform/api-limits); tests shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ORGANIZATION_ID = "5e3b1a44-0d0c-4c8e-8c6b-1a2b3c4d5e6f"
ROOT_BUSINESS_UNIT_ID = "d2c3a8f0-5a1b-4b7e-9f00-000000000b01"
INTEGRATION_USER_ID = "a1b2c3d4-0000-4000-8000-000000000001"
SALES_USER_ID = "a1b2c3d4-0000-4000-8000-000000000002"
ADMIN_USER_ID = "ad300000-0000-4000-8000-000000000001"
USD_CURRENCY_ID = "c0ffee00-0000-4000-8000-0000000000d1"
EUR_CURRENCY_ID = "c0ffee00-0000-4000-8000-0000000000e1"
DEFAULT_UOM_SCHEDULE_ID = "0b0e0000-0000-4000-8000-00000000005c"
PRIMARY_UNIT_ID = "0b0e0000-0000-4000-8000-0000000000b1"
DEFAULT_PRICE_LEVEL_ID = "9a1ce000-0000-4000-8000-000000000001"


@dataclass
class SandboxUser:
    """A caller the sandbox accepts: `Authorization: Bearer <token>` acts as this systemuser."""

    token: str
    systemuserid: str
    fullname: str
    internalemailaddress: str = ""
    domainname: str = ""
    azureactivedirectoryobjectid: str | None = None
    applicationid: str | None = None  # set for application (service principal) users
    isdisabled: bool = False
    islicensed: bool = True
    isintegrationuser: bool = False
    mobilephone: str | None = None
    businessunitid: str = ROOT_BUSINESS_UNIT_ID

    def as_row(self) -> dict[str, object]:
        first, _, last = self.fullname.partition(" ")
        return {
            "systemuserid": self.systemuserid,
            "fullname": self.fullname,
            "firstname": first,
            "lastname": last or None,
            "internalemailaddress": self.internalemailaddress or None,
            "domainname": self.domainname or self.internalemailaddress or None,
            "azureactivedirectoryobjectid": self.azureactivedirectoryobjectid,
            "applicationid": self.applicationid,
            "isdisabled": self.isdisabled,
            "islicensed": self.islicensed,
            "isintegrationuser": self.isintegrationuser,
            "accessmode": 4 if self.applicationid else 0,
            "mobilephone": self.mobilephone,
            "_businessunitid_value": self.businessunitid,
        }


def default_users() -> list[SandboxUser]:
    return [
        SandboxUser(
            token="integration-user",
            systemuserid=INTEGRATION_USER_ID,
            fullname="# BC Sync Integration",
            internalemailaddress="bcsync-integration@sandbox.example",
            azureactivedirectoryobjectid="7b1f9c2e-0000-4000-8000-00000000a001",
            applicationid="0a5c1e55-0000-4000-8000-00000000a9a1",
            islicensed=False,
        ),
        SandboxUser(
            token="sales-user",
            systemuserid=SALES_USER_ID,
            fullname="Alex Seller",
            internalemailaddress="alex.seller@sandbox.example",
            azureactivedirectoryobjectid="7b1f9c2e-0000-4000-8000-00000000a002",
            mobilephone="+1 555 0100",
        ),
        # A System Administrator: `bcsync setup --admin-dataverse-token admin-user` registers the
        # webhook with it, as an administrator signs in for set-up on a real environment.
        SandboxUser(
            token="admin-user",
            systemuserid=ADMIN_USER_ID,
            fullname="Dana Admin",
            internalemailaddress="dana.admin@sandbox.example",
            azureactivedirectoryobjectid="7b1f9c2e-0000-4000-8000-00000000a003",
        ),
    ]


@dataclass
class DataverseSandboxConfig:
    org_name: str = "bcsyncdev"
    organization_id: str = ORGANIZATION_ID
    business_unit_id: str = ROOT_BUSINESS_UNIT_ID
    users: list[SandboxUser] = field(default_factory=default_users)
    # Service protection, per user over a sliding window:
    # https://learn.microsoft.com/power-apps/developer/data-platform/api-limits
    max_requests: int = 6000
    window_seconds: float = 300.0
    max_execution_ms: float = 1_200_000.0
    max_concurrent: int = 52
    # Execution time a bulk action is charged per record in `Targets`, on top of its CPU time
    # (docs/limits.md#dataverse-bulk-operations): Microsoft's bulk operation samples report 100 records
    # created in 1 s, updated in 3 s and upserted in 2 s with CreateMultiple / UpdateMultiple /
    # UpsertMultiple (github.com/microsoft/PowerApps-Samples, dataverse/orgsvc/C#-NETCore/BulkOperations).
    create_multiple_ms_per_record: float = 10.0
    update_multiple_ms_per_record: float = 30.0
    upsert_multiple_ms_per_record: float = 20.0
    # Paging and batches (docs/dataverse-sandbox.md#sources).
    max_page_size: int = 5000
    max_batch_requests: int = 1000
    # Change tracking tokens expire after ExpireChangeTrackingInDays (default 7).
    change_tracking_expiry_days: float = 7.0
    # Webhooks: 60 s timeout, 256 KB payload rule.
    # https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks
    webhook_timeout_seconds: float = 60.0
    webhook_max_payload_bytes: int = 256 * 1024
    webhook_workers: int = 4
    # A BulkDelete job waits this long (sandbox clock) before it runs; real jobs wait for the
    # asynchronous service, typically seconds to minutes.
    bulk_delete_delay_seconds: float = 5.0
    # An ImportSolutionAsync job waits this long (sandbox clock) before it runs; real imports take
    # from seconds to minutes depending on the solution.
    solution_import_delay_seconds: float = 5.0
    # The bulk operation messages (CreateMultiple, UpdateMultiple, UpsertMultiple) exist online only;
    # False answers them as Dynamics 365 Sales / Customer Engagement on-premises 9.1 does: 404
    # "Resource not found for the segment" (docs/dataverse-sandbox.md#on-premises-without-bulk-messages).
    bulk_messages: bool = True
    # Seed currencies, the default unit schedule and price list so `create_app()` is ready to use.
    seed_reference_data: bool = True

    @property
    def domain(self) -> str:
        return f"{self.org_name}.crm.dynamics.com"
