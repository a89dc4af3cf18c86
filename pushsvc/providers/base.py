"""The one interface every provider adapter implements, and the classified result it returns.

Adapters make exactly one attempt per ``send`` call and never raise for provider or transport
problems: every attempt ends in one SendResult. Retrying, pausing and counting live in dispatch/.
"""

from __future__ import annotations

import abc
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pushsvc.model import Message, Options, Outcome, Recipient
from pushsvc.timeouts import FixedTimeouts


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one device."""

    notification_id: str
    device: Recipient
    message: Message
    options: Options
    # Absolute expiry (epoch seconds): the send plus options.ttl_seconds; None = provider default.
    expires_at: float | None = None
    # A campaign's A/B variant this device was assigned (model/variants.py): `message` is that variant's.
    # Adapters that cache what they build per notification keep variants apart by it.
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    # Provider reason code ("BadDeviceToken", "UNREGISTERED", "timeout", "connection_error", ...); "" when delivered.
    reason: str = ""
    status: int | None = None
    # Seconds the provider asked us to wait (Retry-After), if it said so.
    retry_after: float | None = None
    # apns-id or FCM message name, for tracing a delivery at the provider.
    provider_id: str | None = None
    # For an invalid token: when the provider last confirmed it invalid (epoch seconds; APNs sends it with a
    # 410). A device registered after that time is not deactivated. None: the provider did not say.
    invalid_since: float | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    """A provider request as a dry run shows it: headers (no credentials) and the JSON body before any
    encryption (Web Push encrypts it per subscription)."""

    headers: Mapping[str, str]
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProviderQuota:
    """A provider's rate quota that every sender of one scope shares (FCM: the Firebase project), and what the
    sender does about it (dispatch/quota.py): every app whose provider names the same scope is held back together.
    """

    # What the quota counts against, e.g. "fcm:<project id>": apps sharing a project share one limiter and hold.
    scope: str
    # Requests per window all replicas together may make (a shared limiter in MongoDB); None: no limiter, only
    # the hold below.
    limit: int | None
    window_seconds: float
    # The least time a quota answer holds every send of the scope back (a longer Retry-After wins).
    backoff_seconds: float
    # The answers (SendResult.reason) that say the scope is over its quota.
    reasons: frozenset[str]


class PayloadRejected(ValueError):
    """The provider would refuse this payload whatever the device (too large, a field it forbids)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Provider(abc.ABC):
    """A push provider for one app (e.g. APNs with that app's key and topic)."""

    name: ClassVar[str]
    # Invalid-token reasons a wrong app-wide setting (environment, topic, project) gives for every token:
    # the sender's misconfiguration guard watches their share (dispatch/guard.py) before any is believed.
    misconfiguration_reasons: ClassVar[frozenset[str]] = frozenset()
    # The quota this app's sends count against, if the provider has one worth sharing across replicas (FCM's
    # per-project rate): set by the adapter from its settings.
    quota: ProviderQuota | None = None

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or fetch credentials ahead of the first send."""

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> SendResult:
        """One attempt; bounded by the adapter's own timeout; never raises for provider/transport errors."""

    @abc.abstractmethod
    def render(self, delivery: Delivery) -> Rendered:
        """What `send` would put on the wire for this delivery, for a dry run and a campaign's preview: the
        provider's request headers and body, without credentials (no authorization header, no device
        secret). Raises PayloadRejected (with the provider's reason) when the provider would refuse the
        payload itself, e.g. too large; never contacts the provider."""

    async def validate(self, delivery: Delivery) -> SendResult:
        """A dry run's attempt (options.dry_run): the payload built and checked for this device, nothing
        delivered. DELIVERED means valid. Providers that offer a server-side check (FCM's validate_only)
        override this to ask it; the others check locally and never call out."""
        try:
            self.render(delivery)
        except PayloadRejected as exc:
            return SendResult(Outcome.REJECTED, exc.reason)
        return SendResult(Outcome.DELIVERED)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


async def bounded_attempt(
    attempt: Awaitable[SendResult], timeouts: FixedTimeouts, on_error: Callable[[Exception], None]
) -> SendResult:
    """One attempt within the provider's send timeout (`timeouts`: its bounds, one timer between them), never
    raising: a timeout is RETRYABLE "timeout"; any other exception (a bug or an unforeseen library error, which
    must not kill the dispatcher) is reported to `on_error` and becomes RETRYABLE "client_error"."""
    try:
        with timeouts.bound():
            return await attempt
    except TimeoutError:
        return SendResult(Outcome.RETRYABLE, "timeout")
    except Exception as exc:
        on_error(exc)
        return SendResult(Outcome.RETRYABLE, "client_error")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delta-seconds or HTTP-date; None when absent or unusable (never raises).

    float() also reads "inf" and "nan", which are no delay at all: None, like any other unreadable value.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
