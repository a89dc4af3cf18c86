"""Deliver one message to one device: bounded concurrency per provider, retries, auth pauses.

Every call ends in exactly one final outcome (a count key of the notification), whatever the provider
or the network does: adapters never raise, and a belt-and-braces timeout guards against one that hangs.

A provider with a quota shared across apps and replicas (FCM's per project) sends through its scope's
QuotaGate (dispatch/quota.py): a QUOTA_EXCEEDED answer holds back every send of the project, and a configured
limit is kept with permits taken from MongoDB.

Each (app, provider) also has a misconfiguration guard (dispatch/guard.py): when too many of its answers
are errors a wrong setting gives for every token, the provider is paused as after an auth error, and
the chunks running meanwhile keep those devices (see dispatch/settle.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.guard import Change, MisconfigGuard
from pushsvc.dispatch.pace import Pace
from pushsvc.dispatch.quota import QuotaCounter, QuotaGate, merge_quotas
from pushsvc.logs import get_logger, mask_token
from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, Provider, SendResult
from pushsvc.timeouts import FixedTimeouts
from pushsvc.token_kinds import provider_for

log = get_logger(__name__)

# How much longer than its own send timeout an adapter's attempt may take before the sender's guard ends it.
GUARD_MARGIN_SECONDS = 5.0


class SendingStopped(Exception):
    """The work this delivery belongs to may no longer send (its lease is no longer good): no attempt was made."""


@dataclass(frozen=True, slots=True)
class FinalResult:
    delivery: Delivery
    # One of store.counts.FINAL_KEYS.
    outcome: str
    reason: str
    attempts: int
    # invalid_token only: the answer holds for registrations up to this time (epoch seconds): when the
    # request that got it went out, or the provider's own "invalid since" if earlier. A device registered
    # after it is not deactivated (store/devices.py deactivate).
    invalid_as_of: float | None = None
    # invalid_token only: the reason is one a wrong app-wide setting gives for every token
    # (Provider.misconfiguration_reasons); whether it is believed depends on the guard (dispatch/settle.py).
    misconfiguration: bool = False


class _ProviderSlot:
    """Concurrency limit and auth-pause state of one (app, provider)."""

    def __init__(self, provider: Provider, settings: DispatchSettings) -> None:
        self.provider = provider
        self.semaphore = asyncio.Semaphore(settings.concurrency_per_provider)
        self.guard = MisconfigGuard(
            settings.misconfig_guard_share,
            settings.misconfig_guard_window_seconds,
            settings.misconfig_guard_min_answers,
        )
        self.paused_until = 0.0
        self.paused = False
        # Ends the pause (gauge back to 0) on time even when no delivery for this slot comes along.
        self.resume_timer: asyncio.TimerHandle | None = None
        # Metric children used on every delivery, looked up once (.labels() takes a lock and hashes labels).
        name = provider.name
        self.queue_depth = metrics.QUEUE_DEPTH.labels(name)
        self.inflight = metrics.INFLIGHT.labels(name)
        self.end_to_end = {lane: metrics.END_TO_END_LATENCY.labels(name, lane) for lane in metrics.LANES}
        self.guard_trips = metrics.MISCONFIG_GUARD_TRIPS.labels(provider.app_id, name)
        # The quota scope's gate (shared with every app of the scope), if the provider has a quota.
        self.gate: QuotaGate | None = None


class DeliverySender:
    def __init__(
        self,
        providers: Mapping[tuple[str, str], Provider],
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        quota_counter: QuotaCounter | None = None,
    ) -> None:
        """`quota_counter` (store/quotas.py) counts the shared limiters' permits; without one, a configured quota
        limit is not kept (the hold after a quota answer still is)."""
        self._slots = {key: _ProviderSlot(p, settings) for key, p in providers.items()}
        self._settings = settings
        self._clock = clock
        # Adapters bound their own time; this outer limit only catches an adapter bug (_send).
        self._guard = FixedTimeouts(settings.send_timeout_seconds + GUARD_MARGIN_SECONDS)
        self._sleep = sleep
        by_scope: dict[str, list[_ProviderSlot]] = {}
        for slot in self._slots.values():
            if slot.provider.quota is not None:
                by_scope.setdefault(slot.provider.quota.scope, []).append(slot)
        for slots in by_scope.values():
            quota = merge_quotas(slot.provider.quota for slot in slots if slot.provider.quota is not None)
            gate = QuotaGate(quota, quota_counter, clock, sleep)
            for slot in slots:
                slot.gate = gate

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a provider's Retry-After is a floor, never shortened."""
        ceiling = min(
            self._settings.backoff_max_seconds, self._settings.backoff_base_seconds * 2 ** (attempt - 1)
        )
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._settings.backoff_max_seconds * 10))
        return delay

    def now(self) -> float:
        """Epoch seconds on the clock deliveries' expiries are set and judged on (the database's, as estimated:
        a replica's own clock may be off)."""
        return self._clock()

    def misconfig_watch(self, app: str) -> Callable[[str], bool]:
        """Taken before a chunk is sent: the function returned says whether the app's misconfiguration guard
        for a provider was tripped at any moment since (asked when the chunk's results are settled)."""
        since = self._clock()

        def tripped(provider: str) -> bool:
            slot = self._slots.get((app, provider))
            return slot is not None and slot.guard.tripped_since(since)

        return tripped

    async def deliver(
        self,
        delivery: Delivery,
        due_at: float,
        may_send: Callable[[], bool] | None = None,
        *,
        lane: str = "fanout",
        pace: Pace | None = None,
    ) -> FinalResult:
        """Send until a final outcome; cancellation (lease lost, shutdown) always propagates.

        `lane` (of the delivery's notification: batch, fanout, range) labels its end-to-end latency.

        `may_send` is asked right before every attempt; when it says no, SendingStopped is raised and nothing
        reaches the provider (the lease of the work is no longer good: another replica may send it now).
        `pace` (a throttled run's) holds every attempt to its rate.
        """
        provider_name = provider_for(delivery.device.kind)
        slot = self._slots.get((delivery.device.app, provider_name or ""))
        if slot is None:
            return FinalResult(delivery, "rejected", "provider_not_configured", 0)
        try:
            return await self._deliver(slot, delivery, due_at, may_send, lane, pace)
        except SendingStopped:
            raise
        except Exception as exc:
            # Only a bug in this module gets here (adapters never raise). Count the device as failed rather
            # than let the exception escape: it would abort the whole chunk, whose other deliveries run on
            # unobserved, and the chunk would be sent again by whoever resumes the notification.
            log.error(
                "delivery_internal_error",
                notification_id=delivery.notification_id,
                token=mask_token(delivery.device.token),
                error=f"{type(exc).__name__}: {exc}",
            )
            return FinalResult(delivery, "failed", "internal_error", 0)

    async def _deliver(
        self,
        slot: _ProviderSlot,
        delivery: Delivery,
        due_at: float,
        may_send: Callable[[], bool] | None,
        lane: str,
        pace: Pace | None,
    ) -> FinalResult:
        app, name = delivery.device.app, slot.provider.name
        # A dry run changes nothing shared: its answers neither pause the provider nor feed the guard or the
        # error and retry counters that alerts read (its own outcomes are counted by dispatch/settle.py).
        live = not delivery.options.dry_run
        attempt = 0
        while True:
            attempt += 1
            if pace is None:
                result, sent_at = await self._attempt(slot, delivery, may_send)
            else:  # a throttled run's pace holds every attempt to its rate (dispatch/pace.py)
                async with pace.permit():
                    result, sent_at = await self._attempt(slot, delivery, may_send)
            reason = result.reason or "unknown"
            if live and result.outcome is not Outcome.DELIVERED:
                metrics.DELIVERY_ERRORS.labels(app, name, reason).inc()
            final = self._final_answer(slot, delivery, result, sent_at, attempt, (due_at, lane))
            if final is not None:
                return final
            if result.outcome is Outcome.AUTH_ERROR and live:
                self._pause(slot, reason)
            # The project is over its quota: every send of it waits (in _attempt), this one's retry included.
            # A dry run's answer too: validate_only requests count against the same quota.
            held = slot.gate if slot.gate is not None and slot.gate.is_quota_answer(reason) else None
            if held is not None:
                held.hold(result.retry_after)
            if attempt >= self._settings.max_attempts:
                final = "auth_error" if result.outcome is Outcome.AUTH_ERROR else "failed"
                log.warning(
                    "delivery_failed",
                    notification_id=delivery.notification_id,
                    token=mask_token(delivery.device.token),
                    provider=name,
                    outcome=final,
                    reason=reason,
                    attempts=attempt,
                )
                return FinalResult(delivery, final, reason, attempt)
            delay = self.backoff(attempt, result.retry_after) if result.outcome is Outcome.RETRYABLE else 0.0
            if held is not None:
                # The hold is the wait (its Retry-After included): no backoff of its own on top.
                delay = 0.0
            waits = held.remaining() if held is not None else delay
            if self._expires_within(delivery, waits):
                # The provider would drop it on arrival anyway (TTL passed): stop here, with the reason.
                return self._expired(delivery, name, reason, attempt)
            if live:
                metrics.RETRIES.labels(app, name, reason).inc()
            if delay:
                # An auth error needs no backoff: the next attempt waits for the end of the pause.
                await self._sleep(delay)
                if self._expires_within(delivery, 0.0):  # a busy loop woke the sleep late, past the expiry
                    return self._expired(delivery, name, reason, attempt)

    def _expires_within(self, delivery: Delivery, seconds: float) -> bool:
        return delivery.expires_at is not None and self._clock() + seconds >= delivery.expires_at

    @staticmethod
    def _expired(delivery: Delivery, provider: str, last_reason: str, attempts: int) -> FinalResult:
        log.info("delivery_expired", notification_id=delivery.notification_id,
                 token=mask_token(delivery.device.token), provider=provider, last_reason=last_reason)
        return FinalResult(delivery, "failed", "expired", attempts)

    def _final_answer(
        self, slot: _ProviderSlot, delivery: Delivery, result: SendResult, sent_at: float, attempt: int,
        due: tuple[float, str],
    ) -> FinalResult | None:
        """An answer that ends the delivery at once (delivered, validated, invalid token, rejected); None: one
        that may be tried again. `due`: when the push was due and its lane, for the end-to-end latency."""
        reason = result.reason or "unknown"
        if result.outcome is Outcome.DELIVERED:
            if delivery.options.dry_run:
                return FinalResult(delivery, "validated", "", attempt)
            due_at, lane = due
            slot.end_to_end[lane].observe(max(0.0, self._clock() - due_at))
            return FinalResult(delivery, "delivered", "", attempt)
        if result.outcome is Outcome.INVALID_TOKEN:
            as_of = sent_at if result.invalid_since is None else min(sent_at, result.invalid_since)
            misconfiguration = reason in slot.provider.misconfiguration_reasons
            return FinalResult(delivery, "invalid_token", reason, attempt, as_of, misconfiguration)
        if result.outcome is Outcome.REJECTED:
            return FinalResult(delivery, "rejected", reason, attempt)
        return None

    async def _attempt(
        self, slot: _ProviderSlot, delivery: Delivery, may_send: Callable[[], bool] | None
    ) -> tuple[SendResult, float]:
        """One request to the provider, once neither a pause nor the concurrency limit holds it back.

        Returns its result and when it went out (epoch seconds, by the sender's clock)."""
        while True:
            await self._wait_while_paused(slot)
            if slot.semaphore.locked():
                slot.queue_depth.inc()
                try:
                    await slot.semaphore.acquire()
                finally:  # also when cancelled while queued: the gauge must not leak
                    slot.queue_depth.dec()
            else:
                # A free slot is taken without yielding, so no scrape could see the delivery queued: not counted.
                await slot.semaphore.acquire()
            try:
                if slot.gate is not None:
                    # After the semaphore: a permit is good only in its slice of time, so it is taken right
                    # before the request goes out. The deliveries waiting here are all of the gate's scope.
                    await slot.gate.admit()
                if slot.paused_until > self._clock():
                    # The provider was paused while this delivery queued for a slot: nothing may reach it
                    # during a pause, so give the slot back and wait for the pause to end.
                    continue
                if may_send is not None and not may_send():
                    raise SendingStopped
                return await self._send(slot, delivery)
            finally:
                slot.semaphore.release()

    async def _send(self, slot: _ProviderSlot, delivery: Delivery) -> tuple[SendResult, float]:
        name = slot.provider.name
        slot.inflight.inc()
        sent_at = self._clock()
        started = time.perf_counter()
        # Adapters bound their own time; this outer limit only catches an adapter bug. Like asyncio.timeout
        # (unlike wait_for on 3.11) it never swallows a cancellation that races with the adapter's answer, and
        # it waits for the cancelled adapter call to unwind, so a timed-out attempt can't answer later.
        guard = self._guard.bound()
        try:
            with guard:
                if delivery.options.dry_run:
                    # Built and checked, not delivered (FCM asks its validate_only check; the others call no one).
                    result = await slot.provider.validate(delivery)
                else:
                    result = await slot.provider.send(delivery)
        except TimeoutError:
            if guard.expired():
                log.error("provider_send_overran", provider=name, app=slot.provider.app_id)
                result = SendResult(Outcome.RETRYABLE, "timeout")
            else:  # the adapter let its own TimeoutError escape
                log.error("provider_raised", provider=name, error="TimeoutError")
                result = SendResult(Outcome.RETRYABLE, "adapter_error")
        except Exception as exc:  # an adapter must not raise; if one does, retry rather than lose the delivery
            log.error("provider_raised", provider=name, error=type(exc).__name__)
            result = SendResult(Outcome.RETRYABLE, "adapter_error")
        finally:
            slot.inflight.dec()
        metrics.child(metrics.PROVIDER_LATENCY, name, str(result.outcome)).observe(time.perf_counter() - started)
        if result.status is not None and not delivery.options.dry_run:  # the provider answered (not a timeout,
            self._watch(slot, result)  # nor a request refused locally); a dry run's answers judge nothing
        return result, sent_at

    def _watch(self, slot: _ProviderSlot, result: SendResult) -> None:
        """Feed the misconfiguration guard one answer; pause the provider while it is tripped."""
        suspect = result.outcome is Outcome.INVALID_TOKEN and result.reason in slot.provider.misconfiguration_reasons
        now = self._clock()
        change = slot.guard.record(now, suspect)
        if change is Change.TRIPPED:
            slot.guard_trips.inc()
            log.error(
                "misconfig_guard_tripped",
                app=slot.provider.app_id,
                provider=slot.provider.name,
                reason=result.reason,
                answers=slot.guard.answers,
                suspect_answers=slot.guard.suspect,
                window_seconds=slot.guard.window_seconds,
            )
            self._pause(slot, result.reason)
        elif change is Change.STILL_TRIPPED and slot.paused_until <= now:
            # The pause is over and the setting is still wrong: pause again rather than send on.
            self._pause(slot, result.reason)
        elif change is Change.CLEARED:
            log.info("misconfig_guard_cleared", app=slot.provider.app_id, provider=slot.provider.name,
                     answers=slot.guard.answers, suspect_answers=slot.guard.suspect)

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
        if slot.resume_timer is not None:
            slot.resume_timer.cancel()
        slot.resume_timer = asyncio.get_running_loop().call_later(
            slot.paused_until - now, self._end_pause, slot
        )

    def _end_pause(self, slot: _ProviderSlot) -> None:
        """Timer callback at the end of a pause (re-armed if the pause was extended meanwhile)."""
        slot.resume_timer = None
        remaining = slot.paused_until - self._clock()
        if remaining > 0:
            slot.resume_timer = asyncio.get_running_loop().call_later(remaining, self._end_pause, slot)
            return
        self._resume(slot)

    def _resume(self, slot: _ProviderSlot) -> None:
        if slot.paused:
            slot.paused = False
            metrics.PROVIDER_PAUSED.labels(slot.provider.app_id, slot.provider.name).set(0)
            log.info("provider_resumed", app=slot.provider.app_id, provider=slot.provider.name)

    async def _wait_while_paused(self, slot: _ProviderSlot) -> None:
        while (remaining := slot.paused_until - self._clock()) > 0:
            await self._sleep(min(remaining, 1.0))
        self._resume(slot)
