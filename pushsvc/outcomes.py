"""Outcome events on Kafka `push.outcomes`: one per notification that reached a final state."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from aiokafka import AIOKafkaProducer

from pushsvc.logging import get_logger

log = get_logger(__name__)


class OutcomePublisher:
    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(
        self, notification_id: str, app: str, state: str, counts: Mapping[str, int], error: str | None
    ) -> None:
        if self._producer is None:
            return
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
        except Exception as exc:
            # The notification's state in MongoDB is the record of truth; the event is a courtesy feed.
            log.warning("outcome_event_not_published", notification_id=notification_id, error=str(exc))
