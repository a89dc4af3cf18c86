"""Work one claimed notification: resolve its devices chunk by chunk, deliver, record progress.

Progress (cursor + counters) is saved atomically after each chunk under the lease (scheduling/lease.py), so
a crash repeats at most the chunk that was in flight. A chunk stopped part-way (drain deadline, lapsed
lease) saves which of its devices were answered, so only requests on the wire without an answer repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence

from pushsvc import metrics, tracing
from pushsvc.config import DispatchSettings
from pushsvc.dispatch import traces
from pushsvc.dispatch.chunks import ChunkOutcome, ChunkWorker, Terms
from pushsvc.dispatch.fanout_state import Run
from pushsvc.dispatch.finish import RunFinisher
from pushsvc.dispatch.pace import Pace
from pushsvc.dispatch.progress import campaign_progress, progress_ratio
from pushsvc.dispatch.ranges import RangeSettler, boundaries, estimate_audience, may_cut, parts_for
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState, PushRequest
from pushsvc.outcomes import Announcer
from pushsvc.scheduling.due import QuietHours, WaveSchedule, ZoneWaves, quiet_from_doc, ttl_lapsed
from pushsvc.scheduling.lease import Interruption, Lease, LeaseLost
from pushsvc.store.devices import DeviceStore
from pushsvc.store.leases import HandBack, LeaseStore
from pushsvc.store.notifications import LANE_FANOUT, STALLED_RUNS, NotificationStore
from pushsvc.store.ranges import RANGE_KIND, SETTLE_CHECK_SECONDS, RangeStore
from pushsvc.store.records import NotificationRecord, UnreadableRequest

log = get_logger(__name__)


def _wave_schedule(run: Run, quiet: QuietHours | None) -> WaveSchedule | None:
    """How the notification's waves come (None: it is sent whole): best-time hours, or zones (local time,
    quiet hours)."""
    options = run.request.options
    if run.best is not None:
        return run.best
    if options.local_time or quiet is not None:
        return ZoneWaves(options.send_at, options.local_time, quiet, run.record.due_at)
    return None


class NotificationRunner:
    def __init__(
        self,
        notifications: NotificationStore,
        leases: LeaseStore,
        chunks: ChunkWorker,
        announcer: Announcer,
        settings: DispatchSettings,
        devices: DeviceStore,
        settler: RangeSettler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._leases = leases
        self._chunks = chunks
        self._settings = settings
        self._devices = devices
        self._ranges = RangeStore(notifications)
        self._finisher = RunFinisher(notifications, leases, announcer, settler, clock)
        self._clock = clock  # the scheduling clock: which local-time zones are due, quiet hours
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Draining: every run stops after its current chunk, saving its cursor and releasing the lease."""
        self._stopping.set()

    async def run(self, record: NotificationRecord, lease: Lease) -> float | None:
        """Work the notification while `lease` holds it; returns when done, handed back, lost, or rescheduled
        for its next local-time wave: then with that wave's due time (scheduling clock), so the scheduler can
        wake for it rather than wait for its safety poll."""
        heartbeat = asyncio.create_task(lease.keep(), name=f"lease:{record.id}")
        span = traces.dispatching(record)
        try:
            return await tracing.within(span, self._run(record, lease))
        except LeaseLost as exc:
            log.warning("lease_lost", notification_id=record.id, detail=str(exc) or None)
            return None
        finally:
            span.end()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def give_up(self, record: NotificationRecord, lease: Lease) -> None:
        """Fail a notification (of either lane) whose runs keep ending without progress, with that reason and
        its outcome event, under the lease just claimed for it: claiming it again would only repeat them."""
        stalled = record.stalled_runs - 1  # the runs before this claim
        reason = (
            f"stalled: {stalled} runs in a row ended without progress (a lost lease, a failing query or a crash; "
            "see notification_run_failed and lease_lost in the replicas' logs)"
        )
        metrics.NOTIFICATIONS_STALLED.labels(record.app, record.lane or "fanout").inc()
        log.error("notification_stalled", notification_id=record.id, app=record.app, runs=stalled)
        try:
            await self._finisher.finish(record, lease, NotificationState.FAILED, reason)
        except LeaseLost:
            log.warning("lease_lost", notification_id=record.id, detail="while failing a stalled notification")
            return
        if record.boundaries is not None:
            await self._ranges.follow(record.id)  # a split that kept failing: its ranges inserted so far stop

    async def _run(self, record: NotificationRecord, lease: Lease) -> float | None:
        request = record.request
        if isinstance(request, UnreadableRequest):
            # Recorded requests were validated at ingest; this only happens after an incompatible upgrade (or
            # a parser bug). Whatever it is, this one notification fails, saying why; nothing else waits on it.
            await self._finisher.finish(record, lease, NotificationState.FAILED, request.reason)
            return None
        run = Run(record, request, lease)
        schedule = _wave_schedule(run, quiet_from_doc(record.quiet_hours))
        if schedule is None:
            run.lapsed = self._begins_lapsed(run)
            if run.lapsed and not record.ttl_lapsed:
                # Saved before the first chunk: a run stopped part-way through counting goes on counting.
                await self._advance(run, None, {}, {"ttl_lapsed": True})
        # One that begins too late to be sent is not cut: its devices are counted expired in one run.
        parts = 1 if run.lapsed else await self._parts(record, request, lease)
        if parts > 1:
            return await self._split(run, parts)
        wave = await self._current_wave(run, schedule)
        if not await self._send_chunks(run, wave, first_wave=not record.zones_done):
            return None  # handed back, stopped mid-chunk, or paused/cancelled: said and written already
        if wave is not None:
            assert schedule is not None  # a wave was sent
            next_at = await self._next_wave(run, schedule, wave)
            if next_at is not None:
                return next_at
        await self._finisher.finish(record, lease, NotificationState.DONE, None)
        return None

    async def _current_wave(self, run: Run, schedule: WaveSchedule | None) -> list[str] | None:
        """The zones this run sends to (local time, quiet hours), saved before the first chunk so a resumed run
        sends the same wave; None: every device at once. A best-time campaign's waves are hours of day
        (scheduling/best_time.py), chosen and saved alike."""
        if schedule is None:
            return None
        if run.record.wave_zones is not None:
            return list(run.record.wave_zones)
        now, record = self._clock(), run.record
        wave = schedule.ready(now, record.zones_done | record.zones_passed)
        ttl_seconds = run.request.options.ttl_seconds
        # Without a TTL no wave is ever late: no need to learn since when.
        previous_ended_at = await self._previous_progress(run) if ttl_seconds is not None else None
        lapsed = schedule.lapsed(wave, ttl_seconds, now, previous_ended_at)
        # Zones found too late are a wave of their own, counted expired; the others follow at once, as the next.
        wave, run.lapsed = (lapsed, True) if lapsed else (wave, False)
        await self._advance(run, None, {}, {"wave_zones": wave, "ttl_lapsed": run.lapsed})
        run.restart()
        return wave

    async def _previous_progress(self, run: Run) -> float | None:
        """From when a wave about to begin may count as late (scheduling/due.py wave_lapsed): the end of the
        campaign's previous wave; for a range, the last progress of any range of its campaign, as a range may
        wait its turn behind the others (`max_ranges` of them, at most) and that wait is the campaign's own."""
        record = run.record
        if record.kind != RANGE_KIND or record.parent is None:
            return record.wave_ended_at
        parent = record.parent
        return await self._chunks.read_retried(
            lambda: self._ranges.last_progress(parent, self._settings.max_ranges),
            run.lease.valid,
            notification_id=run.id,
        )

    async def _send_chunks(self, run: Run, wave: list[str] | None, first_wave: bool) -> bool:
        """Chunk after chunk, throttled, each saved under the lease; False when the run ended early (draining,
        stopped mid-chunk, paused or cancelled), True when the audience (of this wave) is exhausted."""
        lease, request, due_at = run.lease, run.request, run.record.due_at
        rate = run.record.throttle_per_second
        size = max(1, min(self._settings.chunk_size, int(rate))) if rate else self._settings.chunk_size
        lapsed = run.lapsed
        terms = Terms(run.record.lane or LANE_FANOUT, Pace(rate) if rate else None, lapsed, run.record.split)
        # Nothing of this due time (notification, range or wave) sent before: its first chunk's send is timed.
        starting = run.beginning
        if lapsed and starting:
            log.info("notification_expired", notification_id=run.id, app=run.record.app, zones=wave and len(wave),
                     late_seconds=round(self._clock() - due_at, 1), ttl_seconds=request.options.ttl_seconds)
        saved = {STALLED_RUNS: 0, **({"ttl_lapsed": True} if lapsed else {})}
        while wave is None or wave:
            if self._stopping.is_set():
                await self._hand_back(run, ChunkOutcome(Counter(), list(run.skip)), "draining")
                return False
            chunk = await self._chunks.next_chunk(
                request, run.cursor, wave, first_wave, size, retry_while=lease.valid, upto=run.upto, best=run.best
            )
            if starting and chunk.devices:
                starting = False
                metrics.FANOUT_START_DELAY.labels(request.app).observe(max(0.0, self._clock() - due_at))
            with traces.chunk_send(run.record, len(chunk.devices)) as span:  # one span per chunk, with its counts
                outcome = await self._chunks.deliver(request, chunk, due_at, run.skip, lease.hold(run.id), terms)
                traces.sent(span, outcome.counts)
            if not outcome.complete:
                await self._stopped_mid_chunk(run, outcome)
                return False
            after = await self._advance(run, chunk.next_cursor, outcome.counts, saved)
            if "audience_estimate" in after:
                campaign_progress(run.record).set(progress_ratio(after))
            run.cursor, run.skip = chunk.next_cursor, frozenset()
            if after["state"] != str(NotificationState.DISPATCHING):
                await self._interrupted(run, after["state"])
                return False
            if chunk.exhausted:
                break
        return True

    def _begins_lapsed(self, run: Run) -> bool:
        """Whether a notification sent whole (no waves) counts its devices expired instead of sending them: it
        was found too late when it began, or begins now later than its TTL allows. A range never decides so on
        its own: it is part of a campaign that began in time (and may have waited for another range)."""
        record = run.record
        if record.ttl_lapsed or record.kind == RANGE_KIND or not run.beginning:
            return record.ttl_lapsed
        return ttl_lapsed(run.request.options.ttl_seconds, record.due_at, self._clock())

    async def _next_wave(self, run: Run, schedule: WaveSchedule, wave: list[str]) -> float | None:
        """When zones remain, reschedule the notification for the next one's time under the lease and let it
        go (returns that time); None when this was the last wave."""
        lease = run.lease
        done = set(run.record.zones_done) | set(wave)
        next_at = schedule.next_at(done | run.record.zones_passed, self._clock())
        if next_at is None:
            return None
        extra = {
            "zones_done": sorted(done), "wave_zones": None, "cursor": None, "ttl_lapsed": False,
            "wave_ended_at": self._clock(),
        }
        token = lease.token
        if not await lease.write([run.id], lambda: self._leases.reschedule(run.id, token, next_at, extra)):
            raise LeaseLost
        lease.drop([run.id])
        return next_at

    async def _parts(self, record: NotificationRecord, request: PushRequest, lease: Lease) -> int:
        """How many ranges to cut this notification into before its first chunk (1: run it whole).

        A users or segment audience larger than `range_devices` is cut: a campaign's size was counted at its
        creation; a request from Kafka was not counted, and is estimated from its first page of tokens
        (`estimate_audience`). A run that has begun whole goes on whole, a range is never cut again, and a
        parent that recorded its boundaries (then crashed) is cut at those again.
        """
        if record.boundaries is not None or record.ranges:
            return 2  # any count above 1: the saved boundaries decide
        size = self._settings.range_devices
        if not may_cut(record, request, size):
            return 1
        estimate = record.audience_estimate
        if estimate is None:
            audience = self._audience(request)
            estimate = await self._chunks.read_retried(
                lambda: estimate_audience(self._devices, audience, size), lease.valid, notification_id=record.id
            )
        return parts_for(estimate, size, self._settings.max_ranges, record.throttle_per_second)

    def _audience(self, request: PushRequest) -> dict:
        """The whole audience of a users or segment request, every timezone: what ranges are cut from."""
        return self._devices.audience_query(request)

    async def _split(self, run: Run, parts: int) -> float | None:
        """Cut the audience into ranges for every replica to take (store/ranges.py); the parent then waits
        for them (never claimed again) and is settled when they are over. Returns when its ranges are due,
        so this replica claims them at once; other replicas find them at their next poll.

        Three fenced steps, each repeatable: the boundaries are saved, the ranges inserted (ids derived from
        the parent, duplicates absorbed), the parent marked split and let go.
        """
        record, request = run.record, run.request
        cuts: Sequence[str] | None = record.boundaries
        if cuts is None:
            audience = self._audience(request)
            cuts = await self._chunks.read_retried(
                lambda: boundaries(self._devices, audience, parts), run.lease.valid, notification_id=run.id
            )
            after = await self._advance(run, None, {}, {"boundaries": cuts})
            if after["state"] != str(NotificationState.DISPATCHING):
                # Paused or cancelled before any range exists: stop as an unsplit run does; a resume cuts it
                # at these boundaries.
                await self._interrupted(run, after["state"])
                return None
        count = len(cuts) + 1
        rate = record.throttle_per_second
        await self._ranges.create(run.id, cuts, rate / count if rate else None)
        token, check_at = run.lease.token, self._clock() + SETTLE_CHECK_SECONDS
        parent = await run.lease.write([run.id], lambda: self._ranges.mark_split(run.id, token, count, check_at))
        if parent is None:
            raise LeaseLost
        run.lease.drop([run.id])
        if parent["state"] != str(NotificationState.DISPATCHING):  # paused or cancelled during the split
            await self._ranges.follow(run.id)
        log.info("notification_split", notification_id=run.id, app=record.app, ranges=count,
                 audience_estimate=record.audience_estimate)
        return record.due_at

    async def _advance(
        self, run: Run, cursor: object, counts: Counter[str] | dict, extra: dict | None = None
    ) -> dict:
        """Save progress under the lease; returns the notification as the write left it (its state, counts and
        audience estimate now: a pause or cancel by the API shows there, not in the run's record)."""
        token, seq = run.lease.token, run.seq
        if run.record.kind == RANGE_KIND:  # its campaign's progress, which its sibling ranges' waves count from
            extra = {**(extra or {}), "progressed_at": self._clock()}
        after = await run.lease.write(
            [run.id], lambda: self._leases.advance(run.id, token, seq, cursor, counts, extra)
        )
        if after is None:
            raise LeaseLost
        run.seq += 1
        return after

    async def _stopped_mid_chunk(self, run: Run, outcome: ChunkOutcome) -> None:
        """The chunk was cut short: by a lost lease (write nothing), or a lapse / the drain deadline."""
        reason = run.lease.interruption(run.id) or Interruption.LAPSED
        if reason is Interruption.LOST:
            raise LeaseLost
        await self._hand_back(run, outcome, str(reason))

    async def _hand_back(self, run: Run, outcome: ChunkOutcome, why: str) -> None:
        """Give the lease up at the start of the current chunk, with what of it was answered already."""
        token, saved = run.lease.token, HandBack(run.id, run.cursor, outcome.counts, outcome.done)
        if not await run.lease.write([run.id], lambda: self._leases.hand_back(token, [saved])):
            raise LeaseLost
        run.lease.drop([run.id])
        log.info("notification_handed_back", notification_id=run.id, reason=why, answered_in_chunk=len(outcome.done))

    async def _interrupted(self, run: Run, state: str) -> None:
        """Paused or cancelled between chunks (by the API): stop here, keep the cursor, drop the lease."""
        token = run.lease.token
        await run.lease.write([run.id], lambda: self._leases.release([run.id], token))
        run.lease.drop([run.id])
        await self._finisher.stopped(run.record, state)
