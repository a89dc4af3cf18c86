"""Claims due notifications from MongoDB under a lease and hands them to the runners.

Several replicas run this side by side: the lease (scheduling/lease.py: a claim token, `lease_until` on the
database's clock) decides who works on what, and an expired lease (a crashed replica) makes the
notification claimable again, resuming at its saved progress.

Most batch-lane pushes never pass through a claim: intake records a due-now batch-lane request already
held by this replica (`reserve`, then `dispatch`: the claim's fields are in the insert) and the batch runner
sends it at once. The claim loop takes the rest: fan-outs, scheduled requests coming due, requests recorded
while the batch lane was full, and expired leases. It sleeps until woken (intake, the API, a lane slot coming
free), until the earliest due time it was told of, or until the safety poll (`poll_interval_seconds`), which
finds what nobody announced: another replica's expired lease, a due time recorded elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.batch import BatchNotification, BatchRunner, as_batch
from pushsvc.dispatch.fanout import NotificationRunner
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.lease import Lease
from pushsvc.store.claims import ClaimStore
from pushsvc.store.leases import LeaseStore
from pushsvc.store.notifications import (
    ACTIVE_STATES,
    LANE_BATCH,
    LANE_FANOUT,
    STALLED_RUNS,
    Claim,
    new_claim_token,
)
from pushsvc.store.ranges import LANE_RANGE

log = get_logger(__name__)


# Most notifications one batch-lane claim takes (one bulk finish, one producer batch).
BATCH_CLAIM_LIMIT = 500
# After the drain deadline, how long interrupted work gets to hand back what it had answered.
HAND_BACK_SECONDS = 5.0
# Due times the scheduler remembers to wake for (see `wake`); past this many, the safety poll finds the rest.
KNOWN_DUE_TIMES = 10_000
# The states a range is claimed in: created scheduled, dispatching once run (never accepted).
RANGE_STATES = [NotificationState.SCHEDULED, NotificationState.DISPATCHING]


@dataclass(frozen=True)
class Reservation:
    """Room in the batch lane for `room` notifications that intake records already held by `claim`."""

    claim: Claim
    room: int


class Scheduler:
    def __init__(
        self,
        claims: ClaimStore,
        leases: LeaseStore,
        runner: NotificationRunner,
        batch_runner: BatchRunner,
        settings: DispatchSettings,
        owner: str,
        lease_clock: ServerClock,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._claims = claims
        self._lease_store = leases
        self._runner = runner
        self._batch_runner = batch_runner
        self._settings = settings
        self.owner = owner
        # Leases are judged on the database's clock; due times on the scheduling clock (the same one,
        # unless a test moves it to reach local times).
        self._lease_clock = lease_clock
        self._clock = clock or lease_clock.now
        self._leases: set[Lease] = set()
        self._wakeup = asyncio.Event()
        self._active: set[asyncio.Task[None]] = set()
        self._fanouts = 0  # notifications run by the fan-out runner now
        self._ranges = 0  # ranges of split campaigns run now (their own lane and room: max_active_ranges)
        # Ranges may be waiting for room here: a claim filled the lane, a range ended, or one was split.
        # A wake-up pass then claims ranges too; otherwise only the safety poll looks for them.
        self._ranges_waiting = False
        self._batched = 0  # notifications inside running batches now
        self._stopping = False
        self._last_full_claim = -float("inf")
        # Due times (scheduling clock) of work recorded through this replica, earliest first: `wake`.
        self._due_times: list[float] = []
        # Work this replica let go of outside a claim (an abandoned reservation) waits in a state only a full
        # claim looks at.
        self._full_claim_wanted = False
        # Due batch-lane work may be waiting for room (intake found the lane full, or a claim filled it): a
        # batch finishing then wakes the claim loop; otherwise it does not.
        self._batch_backlog = False
        self.healthy = True
        self._report()  # both lane series exist, at zero, before the first scrape

    def wake(self, due_at: float | None = None) -> None:
        """Claim now, not at the next safety poll: new requests (`due_at` None: a pass looking at `accepted`
        only), or work due at `due_at` on the scheduling clock (a pass looking at every state then: scheduled
        requests, a resumed campaign). Past KNOWN_DUE_TIMES remembered times the safety poll finds the rest."""
        if due_at is None:
            self._wakeup.set()
        elif len(self._due_times) < KNOWN_DUE_TIMES:
            heapq.heappush(self._due_times, due_at)
            if self._due_times[0] == due_at:
                self._wakeup.set()  # earlier than what the loop sleeps for: let it compute its wait again

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
                await asyncio.wait_for(self._wakeup.wait(), self._sleep_for(backoff))

    def _sleep_for(self, longest: float) -> float:
        """Until the next full claim: the safety poll, or sooner the earliest due time we know of."""
        until_poll = self._last_full_claim + self._settings.poll_interval_seconds - time.monotonic()
        wait = min(longest, max(0.0, until_poll))
        if self._due_times:
            wait = min(wait, max(0.0, self._due_times[0] - self._clock()))
        return wait

    def _full_claim_due(self, now: float) -> bool:
        """Whether this pass also looks for scheduled work coming due and expired leases (every state)."""
        due = time.monotonic() - self._last_full_claim >= self._settings.poll_interval_seconds
        while self._due_times and self._due_times[0] <= now:
            heapq.heappop(self._due_times)
            due = True
        if self._full_claim_wanted:
            self._full_claim_wanted, due = False, True
        return due

    async def _claim_available(self) -> bool:
        """Claim and start what is due in each lane with room; True if more may be waiting right now."""
        now = self._clock()
        # Wakes come from new requests, which are `accepted`; scheduled ones coming due (a known due time)
        # and expired leases (the safety poll) need every state, which keeps busy wake-ups to one query per lane.
        states = [NotificationState.ACCEPTED]
        if self._full_claim_due(now):
            states = ACTIVE_STATES
            self._last_full_claim = time.monotonic()
        more = False
        # Each lane has its own room: campaigns retrying against a slow provider fill only the fan-out
        # slots, and a burst of batch-lane pushes only the batch lane.
        room = min(BATCH_CLAIM_LIMIT, self._settings.max_batched_notifications - self._batched)
        if room > 0 and not self._stopping:
            docs = await self._claim(now, room, LANE_BATCH, states)
            more |= len(docs) == room
            # A short claim took all that was waiting; a full one may have left some for the next free room.
            self._batch_backlog = len(docs) == room
        room = self._settings.max_active_notifications - self._fanouts
        if room > 0 and not self._stopping:
            docs = await self._claim(now, room, LANE_FANOUT, states)
            more |= len(docs) == room
        room = self._settings.max_active_ranges - self._ranges
        if room > 0 and not self._stopping and (self._ranges_waiting or states is ACTIVE_STATES):
            docs = await self._claim(now, room, LANE_RANGE, RANGE_STATES)
            self._ranges_waiting = len(docs) == room
            more |= len(docs) == room
        return more and not self._stopping

    async def _claim(self, due_by: float, limit: int, lane: str, states: list[NotificationState]) -> list[dict]:
        now = self._lease_clock.now()
        until = now + self._settings.lease_seconds  # read before the claim is written: it ends no earlier
        # Taken as expired only if it has expired even when our estimate of the database's clock runs ahead.
        expired_by = now - self._lease_clock.error()
        token, docs = await self._claims.claim_due(
            self.owner, expired_by, until, due_by, limit, lane, states
        )
        if self._stopping and docs:
            # drain() began while this claim was in flight: hand these back at once rather than let them wait
            # for the end of the shutdown (or for their lease to run out).
            await self._lease_store.release([d["_id"] for d in docs], token)
            return []
        batch = []
        for doc in docs:
            if int(doc.get(STALLED_RUNS) or 0) > self._settings.max_runs_without_progress:
                lease = self._lease(token, [doc["_id"]], until)
                self._start(self._give_up(doc, lease), f"give-up:{doc['_id']}")
                continue
            item = as_batch(doc)
            if item is None:
                self._count(lane, 1)
                lease = self._lease(token, [doc["_id"]], until)
                self._start(self._run_one(doc, lease, lane), f"notification:{doc['_id']}")
            else:
                batch.append(item)
        if batch:
            self._batched += len(batch)
            self._start_batch(batch, token, until)
        self._report()
        return docs

    # --------------------------------------------------------------------------- direct dispatch at intake

    def reserve(self, wanted: int) -> Reservation | None:
        """Room in the batch lane for up to `wanted` due-now notifications that intake is about to record held
        by a fresh claim of this replica (the claim's fields go into the insert: no poll, no claim write).

        None while draining or when the lane is full: intake then records them unclaimed and wakes the claim
        loop, which takes them as room frees. Every reservation ends in `dispatch` or `abandon`.
        """
        room = min(wanted, BATCH_CLAIM_LIMIT, self._settings.max_batched_notifications - self._batched)
        if room < wanted:
            self._batch_backlog = True  # the rest is recorded unclaimed: claimed as room frees
        if self._stopping or room <= 0:
            return None
        # Read before the insert is written, like a claim's: the lease ends no earlier than this.
        until = self._lease_clock.now() + self._settings.lease_seconds
        self._batched += room
        return Reservation(Claim(new_claim_token(self.owner), self.owner, until), room)

    async def dispatch(self, reservation: Reservation, recorded: Sequence[BatchNotification]) -> None:
        """Run the notifications intake recorded under `reservation` (those it inserted; a duplicate or a
        rejected request holds no lease of ours). Room not used is given back."""
        self._batched -= reservation.room - len(recorded)
        if not recorded:
            self._report()
            return
        if self._stopping:
            # drain() began while intake was recording: hand them back at once, as a claim in flight does.
            self._batched -= len(recorded)
            self._report()
            await self._lease_store.release([item.doc["_id"] for item in recorded], reservation.claim.token)
            return
        self._start_batch(list(recorded), reservation.claim.token, reservation.claim.until)
        self._report()

    def abandon(self, reservation: Reservation, ids: Sequence[str]) -> None:
        """Intake's insert failed (it raises and its caller retries): any of `ids` it may have written anyway
        are held by a claim nobody runs. They are released in the background (fenced by the claim's token),
        and the next pass claims every state; if the release fails too, their lease expires as after a crash.
        """
        self._batched -= reservation.room
        self._report()
        self._start(self._release_abandoned(reservation.claim.token, list(ids)), f"release:{len(ids)}")

    async def _release_abandoned(self, token: str, ids: list[str]) -> None:
        try:
            released = await self._lease_store.release(ids, token)
        except Exception as exc:
            log.warning("abandoned_claim_not_released", notifications=len(ids), error=type(exc).__name__)
            return
        if released:
            self._full_claim_wanted = True
            self._wakeup.set()

    def _start_batch(self, batch: list[BatchNotification], token: str, until: float) -> None:
        """Run `batch` under one lease (claimed, or recorded held by intake); its room is counted already."""
        lease = self._lease(token, [item.doc["_id"] for item in batch], until)
        self._start(self._run_batch(batch, lease), f"batch:{len(batch)}")

    def _lease(self, token: str, ids: list[str], until: float) -> Lease:
        lease = Lease(self._claims, self._lease_clock, token, ids, until, self._settings.lease_seconds)
        self._leases.add(lease)
        return lease

    def _report(self) -> None:
        metrics.ACTIVE_NOTIFICATIONS.labels(LANE_BATCH).set(self._batched)
        metrics.ACTIVE_NOTIFICATIONS.labels(LANE_FANOUT).set(self._fanouts)
        metrics.ACTIVE_NOTIFICATIONS.labels(LANE_RANGE).set(self._ranges)

    def _count(self, lane: str, change: int) -> None:
        """Runs of the fan-out runner now, in its lane's room (a range, or any other fan-out)."""
        if lane == LANE_RANGE:
            self._ranges += change
        else:
            self._fanouts += change

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        # A fresh context: work started from an API request (direct dispatch) must not inherit that request's
        # context, in particular its `pymongo.timeout` (http.store_timeout_ms), which would fail every write
        # of the run once the request's deadline passed, lapse the lease and get the push sent again.
        task = asyncio.create_task(work, name=name, context=contextvars.Context())
        self._active.add(task)
        task.add_done_callback(self._active.discard)

    async def _run_one(self, doc: dict, lease: Lease, lane: str) -> None:
        try:
            next_wave = await self._runner.run(doc, lease)
            if next_wave is not None:
                # Rescheduled for its next local-time wave, or split into ranges: claimed at that time (and
                # ranges looked for at the next pass even if the known due times are full).
                self.wake(next_wave)
                self._ranges_waiting = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The lease expires and another pass (or replica) resumes from the saved cursor.
            log.error("notification_run_failed", notification_id=doc["_id"], error=repr(exc))
        finally:
            self._leases.discard(lease)
            self._count(lane, -1)
            if lane == LANE_RANGE:
                self._ranges_waiting = True  # other ranges may wait for this room
            self._report()
            self._wakeup.set()  # a slot is free

    async def _give_up(self, doc: dict, lease: Lease) -> None:
        try:
            await self._runner.give_up(doc, lease)
        except Exception as exc:  # not failed this time: its lease expires and the next claim tries again
            log.error("notification_give_up_failed", notification_id=doc["_id"], error=repr(exc))
        finally:
            self._leases.discard(lease)

    async def _run_batch(self, batch: list[BatchNotification], lease: Lease) -> None:
        remaining = len(batch)

        def done(count: int) -> None:  # finished early: their room in the lane is free again
            nonlocal remaining
            remaining -= count
            self._batched -= count
            self._report()
            # Only if something may wait for that room: a claim pass per finished batch is two queries, and
            # most batches (direct dispatch) leave nobody waiting.
            if self._batch_backlog:
                self._wakeup.set()

        try:
            await self._batch_runner.run(batch, lease, done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The leases expire and another pass (or replica) runs these notifications again.
            log.error("batch_run_failed", notifications=remaining, error=repr(exc))
        finally:
            self._leases.discard(lease)
            done(remaining)

    async def drain(self, timeout: float) -> None:
        """Stop claiming; give in-flight work `timeout` seconds to finish its chunk, then stop it mid-chunk.

        Work stopped at the deadline hands back what it had answered (HAND_BACK_SECONDS for that), so the
        next holder repeats only requests that were on the wire without an answer; whatever still runs
        after that is cancelled and its lease lapses for others.
        """
        self._stopping = True
        self._runner.stop()  # runs stop after their current chunk, saving the cursor and releasing the lease
        self._wakeup.set()
        if not self._active:
            return
        _, pending = await asyncio.wait(set(self._active), timeout=timeout)
        if not pending:
            return
        log.warning("drain_deadline", interrupting=len(pending))
        for lease in list(self._leases):
            lease.abort()
        _, pending = await asyncio.wait(pending, timeout=HAND_BACK_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            # Its runs must have ended before stop() releases their leases (another replica would send
            # what a still-running run sends): wait for the cancellation to land.
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("drain_timeout", cancelled=len(pending))
