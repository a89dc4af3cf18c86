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
from collections.abc import Callable
from typing import Any

import orjson

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.chunks import ChunkOutcome, ChunkWorker
from pushsvc.logging import get_logger
from pushsvc.model import NotificationState, PushRequest, parse_request
from pushsvc.outcomes import Announcer, OutcomeEvent
from pushsvc.scheduling.due import next_ready_at, quiet_from_doc, ready_zones
from pushsvc.scheduling.lease import Interruption, Lease, LeaseLost
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.store.devices import resume_point
from pushsvc.store.notifications import (
    FINAL_KEYS,
    PAUSED,
    STALLED_RUNS,
    HandBack,
    NotificationStore,
    request_id_of,
)

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
        announcer: Announcer,
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifications = notifications
        self._chunks = chunks
        self._announcer = announcer
        self._settings = settings
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
        quiet = quiet_from_doc(doc.get("quiet_hours"))
        wave: list[str] | None = None
        if request.options.local_time or quiet is not None:
            wave = doc.get("wave_zones")
            if wave is None:
                done_zones = set(doc.get("zones_done") or [])
                send_at = request.options.send_at
                wave = ready_zones(send_at, request.options.local_time, quiet, self._clock(), done_zones)
                await self._advance(run, None, {}, {"wave_zones": wave})
                run.restart()
        first_wave = not doc.get("zones_done")
        due_at = float(doc["due_at"])
        rate = doc.get("throttle_per_second")
        throttle = _Throttle(rate, self._stopping)
        size = max(1, min(self._settings.chunk_size, int(rate))) if rate else self._settings.chunk_size
        while wave is None or wave:
            await throttle.wait()
            if self._stopping.is_set():
                await self._hand_back(run, ChunkOutcome(Counter(), list(run.skip)), "draining")
                return None
            chunk = await self._chunks.next_chunk(
                request, run.cursor, wave, first_wave, size, retry_while=lease.valid
            )
            outcome = await self._chunks.deliver(request, chunk, due_at, run.skip, lease.hold(run.id))
            throttle.sent(outcome.counts["targeted"])
            if not outcome.complete:
                await self._stopped_mid_chunk(run, outcome)
                return None
            after = await self._advance(run, chunk.next_cursor, outcome.counts, {STALLED_RUNS: 0})
            if "audience_estimate" in after:
                _campaign_progress(run.doc).set(progress_ratio(after))
            run.cursor, run.skip = chunk.next_cursor, frozenset()
            if after["state"] != str(NotificationState.DISPATCHING):
                await self._interrupted(run, after["state"])
                return None
            if chunk.exhausted:
                break
        if wave is not None:
            done = set(doc.get("zones_done") or []) | set(wave)
            next_at = next_ready_at(request.options.send_at, request.options.local_time, quiet, self._clock(), done)
            if next_at is not None:
                extra = {"zones_done": sorted(done), "wave_zones": None, "cursor": None}
                token = lease.token
                if not await lease.write(
                    [run.id], lambda: self._notifications.reschedule(run.id, token, next_at, extra)
                ):
                    raise LeaseLost
                lease.drop([run.id])
                return next_at
        await self._finish(doc, lease, NotificationState.DONE, None)
        return None

    async def _advance(
        self, run: _Run, cursor: object, counts: Counter[str] | dict, extra: dict | None = None
    ) -> dict:
        token, seq = run.lease.token, run.seq
        after = await run.lease.write(
            [run.id], lambda: self._notifications.advance(run.id, token, seq, cursor, counts, extra)
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
        if not await run.lease.write([run.id], lambda: self._notifications.hand_back(token, [saved])):
            raise LeaseLost
        run.lease.drop([run.id])
        log.info("notification_handed_back", notification_id=run.id, reason=why, answered_in_chunk=len(outcome.done))

    async def _interrupted(self, run: _Run, state: str) -> None:
        """Paused or cancelled between chunks (by the API): stop here, keep the cursor, drop the lease."""
        token = run.lease.token
        await run.lease.write([run.id], lambda: self._notifications.release([run.id], token))
        run.lease.drop([run.id])
        doc = run.doc
        log.info("notification_interrupted", notification_id=run.id, state=state)
        if state == str(NotificationState.CANCELLED):
            metrics.NOTIFICATIONS_FINISHED.labels(doc["app"], state).inc()
            final = await self._notifications.get(run.id) or {}
            event = OutcomeEvent.of(doc, state, final.get("counts", {}), None, float(final.get("finished_at") or 0))
            await self._announcer.announce([event])
        elif state != PAUSED:
            log.warning("notification_state_changed", notification_id=run.id, state=state)

    async def _finish(self, doc: dict, lease: Lease, state: NotificationState, error: str | None) -> None:
        notification_id, token, now = doc["_id"], lease.token, self._clock()
        counts = await lease.write(
            [notification_id], lambda: self._notifications.finish(notification_id, token, state, error, now)
        )
        if counts is None:
            raise LeaseLost
        lease.drop([notification_id])
        if doc.get("kind") == "campaign":
            _campaign_progress(doc).set(1.0)
        metrics.NOTIFICATIONS_FINISHED.labels(doc["app"], str(state)).inc()
        log.info(
            "notification_finished", notification_id=notification_id, app=doc["app"], state=str(state), counts=counts
        )
        await self._announcer.announce([OutcomeEvent.of(doc, str(state), counts, error, now)])


def _campaign_progress(doc: dict) -> Any:
    return metrics.CAMPAIGN_PROGRESS.labels(doc["app"], request_id_of(doc).removeprefix(CAMPAIGN_PREFIX))


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
        self.cursor: object = self._start(doc.get("cursor"))

    def restart(self) -> None:
        """From the start of the audience, nothing of it answered (a new local-time wave)."""
        self.skip = frozenset()
        self.cursor = self._start(None)

    def _start(self, saved: Any) -> Any:
        """Where reading starts: explicit tokens are paged by position (None: 0), audiences by a cursor
        (store/devices.py `resume_point`)."""
        return saved if self.request.target.tokens else resume_point(saved, self.skip)
