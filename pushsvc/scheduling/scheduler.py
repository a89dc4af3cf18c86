"""Claims due notifications from MongoDB under a lease and hands them to the runner.

Several replicas run this side by side: the lease (owner, lease_until) decides who works on what, and
an expired lease (a crashed replica) makes the notification claimable again, resuming at its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pushsvc.config import DispatchSettings
from pushsvc.dispatch.fanout import NotificationRunner
from pushsvc.logging import get_logger
from pushsvc.store.notifications import NotificationStore

log = get_logger(__name__)


class Scheduler:
    def __init__(
        self,
        notifications: NotificationStore,
        runner: NotificationRunner,
        settings: DispatchSettings,
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifications = notifications
        self._runner = runner
        self._settings = settings
        self.owner = owner
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._active: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.healthy = True

    def wake(self) -> None:
        """Called by ingest when something due now was recorded: skip the rest of the poll interval."""
        self._wakeup.set()

    @property
    def active(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        backoff = self._settings.poll_interval_seconds
        while not self._stopping:
            try:
                claimed = await self._claim_available()
                self.healthy = True
                backoff = self._settings.poll_interval_seconds
            except Exception as exc:  # MongoDB down: keep the loop alive and retry with growing pauses
                self.healthy = False
                log.warning("claim_failed", error=str(exc))
                claimed = 0
                backoff = min(backoff * 2, 5.0)
            if claimed and self.active < self._settings.max_active_notifications:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), backoff)

    async def _claim_available(self) -> int:
        claimed = 0
        while not self._stopping and self.active < self._settings.max_active_notifications:
            doc = await self._notifications.claim_due(self.owner, self._clock(), self._settings.lease_seconds)
            if doc is None:
                break
            if self._stopping:
                # drain() began while this claim was in flight: do not start work it will not wait for
                # (the lease is released on stop or lapses).
                break
            claimed += 1
            task = asyncio.create_task(self._run_one(doc), name=f"notification:{doc['_id']}")
            self._active.add(task)
            task.add_done_callback(self._active.discard)
        return claimed

    async def _run_one(self, doc: dict) -> None:
        try:
            await self._runner.run(doc, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The lease expires and another pass (or replica) resumes from the saved cursor.
            log.error("notification_run_failed", notification_id=doc["_id"], error=repr(exc))
        finally:
            self._wakeup.set()  # a slot is free

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
