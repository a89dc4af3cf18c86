"""Outcome events on Kafka `push.outcomes`: one per notification that reached a final state."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson
from aiokafka import AIOKafkaProducer

from pushsvc.logging import get_logger
from pushsvc.store.notifications import NotificationStore

log = get_logger(__name__)


class OutcomePublisher:
    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(
        self, notification_id: str, app: str, state: str, counts: Mapping[str, int], error: str | None
    ) -> bool:
        """True once the broker acknowledged the event."""
        if self._producer is None:
            return False
        event = {
            "id": notification_id,
            "app": app,
            "state": state,
            "counts": dict(counts),
            "error": error,
            "finished_at": time.time(),
        }
        try:
            await self._producer.send_and_wait(self._topic, orjson.dumps(event), key=notification_id.encode())
            return True
        except Exception as exc:
            # MongoDB keeps event_pending set, so the outcome sweep publishes it later.
            log.warning("outcome_event_not_published", notification_id=notification_id, error=str(exc))
            return False


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
        published = 0
        for doc in await self._notifications.events_pending(self._clock() - self._grace, limit):
            ok = await self._publisher.publish(
                doc["_id"], doc["app"], doc["state"], doc.get("counts", {}), doc.get("error")
            )
            if ok:
                await self._notifications.mark_event_published(doc["_id"])
                published += 1
        if published:
            log.info("outcome_events_swept", published=published)
        return published
