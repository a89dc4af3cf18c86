"""Outcome events owed: `event_pending` on final notifications until push.outcomes has acknowledged their event.

Set by a finish (store/leases.py), a cancel or a settle (store/ranges.py); cleared here, or by the next finish
write itself (`events_published` in the same bulk write: outcomes.Announcer).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import UpdateMany

from pushsvc.store.database import Database


def events_published(ids: list[str]) -> UpdateMany:
    """Clear `event_pending` on notifications whose outcome event the broker acknowledged."""
    return UpdateMany({"_id": {"$in": ids}, "event_pending": {"$eq": True}}, {"$set": {"event_pending": False}})


class EventStore:
    def __init__(self, database: Database) -> None:
        self._collection = database.notifications

    async def mark_published(self, notification_ids: Sequence[str]) -> None:
        if notification_ids:
            await self._collection.bulk_write([events_published(list(notification_ids))])

    async def pending(self, finished_before: float, limit: int) -> list[dict]:
        """Final notifications whose outcome event was never confirmed (the replica died in between)."""
        cursor = self._collection.find(
            # `$eq` spelled out (same meaning): nx-27017 scans the collection for a bare equality.
            {"event_pending": {"$eq": True}, "finished_at": {"$lte": finished_before}},
            {"app": 1, "request_id": 1, "state": 1, "counts": 1, "error": 1, "finished_at": 1, "dry_run": 1,
             "trace": 1},
        ).limit(limit).batch_size(limit)
        return [doc async for doc in cursor]
