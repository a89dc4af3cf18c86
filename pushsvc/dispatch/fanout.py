"""Work one claimed notification: resolve its devices chunk by chunk, deliver, record progress.

Progress (cursor + counters) is saved atomically after each chunk under the lease (scheduling/lease.py), so
a crash repeats at most the chunk that was in flight. A chunk stopped part-way (drain deadline, lapsed
lease) saves which of its devices were answered, so only requests on the wire without an answer repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.chunks import ChunkOutcome, ChunkWorker
from pushsvc.dispatch.progress import announce_finished, campaign_progress, progress_ratio
from pushsvc.dispatch.ranges import RangeSettler, boundaries, estimate_audience
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState, PushRequest, parse_request
from pushsvc.outcomes import Announcer, OutcomeEvent
from pushsvc.scheduling.due import QuietHours, next_ready_at, quiet_from_doc, ready_zones
from pushsvc.scheduling.lease import Interruption, Lease, LeaseLost
from pushsvc.store.audience import resume_point
from pushsvc.store.devices import SMALL_LOOKUP, DeviceStore
from pushsvc.store.leases import HandBack, LeaseStore
from pushsvc.store.notifications import PAUSED, STALLED_RUNS, NotificationStore
from pushsvc.store.ranges import RANGE_KIND, SETTLE_CHECK_SECONDS, RangeStore

# A range throttled below this many deliveries a second gains nothing from another replica: a throttled
# campaign is cut into at most rate / RANGE_MIN_RATE ranges.
RANGE_MIN_RATE = 1000

log = get_logger(__name__)


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
        self._notifications = notifications
        self._leases = leases
        self._chunks = chunks
        self._announcer = announcer
        self._settings = settings
        self._devices = devices
        self._ranges = RangeStore(notifications)
        self._settler = settler
        self._clock = clock  # the scheduling clock: which local-time zones are due, quiet hours
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Draining: every run stops after its current chunk, saving its cursor and releasing the lease."""
        self._stopping.set()

    async def run(self, doc: dict, lease: Lease) -> float | None:
        """Work the notification while `lease` holds it; returns when done, handed back, lost, or rescheduled
        for its next local-time wave: then with that wave's due time (scheduling clock), so the scheduler can
        wake for it rather than wait for its safety poll."""
        heartbeat = asyncio.create_task(lease.keep(), name=f"lease:{doc['_id']}")
        try:
            return await self._run(doc, lease)
        except LeaseLost as exc:
            log.warning("lease_lost", notification_id=doc["_id"], detail=str(exc) or None)
            return None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def give_up(self, doc: dict, lease: Lease) -> None:
        """Fail a notification (of either lane) whose runs keep ending without progress, with that reason and
        its outcome event, under the lease just claimed for it: claiming it again would only repeat them."""
        stalled = int(doc.get(STALLED_RUNS) or 0) - 1  # the runs before this claim
        reason = (
            f"stalled: {stalled} runs in a row ended without progress (a lost lease, a failing query or a crash; "
            "see notification_run_failed and lease_lost in the replicas' logs)"
        )
        metrics.NOTIFICATIONS_STALLED.labels(doc["app"], doc.get("lane") or "fanout").inc()
        log.error("notification_stalled", notification_id=doc["_id"], app=doc["app"], runs=stalled)
        try:
            await self._finish(doc, lease, NotificationState.FAILED, reason)
        except LeaseLost:
            log.warning("lease_lost", notification_id=doc["_id"], detail="while failing a stalled notification")
            return
        if doc.get("boundaries") is not None:
            await self._ranges.follow(doc["_id"])  # a split that kept failing: its ranges inserted so far stop

    async def _run(self, doc: dict, lease: Lease) -> float | None:
        try:
            request = parse_request(orjson.loads(doc["request"]))
        except Exception as exc:
            # Recorded requests were validated at ingest; this only happens after an incompatible upgrade (or
            # a parser bug). Whatever it is, this one notification fails, saying why; nothing else waits on it.
            detail = f"{type(exc).__name__}: {exc}"[:300]
            await self._finish(doc, lease, NotificationState.FAILED, f"stored request unreadable: {detail}")
            return None
        run = _Run(doc, request, lease, int(doc.get("progress_seq") or 0))
        parts = await self._parts(doc, request, lease)
        if parts > 1:
            return await self._split(run, parts)
        quiet = quiet_from_doc(doc.get("quiet_hours"))
        wave = await self._current_wave(run, doc, request, quiet)
        if not await self._send_chunks(run, request, wave, first_wave=not doc.get("zones_done")):
            return None  # handed back, stopped mid-chunk, or paused/cancelled: said and written already
        if wave is not None:
            next_at = await self._next_wave(run, request, quiet, wave)
            if next_at is not None:
                return next_at
        await self._finish(doc, lease, NotificationState.DONE, None)
        return None

    async def _current_wave(
        self, run: _Run, doc: dict, request: PushRequest, quiet: QuietHours | None
    ) -> list[str] | None:
        """The zones this run sends to (local time, quiet hours), saved before the first chunk so a resumed run
        sends the same wave; None: every device at once."""
        if not request.options.local_time and quiet is None:
            return None
        wave = doc.get("wave_zones")
        if wave is None:
            done_zones = set(doc.get("zones_done") or [])
            send_at = request.options.send_at
            wave = ready_zones(send_at, request.options.local_time, quiet, self._clock(), done_zones)
            await self._advance(run, None, {}, {"wave_zones": wave})
            run.restart()
        return wave

    async def _send_chunks(self, run: _Run, request: PushRequest, wave: list[str] | None, first_wave: bool) -> bool:
        """Chunk after chunk, throttled, each saved under the lease; False when the run ended early (draining,
        stopped mid-chunk, paused or cancelled), True when the audience (of this wave) is exhausted."""
        lease, doc = run.lease, run.doc
        due_at = float(doc["due_at"])
        rate = doc.get("throttle_per_second")
        throttle = _Throttle(rate, self._stopping)
        size = max(1, min(self._settings.chunk_size, int(rate))) if rate else self._settings.chunk_size
        while wave is None or wave:
            await throttle.wait()
            if self._stopping.is_set():
                await self._hand_back(run, ChunkOutcome(Counter(), list(run.skip)), "draining")
                return False
            chunk = await self._chunks.next_chunk(
                request, run.cursor, wave, first_wave, size, retry_while=lease.valid, upto=run.upto
            )
            outcome = await self._chunks.deliver(request, chunk, due_at, run.skip, lease.hold(run.id))
            throttle.sent(outcome.counts["targeted"])
            if not outcome.complete:
                await self._stopped_mid_chunk(run, outcome)
                return False
            after = await self._advance(run, chunk.next_cursor, outcome.counts, {STALLED_RUNS: 0})
            if "audience_estimate" in after:
                campaign_progress(run.doc).set(progress_ratio(after))
            run.cursor, run.skip = chunk.next_cursor, frozenset()
            if after["state"] != str(NotificationState.DISPATCHING):
                await self._interrupted(run, after["state"])
                return False
            if chunk.exhausted:
                break
        return True

    async def _next_wave(
        self, run: _Run, request: PushRequest, quiet: QuietHours | None, wave: list[str]
    ) -> float | None:
        """When zones remain, reschedule the notification for the next one's time under the lease and let it
        go (returns that time); None when this was the last wave."""
        lease = run.lease
        done = set(run.doc.get("zones_done") or []) | set(wave)
        next_at = next_ready_at(request.options.send_at, request.options.local_time, quiet, self._clock(), done)
        if next_at is None:
            return None
        extra = {"zones_done": sorted(done), "wave_zones": None, "cursor": None}
        token = lease.token
        if not await lease.write([run.id], lambda: self._leases.reschedule(run.id, token, next_at, extra)):
            raise LeaseLost
        lease.drop([run.id])
        return next_at

    async def _parts(self, doc: dict, request: PushRequest, lease: Lease) -> int:
        """How many ranges to cut this notification into before its first chunk (1: run it whole).

        A users or segment audience larger than `range_devices` is cut: a campaign's size was counted at its
        creation; a request from Kafka was not counted, and is estimated from its first page of tokens
        (`estimate_audience`). A run that has begun whole goes on whole, a range is never cut again, and a
        parent that recorded its boundaries (then crashed) is cut at those again.
        """
        if doc.get("boundaries") is not None or doc.get("ranges"):
            return 2  # any count above 1: the saved boundaries decide
        size = self._settings.range_devices
        target = request.target
        few_users = bool(target.users) and len(target.users) <= SMALL_LOOKUP  # one chunk: read whole
        if not size or doc.get("kind") == RANGE_KIND or target.tokens or few_users:
            return 1
        began = doc.get("cursor") is not None or doc.get("chunk_done") or doc.get("zones_done")
        if began or doc.get("wave_zones") is not None or int(doc.get("progress_seq") or 0):
            return 1
        estimate = doc.get("audience_estimate")
        if estimate is None:
            audience = self._audience(request)
            estimate = await self._chunks.read_retried(
                lambda: estimate_audience(self._devices, audience, size), lease.valid, notification_id=doc["_id"]
            )
        # An unbounded estimate (tokens the sample could not measure) takes the most ranges allowed.
        wanted = float(estimate) / size
        most = self._settings.max_ranges
        parts = min(most, math.ceil(wanted)) if math.isfinite(wanted) else most
        rate = doc.get("throttle_per_second")
        if rate:
            # Each range is throttled at rate/parts; one replica serves a slower campaign whole.
            parts = min(parts, int(rate // RANGE_MIN_RATE))
        return parts

    def _audience(self, request: PushRequest) -> dict:
        """The whole audience of a users or segment request, every timezone: what ranges are cut from."""
        return self._devices.audience_query(request)

    async def _split(self, run: _Run, parts: int) -> float | None:
        """Cut the audience into ranges for every replica to take (store/ranges.py); the parent then waits
        for them (never claimed again) and is settled when they are over. Returns when its ranges are due,
        so this replica claims them at once; other replicas find them at their next poll.

        Three fenced steps, each repeatable: the boundaries are saved, the ranges inserted (ids derived from
        the parent, duplicates absorbed), the parent marked split and let go.
        """
        doc, request = run.doc, run.request
        cuts = doc.get("boundaries")
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
        rate = doc.get("throttle_per_second")
        await self._ranges.create(run.id, cuts, rate / count if rate else None)
        token, check_at = run.lease.token, self._clock() + SETTLE_CHECK_SECONDS
        parent = await run.lease.write([run.id], lambda: self._ranges.mark_split(run.id, token, count, check_at))
        if parent is None:
            raise LeaseLost
        run.lease.drop([run.id])
        if parent["state"] != str(NotificationState.DISPATCHING):  # paused or cancelled during the split
            await self._ranges.follow(run.id)
        log.info("notification_split", notification_id=run.id, app=doc["app"], ranges=count,
                 audience_estimate=doc.get("audience_estimate"))
        return float(doc["due_at"])

    async def _advance(
        self, run: _Run, cursor: object, counts: Counter[str] | dict, extra: dict | None = None
    ) -> dict:
        token, seq = run.lease.token, run.seq
        after = await run.lease.write(
            [run.id], lambda: self._leases.advance(run.id, token, seq, cursor, counts, extra)
        )
        if after is None:
            raise LeaseLost
        run.seq += 1
        return after

    async def _stopped_mid_chunk(self, run: _Run, outcome: ChunkOutcome) -> None:
        """The chunk was cut short: by a lost lease (write nothing), or a lapse / the drain deadline."""
        reason = run.lease.interruption(run.id) or Interruption.LAPSED
        if reason is Interruption.LOST:
            raise LeaseLost
        await self._hand_back(run, outcome, str(reason))

    async def _hand_back(self, run: _Run, outcome: ChunkOutcome, why: str) -> None:
        """Give the lease up at the start of the current chunk, with what of it was answered already."""
        token, saved = run.lease.token, HandBack(run.id, run.cursor, outcome.counts, outcome.done)
        if not await run.lease.write([run.id], lambda: self._leases.hand_back(token, [saved])):
            raise LeaseLost
        run.lease.drop([run.id])
        log.info("notification_handed_back", notification_id=run.id, reason=why, answered_in_chunk=len(outcome.done))

    async def _interrupted(self, run: _Run, state: str) -> None:
        """Paused or cancelled between chunks (by the API): stop here, keep the cursor, drop the lease."""
        token = run.lease.token
        await run.lease.write([run.id], lambda: self._leases.release([run.id], token))
        run.lease.drop([run.id])
        doc = run.doc
        log.info("notification_interrupted", notification_id=run.id, state=state)
        if doc.get("kind") == RANGE_KIND:
            if state == str(NotificationState.CANCELLED):
                await self._settle_parent(doc)  # this range's last counts are in: the campaign may be over
            return
        if state == str(NotificationState.CANCELLED):
            metrics.NOTIFICATIONS_FINISHED.labels(doc["app"], state).inc()
            final = await self._notifications.get(run.id) or {}
            event = OutcomeEvent.of(doc, state, final.get("counts", {}), None, float(final.get("finished_at") or 0))
            await self._announcer.announce([event])
        elif state != PAUSED:
            log.warning("notification_state_changed", notification_id=run.id, state=state)

    async def _finish(self, doc: dict, lease: Lease, state: NotificationState, error: str | None) -> None:
        notification_id, token, now = doc["_id"], lease.token, self._clock()
        # A range is not announced: its parent is, once, with the sum of its ranges (store/ranges.py).
        announce = doc.get("kind") != RANGE_KIND
        counts = await lease.write(
            [notification_id],
            lambda: self._leases.finish(notification_id, token, state, error, now, announce=announce),
        )
        if counts is None:
            raise LeaseLost
        lease.drop([notification_id])
        if not announce:
            log.info("range_finished", notification_id=notification_id, state=str(state), counts=counts)
            await self._settle_parent(doc)
            return
        await announce_finished(self._announcer, doc, str(state), counts, error, now)

    async def _settle_parent(self, range_doc: dict) -> None:
        """Settle the parent if this was its last range over; a failure is left to the outcome sweep's check."""
        try:
            await self._settler.settle(range_doc["parent"])
        except Exception as exc:
            log.warning("settle_failed", notification_id=range_doc["parent"], error=type(exc).__name__)


class _Run:
    """Where one run of a notification stands: the saved cursor, the devices of its chunk already answered
    (from a run stopped mid-chunk), and the progress number of its next write."""

    def __init__(self, doc: dict, request: PushRequest, lease: Lease, seq: int) -> None:
        self.doc = doc
        self.id: str = doc["_id"]
        self.request = request
        self.lease = lease
        self.seq = seq
        self.skip: frozenset[str] = frozenset(doc.get("chunk_done") or ())
        # A range reads its slice of the audience: tokens after bounds[0], up to bounds[1] (store/ranges.py).
        bounds = doc.get("bounds") or (None, None)
        self.after: str | None = bounds[0]
        self.upto: str | None = bounds[1]
        self.cursor: object = self._start(doc.get("cursor"))

    def restart(self) -> None:
        """From the start of the audience, nothing of it answered (a new local-time wave)."""
        self.skip = frozenset()
        self.cursor = self._start(None)

    def _start(self, saved: Any) -> Any:
        """Where reading starts: explicit tokens are paged by position (None: 0), audiences by a cursor
        (store/devices.py `resume_point`)."""
        if self.request.target.tokens:
            return saved
        if self.doc.get("kind") == RANGE_KIND:
            return saved if saved is not None else {"token": self.after or ""}
        return resume_point(saved, self.skip)
