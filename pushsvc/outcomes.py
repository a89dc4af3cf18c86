"""Outcome events on Kafka `push.outcomes`: one per notification that reached a final state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer

from pushsvc.logging import get_logger
from pushsvc.store.notifications import NotificationStore

log = get_logger(__name__)


@dataclass(frozen=True)
class OutcomeEvent:
    notification_id: str
    app: str
    state: str
    counts: Mapping[str, int]
    error: str | None

    def encode(self, finished_at: float) -> bytes:
        return orjson.dumps(
            {
                "id": self.notification_id,
                "app": self.app,
                "state": self.state,
                "counts": dict(self.counts),
                "error": self.error,
                "finished_at": finished_at,
            }
        )


class OutcomePublisher:
    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(
        self, notification_id: str, app: str, state: str, counts: Mapping[str, int], error: str | None
    ) -> bool:
        """True once the broker acknowledged the event."""
        return bool(await self.publish_many([OutcomeEvent(notification_id, app, state, counts, error)]))

    async def publish_many(self, events: Sequence[OutcomeEvent]) -> list[str]:
        """Send all events at once (the producer batches them); returns the ids the broker acknowledged."""
        if self._producer is None or not events:
            return []
        now = time.time()
        try:
            futures = [
                await self._producer.send(self._topic, event.encode(now), key=event.notification_id.encode())
                for event in events
            ]
        except Exception as exc:  # not even queued (producer closed): all stay pending for the sweep
            log.warning("outcome_events_not_published", count=len(events), error=str(exc))
            return []
        acknowledged: list[str] = []
        for event, result in zip(events, await asyncio.gather(*futures, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                # MongoDB keeps event_pending set, so the outcome sweep publishes it later.
                log.warning("outcome_event_not_published", notification_id=event.notification_id, error=str(result))
            else:
                acknowledged.append(event.notification_id)
        return acknowledged


class OutcomeSweeper:
    """Publishes outcome events a replica did not get to (killed between "done" and the Kafka send).

    At-least-once: a consumer may see an event twice (e.g. the sweep and a slow runner both send it) and
    should key on the notification id.
    """

    def __init__(
        self,
        notifications: NotificationStore,
        publisher: OutcomePublisher,
        grace_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifications = notifications
        self._publisher = publisher
        # The runner announces right after finishing; only events older than this are the sweep's.
        self._grace = grace_seconds
        self._clock = clock

    async def sweep_once(self, limit: int = 500) -> int:
        pending = await self._notifications.events_pending(self._clock() - self._grace, limit)
        events = [
            OutcomeEvent(doc["_id"], doc["app"], doc["state"], doc.get("counts", {}), doc.get("error"))
            for doc in pending
        ]
        published = await self._publisher.publish_many(events)
        await self._notifications.mark_events_published(published)
        if published:
            log.info("outcome_events_swept", published=len(published))
        return len(published)
