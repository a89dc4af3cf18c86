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
from pushsvc.store.devices import SMALL_LOOKUP
from pushsvc.store.notifications import COUNT_KEYS, Final, NotificationStore

log = get_logger(__name__)


@dataclass(frozen=True)
class SmallNotification:
    doc: dict
    request: PushRequest


def as_small(doc: dict) -> SmallNotification | None:
    """The notification if the batch lane can run it: a few tokens or users, sent now, no campaign pacing.

    Everything else (segments, long lists, local-time waves, quiet hours, throttled or resumable
    campaigns) needs per-chunk progress and goes to the fan-out runner.
    """
    if doc.get("kind") or doc.get("cursor") is not None or doc.get("quiet_hours") or doc.get("throttle_per_second"):
        return None
    try:
        request = parse_request(orjson.loads(doc["request"]))
    except (RequestError, orjson.JSONDecodeError):
        return None  # the runner records why it cannot be sent
    target = request.target
    few = (target.tokens and len(target.tokens) <= SMALL_LOOKUP) or (
        target.users and len(target.users) <= SMALL_LOOKUP
    )
    if not few or request.options.local_time:
        return None
    return SmallNotification(doc, request)


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

    async def run(self, batch: Sequence[SmallNotification]) -> None:
        claim = batch[0].doc["claim"]
        ids = [item.doc["_id"] for item in batch]
        heartbeat = asyncio.create_task(self._heartbeat(claim, ids))
        try:
            results = await asyncio.gather(*(self._send(item) for item in batch))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        finals = [
            Final(item.doc["_id"], NotificationState.DONE, counts) for item, counts in zip(batch, results, strict=True)
        ]
        finished = set(await self._notifications.finish_many(claim, finals))
        if len(finished) < len(finals):
            log.warning("lease_lost", notifications=len(finals) - len(finished))
        events = []
        for item, final in zip(batch, finals, strict=True):
            if final.notification_id not in finished:
                continue
            counts = {key: int(final.counts.get(key, 0)) for key in COUNT_KEYS}
            metrics.NOTIFICATIONS_FINISHED.labels(item.request.app, str(final.state)).inc()
            log.info(
                "notification_finished",
                notification_id=final.notification_id,
                app=item.request.app,
                state=str(final.state),
                counts=counts,
            )
            events.append(OutcomeEvent(final.notification_id, item.request.app, str(final.state), counts, None))
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

    async def _heartbeat(self, claim: str, ids: list[str]) -> None:
        """Keep the batch's leases while retries run (a slow provider can outlast one lease)."""
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._notifications.renew_claim(claim, ids, self._clock() + self._settings.lease_seconds)
            except Exception as exc:  # MongoDB unreachable: try again next beat, the lease is still ours
                log.warning("lease_renewal_failed", error=str(exc))
                continue
            if held < len(ids):
                # Another replica took some over after a stall; finish_many leaves those to it.
                log.warning("lease_lost", notifications=len(ids) - held)
