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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pushsvc.config import DispatchSettings
from pushsvc.dispatch import traces
from pushsvc.dispatch.batch import BatchRunner, runs_in_batch
from pushsvc.dispatch.fanout import NotificationRunner
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.inflight import InFlight
from pushsvc.scheduling.lanes import LaneRoom
from pushsvc.scheduling.lease import Lease
from pushsvc.scheduling.wakeups import WakeUps
from pushsvc.store.claims import ClaimStore
from pushsvc.store.leases import LeaseStore
from pushsvc.store.notifications import ACTIVE_STATES, LANE_BATCH, LANE_FANOUT, Claim, new_claim_token
from pushsvc.store.ranges import LANE_RANGE
from pushsvc.store.records import NotificationRecord

log = get_logger(__name__)


# Most notifications one batch-lane claim takes (one bulk finish, one producer batch).
BATCH_CLAIM_LIMIT = 500
# After the drain deadline, how long interrupted work gets to hand back what it had answered.
HAND_BACK_SECONDS = 5.0
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
        self._in_flight = InFlight(claims, lease_clock, settings.lease_seconds)
        self._wakeups = WakeUps(settings.poll_interval_seconds, self._clock)
        self._room = LaneRoom()
        # Ranges may be waiting for room here: a claim filled the lane, a range ended, or one was split.
        # A wake-up pass then claims ranges too; otherwise only the safety poll looks for them.
        self._ranges_waiting = False
        self._stopping = False
        # Due batch-lane work may be waiting for room (intake found the lane full, or a claim filled it): a
        # batch finishing then wakes the claim loop; otherwise it does not.
        self._batch_backlog = False
        self.healthy = True

    def wake(self, due_at: float | None = None) -> None:
        """Claim now, not at the next safety poll: new requests (`due_at` None: a pass looking at `accepted`
        only), or work due at `due_at` on the scheduling clock (a pass looking at every state then: scheduled
        requests, a resumed campaign); see WakeUps."""
        self._wakeups.wake(due_at)

    async def run(self) -> None:
        backoff = self._settings.poll_interval_seconds
        while not self._stopping:
            self._wakeups.pass_begins()
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
            await self._wakeups.wait(backoff)

    async def _claim_available(self) -> bool:
        """Claim and start what is due in each lane with room; True if more may be waiting right now."""
        now = self._clock()
        # Wakes come from new requests, which are `accepted`; scheduled ones coming due (a known due time)
        # and expired leases (the safety poll) need every state, which keeps busy wake-ups to one query per lane.
        states = ACTIVE_STATES if self._wakeups.full_claim(now) else [NotificationState.ACCEPTED]
        more = False
        # Each lane has its own room: campaigns retrying against a slow provider fill only the fan-out
        # slots, and a burst of batch-lane pushes only the batch lane.
        room = min(BATCH_CLAIM_LIMIT, self._batch_room())
        if room > 0 and not self._stopping:
            claimed = await self._claim(now, room, LANE_BATCH, states)
            more |= claimed == room
            # A short claim took all that was waiting; a full one may have left some for the next free room.
            self._batch_backlog = claimed == room
        room = self._settings.max_active_notifications - self._room.taken(LANE_FANOUT)
        if room > 0 and not self._stopping:
            claimed = await self._claim(now, room, LANE_FANOUT, states)
            more |= claimed == room
        room = self._settings.max_active_ranges - self._room.taken(LANE_RANGE)
        if room > 0 and not self._stopping and (self._ranges_waiting or states is ACTIVE_STATES):
            claimed = await self._claim(now, room, LANE_RANGE, RANGE_STATES)
            self._ranges_waiting = claimed == room
            more |= claimed == room
        return more and not self._stopping

    async def _claim(self, due_by: float, limit: int, lane: str, states: list[NotificationState]) -> int:
        """Claim up to `limit` of `lane` and start them; returns how many were claimed."""
        now = self._lease_clock.now()
        until = now + self._settings.lease_seconds  # read before the claim is written: it ends no earlier
        # Taken as expired only if it has expired even when our estimate of the database's clock runs ahead.
        expired_by = now - self._lease_clock.error()
        started_ns = time.time_ns()
        token, records = await self._claims.claim_due(
            self.owner, expired_by, until, due_by, limit, lane, states
        )
        traces.claimed(records, lane, self.owner, started_ns, direct=False)
        if self._stopping and records:
            # drain() began while this claim was in flight: hand these back at once rather than let them wait
            # for the end of the shutdown (or for their lease to run out).
            await self._lease_store.release([record.id for record in records], token)
            return 0
        batch = []
        for record in records:
            if record.stalled_runs > self._settings.max_runs_without_progress:
                lease = self._in_flight.lease(token, [record.id], until)
                self._in_flight.start(self._give_up(record, lease), f"give-up:{record.id}")
            elif runs_in_batch(record):
                batch.append(record)
            else:
                self._room.change(LaneRoom.runner_lane(lane), 1)
                lease = self._in_flight.lease(token, [record.id], until)
                self._in_flight.start(self._run_one(record, lease, lane), f"notification:{record.id}")
        if batch:
            self._room.change(LANE_BATCH, len(batch))
            self._start_batch(batch, token, until)
        return len(records)

    # --------------------------------------------------------------------------- direct dispatch at intake

    def reserve(self, wanted: int) -> Reservation | None:
        """Room in the batch lane for up to `wanted` due-now notifications that intake is about to record held
        by a fresh claim of this replica (the claim's fields go into the insert: no poll, no claim write).

        None while draining or when the lane is full: intake then records them unclaimed and wakes the claim
        loop, which takes them as room frees. Every reservation ends in `dispatch` or `abandon`.
        """
        room = min(wanted, BATCH_CLAIM_LIMIT, self._batch_room())
        if room < wanted:
            self._batch_backlog = True  # the rest is recorded unclaimed: claimed as room frees
        if self._stopping or room <= 0:
            return None
        # Read before the insert is written, like a claim's: the lease ends no earlier than this.
        until = self._lease_clock.now() + self._settings.lease_seconds
        self._room.change(LANE_BATCH, room)
        return Reservation(Claim(new_claim_token(self.owner), self.owner, until), room)

    async def dispatch(self, reservation: Reservation, recorded: Sequence[NotificationRecord]) -> None:
        """Run the notifications intake recorded under `reservation` (those it inserted; a duplicate or a
        rejected request holds no lease of ours). Room not used is given back."""
        self._room.change(LANE_BATCH, len(recorded) - reservation.room)
        if not recorded:
            return
        if self._stopping:
            # drain() began while intake was recording: hand them back at once, as a claim in flight does.
            self._room.change(LANE_BATCH, -len(recorded))
            await self._lease_store.release([record.id for record in recorded], reservation.claim.token)
            return
        traces.claimed(recorded, LANE_BATCH, self.owner, time.time_ns(), direct=True)
        self._start_batch(list(recorded), reservation.claim.token, reservation.claim.until)

    def abandon(self, reservation: Reservation, ids: Sequence[str]) -> None:
        """Intake's insert failed (it raises and its caller retries): any of `ids` it may have written anyway
        are held by a claim nobody runs. They are released in the background (fenced by the claim's token),
        and the next pass claims every state; if the release fails too, their lease expires as after a crash.
        """
        self._room.change(LANE_BATCH, -reservation.room)
        self._in_flight.start(self._release_abandoned(reservation.claim.token, list(ids)), f"release:{len(ids)}")

    async def _release_abandoned(self, token: str, ids: list[str]) -> None:
        try:
            released = await self._lease_store.release(ids, token)
        except Exception as exc:
            log.warning("abandoned_claim_not_released", notifications=len(ids), error=type(exc).__name__)
            return
        if released:
            self._wakeups.want_full_claim()  # they wait in a state only a full claim looks at

    def _batch_room(self) -> int:
        """Notifications the batch lane has room for (running batches and reservations count)."""
        return self._settings.max_batched_notifications - self._room.taken(LANE_BATCH)

    def _start_batch(self, batch: list[NotificationRecord], token: str, until: float) -> None:
        """Run `batch` under one lease (claimed, or recorded held by intake); its room is counted already."""
        lease = self._in_flight.lease(token, [record.id for record in batch], until)
        self._in_flight.start(self._run_batch(batch, lease), f"batch:{len(batch)}")

    async def _run_one(self, record: NotificationRecord, lease: Lease, lane: str) -> None:
        try:
            next_wave = await self._runner.run(record, lease)
            if next_wave is not None:
                # Rescheduled for its next local-time wave, or split into ranges: claimed at that time (and
                # ranges looked for at the next pass even if the known due times are full).
                self.wake(next_wave)
                self._ranges_waiting = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The lease expires and another pass (or replica) resumes from the saved cursor.
            log.error("notification_run_failed", notification_id=record.id, error=repr(exc))
        finally:
            self._in_flight.ended(lease)
            self._room.change(LaneRoom.runner_lane(lane), -1)
            if lane == LANE_RANGE:
                self._ranges_waiting = True  # other ranges may wait for this room
            self._wakeups.wake()  # a slot is free

    async def _give_up(self, record: NotificationRecord, lease: Lease) -> None:
        try:
            await self._runner.give_up(record, lease)
        except Exception as exc:  # not failed this time: its lease expires and the next claim tries again
            log.error("notification_give_up_failed", notification_id=record.id, error=repr(exc))
        finally:
            self._in_flight.ended(lease)

    async def _run_batch(self, batch: list[NotificationRecord], lease: Lease) -> None:
        remaining = len(batch)

        def done(count: int) -> None:  # finished early: their room in the lane is free again
            nonlocal remaining
            remaining -= count
            self._room.change(LANE_BATCH, -count)
            # Only if something may wait for that room: a claim pass per finished batch is two queries, and
            # most batches (direct dispatch) leave nobody waiting.
            if self._batch_backlog:
                self._wakeups.wake()

        try:
            await self._batch_runner.run(batch, lease, done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The leases expire and another pass (or replica) runs these notifications again.
            log.error("batch_run_failed", notifications=remaining, error=repr(exc))
        finally:
            self._in_flight.ended(lease)
            done(remaining)

    async def drain(self, timeout: float) -> None:
        """Stop claiming; give in-flight work `timeout` seconds to finish its chunk, then stop it mid-chunk.

        Work stopped at the deadline hands back what it had answered (HAND_BACK_SECONDS for that), so the
        next holder repeats only requests that were on the wire without an answer; whatever still runs
        after that is cancelled and its lease lapses for others.
        """
        self._stopping = True
        self._runner.stop()  # runs stop after their current chunk, saving the cursor and releasing the lease
        self._wakeups.wake()
        await self._in_flight.stop(timeout, HAND_BACK_SECONDS)
