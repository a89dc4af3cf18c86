"""The work a replica has in flight: each run a task started in a fresh context, holding its notifications
under a lease (scheduling/lease.py); and how that work is stopped at shutdown (`Scheduler.drain`)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

from pushsvc.logs import get_logger
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.lease import Lease
from pushsvc.store.claims import ClaimStore

log = get_logger(__name__)


class InFlight:
    def __init__(self, claims: ClaimStore, lease_clock: ServerClock, lease_seconds: float) -> None:
        self._claims = claims
        self._lease_clock = lease_clock
        self._lease_seconds = lease_seconds
        self._leases: set[Lease] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def lease(self, token: str, ids: list[str], until: float) -> Lease:
        """The lease a claim (or intake's insert) took on `ids` until `until`, held until `ended`."""
        lease = Lease(self._claims, self._lease_clock, token, ids, until, self._lease_seconds)
        self._leases.add(lease)
        return lease

    def ended(self, lease: Lease) -> None:
        """The run holding `lease` is over: the drain deadline no longer concerns it."""
        self._leases.discard(lease)

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        # A fresh context: work started from an API request (direct dispatch) must not inherit that request's
        # context, in particular its `pymongo.timeout` (http.store_timeout_ms), which would fail every write
        # of the run once the request's deadline passed, lapse the lease and get the push sent again.
        task = asyncio.create_task(work, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, timeout: float, hand_back_seconds: float) -> None:
        """Give the work `timeout` seconds to end by itself (runs told to stop end after their chunk), then
        abort every lease (the runs stop mid-chunk and hand back what they had answered, `hand_back_seconds`
        for that), then cancel whatever still runs."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if not pending:
            return
        log.warning("drain_deadline", interrupting=len(pending))
        for lease in list(self._leases):
            lease.abort()
        _, pending = await asyncio.wait(pending, timeout=hand_back_seconds)
        for task in pending:
            task.cancel()
        if pending:
            # Its runs must have ended before stop() releases their leases (another replica would send
            # what a still-running run sends): wait for the cancellation to land.
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("drain_timeout", cancelled=len(pending))
