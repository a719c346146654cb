"""Settings of the BC sandbox. Defaults are the real service's values (webhooks and limits:
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/administration/operational-limits-online);
tests shrink the windows and limits, at construction or at runtime through `/_sandbox/`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Bearer token -> BC user. `admin-user` is a SUPER user: `bcsync setup --admin-bc-token admin-user`.
DEFAULT_USERS = {"integration-user": "INTEGRATION", "sales-user": "SALES", "admin-user": "ADMIN"}

# BC's GetDelayTimeForAttempt (APIWebhookNotificationSend.Codeunit.al, microsoft/BCApps): after the
# 1st, 2nd, ... failed attempt the next one is 1, 1, 10, 100, 1000 minutes later; when the 6th
# attempt fails (attempt number > GetMaxNumberOfAttempts() = 5) the subscription is deleted. About
# 18.5 hours in all; the docs' "several times over 36 hours" is not what the code does.
DEFAULT_RETRY_DELAYS = (60.0, 60.0, 600.0, 6000.0, 60000.0)


@dataclass
class BcSandboxConfig:
    tenant: str = "contoso"
    environment: str = "production"
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))  # bearer token -> user
    # On-premises basic authentication: user name -> (web service access key, BC user). Empty: none
    # accepted, as BC online (access keys are not supported there since 2022).
    web_service_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    sample_data: bool = True  # a couple of customers and items besides the reference data

    max_page_size: int = 20_000
    max_batch_operations: int = 100

    requests_per_window: int = 6000
    window_seconds: float = 300.0
    max_concurrent: int = 5
    max_queue: int = 95
    queue_timeout_seconds: float = 480.0

    coalesce_seconds: float = 30.0
    collection_threshold: int = 1000
    handshake_timeout_seconds: float = 5.0
    delivery_timeout_seconds: float = 10.0
    # A failed POST is retried after each delay; when the attempt after the last delay fails too,
    # the subscriptions of that POST are deleted.
    retry_delays_seconds: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    # How much earlier than the record's lastModifiedDateTime a notification is stamped (BC takes
    # CurrentDateTime() in OnDatabaseModify, before the platform sets SystemModifiedAt; the real gap
    # is a few ms, its exact size is not documented).
    notification_lead_ms: int = 3
    # IsNullUpdate's NullUpdateTreshold: an update whose record was not modified after stamp - 2 s
    # is not sent.
    null_update_threshold_ms: int = 2000
    subscription_lifetime_seconds: float = 3 * 24 * 3600.0
    max_subscriptions: int = 200
    allowed_webhook_hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})

    @classmethod
    def for_tests(cls, **overrides: object) -> BcSandboxConfig:
        """Real behaviour on a compressed schedule: 50 ms coalescing, BC's 5 retries 50 ms apart."""
        values: dict[str, object] = {
            "coalesce_seconds": 0.05,
            "retry_delays_seconds": (0.05, 0.05, 0.05, 0.05, 0.05),
            "handshake_timeout_seconds": 2.0,
            "delivery_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
