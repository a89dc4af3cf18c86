"""Turning raw request bytes or objects into recorded notifications; shared by Kafka and the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pushsvc import metrics
from pushsvc.model import PushRequest, RequestError, parse_request
from pushsvc.scheduling.due import initial_due_at
from pushsvc.store.notifications import NotificationStore, RecordResult, new_document


@dataclass(frozen=True)
class Rejection:
    reason: str  # invalid_json | invalid_request | too_large
    detail: str
    field: str | None = None


@dataclass(frozen=True)
class Accepted:
    request: PushRequest
    raw: dict[str, Any]


def decode(value: bytes | None, max_bytes: int, known_apps: frozenset[str]) -> Accepted | Rejection:
    if value is None:
        return Rejection("invalid_json", "empty message (null value)")
    if len(value) > max_bytes:
        return Rejection("too_large", f"message is {len(value)} bytes, limit {max_bytes}")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"not valid JSON: {exc}")
    return validate(raw, known_apps)


def validate(raw: Any, known_apps: frozenset[str]) -> Accepted | Rejection:
    try:
        return Accepted(parse_request(raw, known_apps), raw)
    except RequestError as exc:
        return Rejection("invalid_request", str(exc), exc.field)
    except RecursionError:
        return Rejection("invalid_request", "nesting too deep")


class Intake:
    def __init__(
        self,
        notifications: NotificationStore,
        on_due: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ):
        self._notifications = notifications
        self._on_due = on_due
        self._clock = clock

    async def record(self, accepted: Sequence[Accepted], source: str) -> RecordResult:
        """Record validated requests in one round trip; a request id seen before is a duplicate, not resent."""
        now = self._clock()
        # Within one batch the first occurrence of an id wins; later ones are duplicates like redeliveries.
        unique: dict[str, Accepted] = {}
        batch_duplicates: list[str] = []
        for item in accepted:
            if item.request.id in unique:
                batch_duplicates.append(item.request.id)
            else:
                unique[item.request.id] = item
        documents = [
            new_document(a.request, a.raw, source, initial_due_at(a.request.options, now), now)
            for a in unique.values()
        ]
        result = await self._notifications.record(documents)
        duplicates = result.duplicates + batch_duplicates
        if result.inserted:
            metrics.REQUESTS_INGESTED.labels(source, "accepted").inc(len(result.inserted))
            if any(d["due_at"] <= now for d in documents):
                self._on_due()
        if duplicates:
            metrics.REQUESTS_INGESTED.labels(source, "duplicate").inc(len(duplicates))
        return RecordResult(result.inserted, duplicates)
