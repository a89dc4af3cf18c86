"""The one interface every provider adapter implements, and the classified result it returns.

Adapters make exactly one attempt per ``send`` call and never raise for provider or transport
problems: every attempt ends in one SendResult. Retrying, pausing and counting live in dispatch/.
"""

from __future__ import annotations

import abc
import email.utils
import math
import time
from dataclasses import dataclass
from typing import ClassVar

from pushsvc.model import Device, Message, Options, Outcome


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one device."""

    notification_id: str
    device: Device
    message: Message
    options: Options
    # Absolute expiry (epoch seconds) derived from options.ttl_seconds and the request time; None = provider default.
    expires_at: float | None = None


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


class Provider(abc.ABC):
    """A push provider for one app (e.g. APNs with that app's key and topic)."""

    name: ClassVar[str]
    # Invalid-token reasons a wrong app-wide setting (environment, topic, project) gives for every token:
    # the sender's misconfiguration guard watches their share (dispatch/guard.py) before any is believed.
    misconfiguration_reasons: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or fetch credentials ahead of the first send."""

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> SendResult:
        """One attempt; bounded by the adapter's own timeout; never raises for provider/transport errors."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


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
