"""The batch lane: transactional notifications (a few tokens or users) run together, one claim at a time.

Most traffic is small: a notification for one user's devices. Run one by one, each would cost its own
lease heartbeat, progress update, final update and outcome round trip — a fixed cost per notification
that dwarfs its one or two deliveries. Here every notification of a claim is resolved and delivered
concurrently, then all of them are finished in one bulk write and announced in one producer batch.

Guarantees are those of a single chunk: progress is saved once, at the end, so a crash (or a lost lease)
repeats the notification; the claim token keeps a replica from finishing what another one took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.chunks import ChunkWorker
from pushsvc.logging import get_logger
from pushsvc.model import NotificationState, PushRequest, RequestError, parse_request
from pushsvc.outcomes import OutcomeEvent, OutcomePublisher
from pushsvc.store.notifications import LANE_BATCH, Final, NotificationStore, lane_for

log = get_logger(__name__)

# How often a batch finishes the notifications that are done while others are still retrying.
FINISH_EVERY_SECONDS = 0.5


@dataclass(frozen=True)
class SmallNotification:
    doc: dict
    request: PushRequest


def as_small(doc: dict) -> SmallNotification | None:
    """The notification if the batch lane can run it: a few tokens or users, sent now, no campaign pacing.

    Everything else (segments, long lists, local-time waves, quiet hours, throttled or resumable
    campaigns) needs per-chunk progress and goes to the fan-out runner. The lane was chosen when the
    request was recorded; this re-checks what the runner relies on.
    """
    if doc.get("lane") != LANE_BATCH or doc.get("kind") or doc.get("cursor") is not None:
        return None
    if doc.get("quiet_hours") or doc.get("throttle_per_second"):
        return None
    try:
        request = parse_request(orjson.loads(doc["request"]))
    except (RequestError, orjson.JSONDecodeError):
        return None  # the runner records why it cannot be sent
    return SmallNotification(doc, request) if lane_for(request) == LANE_BATCH else None


class BatchRunner:
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

    async def run(self, batch: Sequence[SmallNotification], on_done: Callable[[int], None] = lambda n: None) -> None:
        """Send and finish the batch; `on_done(n)` reports n more notifications off our hands."""
        claim = batch[0].doc["claim"]
        sending = {asyncio.ensure_future(self._send(item)): item for item in batch}
        held = {item.doc["_id"] for item in batch}
        heartbeat = asyncio.create_task(self._heartbeat(claim, held))
        try:
            pending = set(sending)
            while pending:
                # Finish what is done every so often: one notification retrying against a slow provider
                # must not hold back the outcome of the rest of its batch.
                done, pending = await asyncio.wait(pending, timeout=FINISH_EVERY_SECONDS)
                ready: list[tuple[SmallNotification, Counter[str]]] = []
                for task in done:
                    item = sending[task]
                    held.discard(item.doc["_id"])
                    error = task.exception()
                    if error is not None:
                        # Only this one: its lease lapses and a later claim sends it again.
                        log.error("notification_run_failed", notification_id=item.doc["_id"], error=repr(error))
                    else:
                        ready.append((item, task.result()))
                await self._finish(claim, ready)
                on_done(len(done))
        finally:
            heartbeat.cancel()
            for task in sending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _finish(self, claim: str, ready: Sequence[tuple[SmallNotification, Counter[str]]]) -> None:
        """One bulk write for the final states, one producer batch for the outcome events."""
        if not ready:
            return
        finals = [Final(item.doc["_id"], NotificationState.DONE, counts) for item, counts in ready]
        finished = set(await self._notifications.finish_many(claim, finals))
        if len(finished) < len(finals):
            log.warning("lease_lost", notifications=len(finals) - len(finished))
        events = []
        for (item, _), final in zip(ready, finals, strict=True):
            if final.notification_id not in finished:
                continue
            metrics.NOTIFICATIONS_FINISHED.labels(item.request.app, str(final.state)).inc()
            log.info(
                "notification_finished",
                notification_id=final.notification_id,
                app=item.request.app,
                state=str(final.state),
                counts=final.counts,
            )
            events.append(
                OutcomeEvent(final.notification_id, item.request.app, str(final.state), final.counts, None)
            )
        await self._notifications.mark_events_published(await self._outcomes.publish_many(events))

    async def _send(self, item: SmallNotification) -> Counter[str]:
        """All chunks of one notification (one, in practice), counted from what was saved before."""
        counts: Counter[str] = Counter({k: int(v) for k, v in (item.doc.get("counts") or {}).items()})
        due_at = float(item.doc["due_at"])
        cursor = None
        while True:
            chunk = await self._chunks.next_chunk(
                item.request, cursor, None, count_unknown=True, size=self._settings.chunk_size
            )
            counts.update(await self._chunks.deliver(item.request, chunk, due_at))
            if chunk.exhausted:
                return counts
            cursor = chunk.next_cursor

    async def _heartbeat(self, claim: str, held: set[str]) -> None:
        """Keep the leases of the notifications still sending (a slow provider can outlast one lease)."""
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(held)
            try:
                kept = await self._notifications.renew_claim(claim, ids, self._clock() + self._settings.lease_seconds)
            except Exception as exc:  # MongoDB unreachable: try again next beat, the lease is still ours
                log.warning("lease_renewal_failed", error=str(exc))
                continue
            if kept < len(ids):
                # Another replica took some over after a stall; finish_many leaves those to it.
                log.warning("lease_lost", notifications=len(ids) - kept)
