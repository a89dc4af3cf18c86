"""Deliver one message to one device: bounded concurrency per provider, retries, auth pauses.

Every call ends in exactly one final outcome (a count key of the notification), whatever the provider
or the network does: adapters never raise, and a belt-and-braces timeout guards against one that hangs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.logging import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, Provider, SendResult

log = get_logger(__name__)

PROVIDER_FOR_PLATFORM = {"ios": "apns", "android": "fcm"}


@dataclass(frozen=True, slots=True)
class FinalResult:
    delivery: Delivery
    # One of store.notifications.FINAL_KEYS.
    outcome: str
    reason: str
    attempts: int


class _ProviderSlot:
    """Concurrency limit and auth-pause state of one (app, provider)."""

    def __init__(self, provider: Provider, concurrency: int) -> None:
        self.provider = provider
        self.semaphore = asyncio.Semaphore(concurrency)
        self.paused_until = 0.0
        self.paused = False


class DeliverySender:
    def __init__(
        self,
        providers: Mapping[tuple[str, str], Provider],
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._slots = {
            key: _ProviderSlot(p, settings.concurrency_per_provider) for key, p in providers.items()
        }
        self._settings = settings
        self._clock = clock
        self._sleep = sleep

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a provider's Retry-After is a floor, never shortened."""
        ceiling = min(
            self._settings.backoff_max_seconds, self._settings.backoff_base_seconds * 2 ** (attempt - 1)
        )
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._settings.backoff_max_seconds * 10))
        return delay

    async def deliver(self, delivery: Delivery, due_at: float) -> FinalResult:
        provider_name = PROVIDER_FOR_PLATFORM.get(delivery.device.platform)
        slot = self._slots.get((delivery.device.app, provider_name or ""))
        if slot is None:
            return FinalResult(delivery, "rejected", "provider_not_configured", 0)
        app = delivery.device.app
        attempt = 0
        while True:
            attempt += 1
            await self._wait_while_paused(slot)
            result = await self._attempt(slot, delivery)
            if result.outcome is Outcome.DELIVERED:
                metrics.END_TO_END_LATENCY.labels(slot.provider.name).observe(
                    max(0.0, self._clock() - due_at)
                )
                return FinalResult(delivery, "delivered", "", attempt)
            metrics.DELIVERY_ERRORS.labels(app, slot.provider.name, result.reason or "unknown").inc()
            if result.outcome in (Outcome.INVALID_TOKEN, Outcome.REJECTED):
                return FinalResult(delivery, str(result.outcome), result.reason, attempt)
            if result.outcome is Outcome.AUTH_ERROR:
                self._pause(slot, result.reason)
            if attempt >= self._settings.max_attempts:
                final = "auth_error" if result.outcome is Outcome.AUTH_ERROR else "failed"
                log.warning(
                    "delivery_failed",
                    notification_id=delivery.notification_id,
                    token=mask_token(delivery.device.token),
                    provider=slot.provider.name,
                    reason=result.reason,
                    attempts=attempt,
                )
                return FinalResult(delivery, final, result.reason, attempt)
            metrics.RETRIES.labels(app, slot.provider.name, result.reason or "unknown").inc()
            if result.outcome is Outcome.RETRYABLE:
                await self._sleep(self.backoff(attempt, result.retry_after))

    async def _attempt(self, slot: _ProviderSlot, delivery: Delivery) -> SendResult:
        name = slot.provider.name
        metrics.QUEUE_DEPTH.labels(name).inc()
        async with slot.semaphore:
            metrics.QUEUE_DEPTH.labels(name).dec()
            metrics.INFLIGHT.labels(name).inc()
            started = time.perf_counter()
            try:
                # Adapters bound their own time; this outer limit only catches an adapter bug.
                result = await asyncio.wait_for(
                    slot.provider.send(delivery), self._settings.send_timeout_seconds + 5.0
                )
            except TimeoutError:
                result = SendResult(Outcome.RETRYABLE, "timeout")
            except (
                Exception
            ) as exc:  # an adapter must not raise; if one does, retry rather than lose the delivery
                log.error("provider_raised", provider=name, error=type(exc).__name__)
                result = SendResult(Outcome.RETRYABLE, "adapter_error")
            finally:
                metrics.INFLIGHT.labels(name).dec()
        metrics.PROVIDER_LATENCY.labels(name, str(result.outcome)).observe(time.perf_counter() - started)
        return result

    def _pause(self, slot: _ProviderSlot, reason: str) -> None:
        now = self._clock()
        if slot.paused_until <= now:
            log.error(
                "provider_paused",
                app=slot.provider.app_id,
                provider=slot.provider.name,
                reason=reason,
                seconds=self._settings.auth_pause_seconds,
            )
        slot.paused_until = max(slot.paused_until, now + self._settings.auth_pause_seconds)
        slot.paused = True
        metrics.PROVIDER_PAUSED.labels(slot.provider.app_id, slot.provider.name).set(1)

    async def _wait_while_paused(self, slot: _ProviderSlot) -> None:
        while (remaining := slot.paused_until - self._clock()) > 0:
            await self._sleep(min(remaining, 1.0))
        if slot.paused:
            slot.paused = False
            metrics.PROVIDER_PAUSED.labels(slot.provider.app_id, slot.provider.name).set(0)
