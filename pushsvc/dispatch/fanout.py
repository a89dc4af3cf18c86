"""Work one claimed notification: resolve its devices chunk by chunk, deliver, record progress.

Progress (cursor + counters) is saved atomically after each chunk while the lease is held, so a crash
or a lost lease repeats at most the chunk that was in flight; a lease heartbeat keeps long chunks owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import orjson

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.chunks import ChunkWorker
from pushsvc.logging import get_logger
from pushsvc.model import NotificationState, PushRequest, RequestError, parse_request
from pushsvc.outcomes import OutcomePublisher
from pushsvc.scheduling.due import next_ready_at, quiet_from_doc, ready_zones
from pushsvc.store.notifications import FINAL_KEYS, PAUSED, NotificationStore

log = get_logger(__name__)


class LeaseLost(Exception):
    """Another replica owns the notification now; stop without touching it."""


class _Throttle:
    """At most `rate` deliveries per second for one run (only the lease holder sends, so per-run is enough)."""

    def __init__(self, rate: float | None, stopping: asyncio.Event) -> None:
        self._rate = rate
        self._stopping = stopping
        self._start = time.monotonic()
        self._sent = 0

    async def wait(self) -> None:
        if not self._rate or not self._sent:
            return
        delay = self._start + self._sent / self._rate - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def sent(self, count: int) -> None:
        self._sent += count


def progress_ratio(doc: dict) -> float:
    """Share of the audience with a final outcome (the audience estimate is counted at campaign creation)."""
    counts = doc.get("counts") or {}
    finished = sum(int(counts.get(k, 0)) for k in FINAL_KEYS)
    total = max(int(doc.get("audience_estimate") or 0), int(counts.get("targeted", 0)), 1)
    return min(1.0, finished / total)


class NotificationRunner:
    def __init__(
        self,
        notifications: NotificationStore,
        chunks: ChunkWorker,
        outcomes: OutcomePublisher,
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifications = notifications
        self._chunks = chunks
        self._outcomes = outcomes
        self._settings = settings
        self._clock = clock
        self._stopping = asyncio.Event()
        # Per running notification: set once the run itself gives its lease up (see _heartbeat).
        self._released: dict[str, asyncio.Event] = {}

    def stop(self) -> None:
        """Draining: every run stops after its current chunk, saving its cursor and releasing the lease."""
        self._stopping.set()

    async def run(self, doc: dict, owner: str) -> None:
        notification_id = doc["_id"]
        try:
            request = parse_request(orjson.loads(doc["request"]))
        except (RequestError, orjson.JSONDecodeError) as exc:
            # Recorded requests were validated at ingest; this only happens after an incompatible upgrade.
            await self._finish(doc, owner, NotificationState.FAILED, f"stored request unreadable: {exc}")
            return
        released = self._released[notification_id] = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(notification_id, owner, released))
        work = asyncio.create_task(self._work(doc, request, owner))
        try:
            done, _ = await asyncio.wait({heartbeat, work}, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                    await work
                log.warning("lease_lost", notification_id=notification_id)
            else:
                work.result()
        except LeaseLost:
            log.warning("lease_lost", notification_id=notification_id)
        finally:
            self._released.pop(notification_id, None)
            heartbeat.cancel()
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await heartbeat

    async def _heartbeat(self, notification_id: str, owner: str, released: asyncio.Event) -> None:
        """Renew the lease; return only if it was lost to someone else (that cancels the work).

        Once the work itself drops the lease (finish, release, reschedule) a failed renewal is expected:
        the heartbeat then just waits to be cancelled, so the work can publish its outcome undisturbed.
        """
        interval = self._settings.lease_seconds / 3
        while not released.is_set():
            await asyncio.sleep(interval)
            if released.is_set():
                break
            renewed = await self._notifications.renew_lease(
                notification_id, owner, self._clock() + self._settings.lease_seconds
            )
            if not renewed and not released.is_set():
                return
        await asyncio.Event().wait()

    def _dropping_lease(self, notification_id: str) -> None:
        """Called just before this run gives its lease up, so the heartbeat does not call that a loss."""
        released = self._released.get(notification_id)
        if released is not None:
            released.set()

    async def _work(self, doc: dict, request: PushRequest, owner: str) -> None:
        notification_id = doc["_id"]
        quiet = quiet_from_doc(doc.get("quiet_hours"))
        waves = request.options.local_time or quiet is not None
        wave: list[str] | None = None
        if waves:
            wave = doc.get("wave_zones")
            if wave is None:
                done_zones = set(doc.get("zones_done") or [])
                send_at = request.options.send_at
                wave = ready_zones(send_at, request.options.local_time, quiet, self._clock(), done_zones)
                if await self._notifications.advance(notification_id, owner, None, {}, {"wave_zones": wave}) is None:
                    raise LeaseLost
                doc = {**doc, "cursor": None}
        cursor = doc.get("cursor")
        first_wave = not doc.get("zones_done")
        due_at = float(doc["due_at"])
        rate = doc.get("throttle_per_second")
        throttle = _Throttle(rate, self._stopping)
        size = max(1, min(self._settings.chunk_size, int(rate))) if rate else self._settings.chunk_size
        while wave is None or wave:
            await throttle.wait()
            if self._stopping.is_set():
                self._dropping_lease(notification_id)
                await self._notifications.release(notification_id, owner)
                return
            chunk = await self._chunks.next_chunk(request, cursor, wave, count_unknown=first_wave, size=size)
            counts = await self._chunks.deliver(request, chunk, due_at)
            throttle.sent(len(chunk.devices))
            after = await self._notifications.advance(notification_id, owner, chunk.next_cursor, counts)
            if after is None:
                raise LeaseLost
            if "audience_estimate" in after:
                metrics.CAMPAIGN_PROGRESS.labels(str(notification_id).removeprefix("campaign:")).set(
                    progress_ratio(after)
                )
            cursor = chunk.next_cursor
            if after["state"] != str(NotificationState.DISPATCHING):
                await self._interrupted(doc, owner, after["state"])
                return
            if chunk.exhausted:
                break
            if self._stopping.is_set():
                self._dropping_lease(notification_id)
                await self._notifications.release(notification_id, owner)
                return
        if wave is not None:
            done = set(doc.get("zones_done") or []) | set(wave)
            next_at = next_ready_at(request.options.send_at, request.options.local_time, quiet, self._clock(), done)
            if next_at is not None:
                extra = {"zones_done": sorted(done), "wave_zones": None, "cursor": None}
                self._dropping_lease(notification_id)
                if not await self._notifications.reschedule(notification_id, owner, next_at, extra):
                    raise LeaseLost
                return
        await self._finish(doc, owner, NotificationState.DONE, None)

    async def _interrupted(self, doc: dict, owner: str, state: str) -> None:
        """Paused or cancelled between chunks (by the API): stop here, keep the cursor, drop the lease."""
        self._dropping_lease(doc["_id"])
        await self._notifications.release(doc["_id"], owner)
        log.info("notification_interrupted", notification_id=doc["_id"], state=state)
        if state == str(NotificationState.CANCELLED):
            metrics.NOTIFICATIONS_FINISHED.labels(doc["app"], state).inc()
            final = await self._notifications.get(doc["_id"])
            counts = (final or {}).get("counts", {})
            if await self._outcomes.publish(doc["_id"], doc["app"], state, counts, None):
                await self._notifications.mark_events_published([doc["_id"]])
        elif state != PAUSED:
            log.warning("notification_state_changed", notification_id=doc["_id"], state=state)

    async def _finish(self, doc: dict, owner: str, state: NotificationState, error: str | None) -> None:
        self._dropping_lease(doc["_id"])
        counts = await self._notifications.finish(doc["_id"], owner, state, error)
        if counts is None:
            raise LeaseLost
        if doc.get("kind") == "campaign":
            metrics.CAMPAIGN_PROGRESS.labels(str(doc["_id"]).removeprefix("campaign:")).set(1.0)
        metrics.NOTIFICATIONS_FINISHED.labels(doc["app"], str(state)).inc()
        await self._announce(doc, state, error, counts)

    async def _announce(self, doc: dict, state: NotificationState, error: str | None, counts: dict) -> None:
        log.info(
            "notification_finished",
            notification_id=doc["_id"],
            app=doc["app"],
            state=str(state),
            counts=counts,
        )
        if await self._outcomes.publish(doc["_id"], doc["app"], str(state), counts, error):
            await self._notifications.mark_events_published([doc["_id"]])
