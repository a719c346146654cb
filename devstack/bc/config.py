"""Settings of the BC sandbox. Defaults are the real service's values (webhooks and limits:
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions,
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/administration/operational-limits-online);
tests shrink the windows and limits, at construction or at runtime through `/_sandbox/`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Bearer token -> BC user. `admin-user` is a SUPER user: `bcsync setup --admin-bc-token admin-user`.
DEFAULT_USERS = {"integration-user": "INTEGRATION", "sales-user": "SALES", "admin-user": "ADMIN"}

# BC retries failed deliveries "several times over 36 hours":
# https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions
DEFAULT_RETRY_DELAYS = (60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 12 * 3600.0)


@dataclass
class BcSandboxConfig:
    tenant: str = "contoso"
    environment: str = "production"
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))  # bearer token -> user
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
    retry_delays_seconds: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    subscription_lifetime_seconds: float = 3 * 24 * 3600.0
    max_subscriptions: int = 200
    allowed_webhook_hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})

    @classmethod
    def for_tests(cls, **overrides: object) -> BcSandboxConfig:
        """Real behaviour on a compressed schedule: 50 ms coalescing, fast retries."""
        values: dict[str, object] = {
            "coalesce_seconds": 0.05,
            "retry_delays_seconds": (0.05, 0.05, 0.05),
            "handshake_timeout_seconds": 2.0,
            "delivery_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
