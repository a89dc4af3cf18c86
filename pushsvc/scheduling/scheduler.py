"""Claims due notifications from MongoDB under a lease and hands them to the runner.

Several replicas run this side by side: the lease (owner, lease_until) decides who works on what, and
an expired lease (a crashed replica) makes the notification claimable again, resuming at its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.batch import BatchRunner, SmallNotification, as_small
from pushsvc.dispatch.fanout import NotificationRunner
from pushsvc.logging import get_logger
from pushsvc.model import NotificationState
from pushsvc.store.notifications import ACTIVE_STATES, LANE_BATCH, LANE_FANOUT, NotificationStore

log = get_logger(__name__)


# Most notifications one batch-lane claim takes (one bulk finish, one producer batch).
BATCH_CLAIM_LIMIT = 500


class Scheduler:
    def __init__(
        self,
        notifications: NotificationStore,
        runner: NotificationRunner,
        batch_runner: BatchRunner,
        settings: DispatchSettings,
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifications = notifications
        self._runner = runner
        self._batch_runner = batch_runner
        self._settings = settings
        self.owner = owner
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._active: set[asyncio.Task[None]] = set()
        self._fanouts = 0  # notifications run by the fan-out runner now
        self._batched = 0  # notifications inside running batches now
        self._stopping = False
        self._last_full_claim = 0.0
        self.healthy = True
        self._report()  # both lane series exist, at zero, before the first scrape

    def wake(self) -> None:
        """Called by ingest when something due now was recorded: skip the rest of the poll interval."""
        self._wakeup.set()

    async def run(self) -> None:
        backoff = self._settings.poll_interval_seconds
        while not self._stopping:
            # Cleared before claiming: a wake that arrives while the claim is in flight ends the wait at once.
            self._wakeup.clear()
            try:
                more = await self._claim_available()
                self.healthy = True
                backoff = self._settings.poll_interval_seconds
            except Exception as exc:  # MongoDB down: keep the loop alive and retry with growing pauses
                self.healthy = False
                log.warning("claim_failed", error=str(exc))
                more = False
                backoff = min(backoff * 2, 5.0)
            if more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), backoff)

    async def _claim_available(self) -> bool:
        """Claim and start what is due in each lane with room; True if more may be waiting right now."""
        now = self._clock()
        # Wakes come from new requests, which are `accepted`; scheduled ones coming due and expired
        # leases are looked for once per poll interval, which keeps busy wake-ups to one query per lane.
        states = [NotificationState.ACCEPTED]
        if now - self._last_full_claim >= self._settings.poll_interval_seconds:
            states = ACTIVE_STATES
            self._last_full_claim = now
        more = False
        # Each lane has its own room: campaigns retrying against a slow provider fill only the fan-out
        # slots, and a burst of transactional pushes only the batch lane.
        room = min(BATCH_CLAIM_LIMIT, self._settings.max_batched_notifications - self._batched)
        if room > 0 and not self._stopping:
            docs = await self._claim(now, room, LANE_BATCH, states)
            more |= len(docs) == room
        room = self._settings.max_active_notifications - self._fanouts
        if room > 0 and not self._stopping:
            docs = await self._claim(now, room, LANE_FANOUT, states)
            more |= len(docs) == room
        return more and not self._stopping

    async def _claim(self, now: float, limit: int, lane: str, states: list[NotificationState]) -> list[dict]:
        docs = await self._notifications.claim_due(self.owner, now, self._settings.lease_seconds, limit, lane, states)
        if self._stopping:
            # drain() began while this claim was in flight: do not start work it will not wait for
            # (the leases are released on stop or lapse).
            return []
        small = []
        for doc in docs:
            item = as_small(doc)
            if item is None:
                self._fanouts += 1
                self._start(self._run_one(doc), f"notification:{doc['_id']}")
            else:
                small.append(item)
        if small:
            self._batched += len(small)
            self._start(self._run_batch(small), f"batch:{len(small)}")
        self._report()
        return docs

    def _report(self) -> None:
        metrics.ACTIVE_NOTIFICATIONS.labels(LANE_BATCH).set(self._batched)
        metrics.ACTIVE_NOTIFICATIONS.labels(LANE_FANOUT).set(self._fanouts)

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._active.add(task)
        task.add_done_callback(self._active.discard)

    async def _run_one(self, doc: dict) -> None:
        try:
            await self._runner.run(doc, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The lease expires and another pass (or replica) resumes from the saved cursor.
            log.error("notification_run_failed", notification_id=doc["_id"], error=repr(exc))
        finally:
            self._fanouts -= 1
            self._report()
            self._wakeup.set()  # a slot is free

    async def _run_batch(self, batch: list[SmallNotification]) -> None:
        remaining = len(batch)

        def done(count: int) -> None:  # finished early: their room in the lane is free again
            nonlocal remaining
            remaining -= count
            self._batched -= count
            self._report()
            self._wakeup.set()

        try:
            await self._batch_runner.run(batch, done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The leases expire and another pass (or replica) runs these notifications again.
            log.error("batch_run_failed", notifications=remaining, error=repr(exc))
        finally:
            done(remaining)

    async def drain(self, timeout: float) -> None:
        """Stop claiming; give in-flight work `timeout` seconds, then cancel it (its lease lapses for others)."""
        self._stopping = True
        self._runner.stop()  # runs stop after their current chunk, saving the cursor and releasing the lease
        self._wakeup.set()
        if self._active:
            _, pending = await asyncio.wait(set(self._active), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("drain_timeout", cancelled=len(pending))
