"""The `notifications` collection: recording requests, lease-based claiming, progress and counters.

Times are stored as epoch seconds (floats): they compare and index the same way on every MongoDB
implementation, and the scheduler only ever needs "<= now".
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from pushsvc.model import NotificationState, PushRequest
from pushsvc.store.database import Database

DUPLICATE_KEY = 11000
# Final-outcome counters kept on each notification; "pending" is derived from them.
COUNT_KEYS = (
    "targeted",
    "delivered",
    "invalid_token",
    "rejected",
    "failed",
    "auth_error",
    "unknown_token",
    "opted_out",
)
# The counters that are final outcomes for a targeted device.
FINAL_KEYS = COUNT_KEYS[1:]
ACTIVE_STATES = [NotificationState.ACCEPTED, NotificationState.SCHEDULED, NotificationState.DISPATCHING]
# A paused notification (a campaign) keeps its cursor and is not claimed until resumed.
PAUSED = "paused"


@dataclass(frozen=True)
class RecordResult:
    inserted: list[str]
    duplicates: list[str]


def new_document(
    request: PushRequest, raw: Mapping[str, Any], source: str, due_at: float, now: float
) -> dict:
    state = NotificationState.SCHEDULED if due_at > now else NotificationState.ACCEPTED
    return {
        "_id": request.id,
        "app": request.app,
        # Kept as the validated JSON text: message data keys may contain '.' or '$', which MongoDB
        # field names do not accept everywhere, and the dispatcher re-parses it with the same validator.
        "request": orjson.dumps(raw).decode(),
        "source": source,
        "state": str(state),
        "created_at": now,
        "due_at": due_at,
        "lease_owner": None,
        "lease_until": 0.0,
        "cursor": None,
        "counts": dict.fromkeys(COUNT_KEYS, 0),
    }


class NotificationStore:
    def __init__(self, database: Database) -> None:
        self._collection = database.notifications

    @property
    def collection(self) -> Any:
        return self._collection

    async def record(self, documents: Sequence[dict]) -> RecordResult:
        """Insert new requests in one round trip; ids already recorded are reported as duplicates."""
        if not documents:
            return RecordResult([], [])
        ids = [d["_id"] for d in documents]
        try:
            await self._collection.insert_many(list(documents), ordered=False)
            return RecordResult(ids, [])
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            duplicate_indexes = {e["index"] for e in errors}
            return RecordResult(
                [i for n, i in enumerate(ids) if n not in duplicate_indexes],
                [i for n, i in enumerate(ids) if n in duplicate_indexes],
            )

    async def get(self, notification_id: str) -> dict | None:
        return await self._collection.find_one({"_id": notification_id})

    async def claim_due(self, owner: str, now: float, lease_seconds: float) -> dict | None:
        """Take the oldest due notification nobody holds a live lease on (a crashed owner's lease expires)."""
        return await self._collection.find_one_and_update(
            {
                "state": {"$in": [str(s) for s in ACTIVE_STATES]},
                "due_at": {"$lte": now},
                "lease_until": {"$lte": now},
            },
            {
                "$set": {
                    "state": str(NotificationState.DISPATCHING),
                    "lease_owner": owner,
                    "lease_until": now + lease_seconds,
                }
            },
            sort=[("due_at", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def renew_lease(self, notification_id: str, owner: str, until: float) -> bool:
        result = await self._collection.update_one(
            {"_id": notification_id, "lease_owner": owner}, {"$set": {"lease_until": until}}
        )
        return result.matched_count == 1

    async def advance(
        self,
        notification_id: str,
        owner: str,
        cursor: Any,
        counts: Mapping[str, int],
        extra: Mapping[str, Any] | None = None,
    ) -> dict | None:
        """Save a finished chunk: move the cursor and add its counts, only while we still hold the lease.

        One atomic update per chunk means a crash repeats at most the chunk that was in flight. Returns
        the notification's state, counts and audience estimate after the update (the runner stops when
        the state is no longer dispatching: paused or cancelled meanwhile), or None if the lease is lost.
        """
        update: dict[str, Any] = {"$set": {"cursor": cursor, **(extra or {})}}
        increments = {f"counts.{k}": v for k, v in counts.items() if v}
        if increments:
            update["$inc"] = increments
        return await self._collection.find_one_and_update(
            {"_id": notification_id, "lease_owner": owner},
            update,
            projection={"state": 1, "counts": 1, "audience_estimate": 1},
            return_document=ReturnDocument.AFTER,
        )

    async def release(self, notification_id: str, owner: str) -> bool:
        """Give up the lease, keeping state and cursor: whoever claims it next resumes where we stopped."""
        result = await self._collection.update_one(
            {"_id": notification_id, "lease_owner": owner}, {"$set": {"lease_owner": None, "lease_until": 0.0}}
        )
        return result.matched_count == 1

    async def transition(
        self, notification_id: str, from_states: Sequence[str], update: Mapping[str, Any]
    ) -> dict | None:
        """Move a notification between states if it is in one of `from_states`; returns the new document."""
        return await self._collection.find_one_and_update(
            {"_id": notification_id, "state": {"$in": list(from_states)}},
            {"$set": dict(update)},
            return_document=ReturnDocument.AFTER,
        )

    async def reschedule(
        self, notification_id: str, owner: str, due_at: float, extra: Mapping[str, Any]
    ) -> bool:
        """Hand the notification back to the scheduler for a later wave (local time) and drop the lease."""
        result = await self._collection.update_one(
            {"_id": notification_id, "lease_owner": owner},
            {
                "$set": {
                    "state": str(NotificationState.SCHEDULED),
                    "due_at": due_at,
                    "lease_owner": None,
                    "lease_until": 0.0,
                    **extra,
                }
            },
        )
        return result.matched_count == 1

    async def finish(
        self, notification_id: str, owner: str, state: NotificationState, error: str | None = None
    ) -> dict | None:
        """Final state while we hold the lease; returns the final counts, or None if the lease is lost."""
        # Only from dispatching: a cancel that landed meanwhile is not overwritten.
        doc = await self._collection.find_one_and_update(
            {"_id": notification_id, "lease_owner": owner, "state": str(NotificationState.DISPATCHING)},
            {
                "$set": {
                    "state": str(state),
                    "error": error,
                    "finished_at": time.time(),
                    "lease_owner": None,
                    "lease_until": 0.0,
                    # Cleared once push.outcomes has the event; the outcome sweep publishes any left behind.
                    "event_pending": True,
                }
            },
            projection={"counts": 1},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else dict(doc.get("counts", {}))

    async def release_all(self, owner: str) -> int:
        """Drop every dispatching lease `owner` still holds (shutdown); cursors stay where they are."""
        result = await self._collection.update_many(
            {"lease_owner": owner, "state": str(NotificationState.DISPATCHING)},
            {"$set": {"lease_owner": None, "lease_until": 0.0}},
        )
        return result.modified_count

    async def mark_event_published(self, notification_id: str) -> None:
        await self._collection.update_one(
            {"_id": notification_id, "event_pending": True}, {"$set": {"event_pending": False}}
        )

    async def events_pending(self, finished_before: float, limit: int) -> list[dict]:
        """Final notifications whose outcome event was never confirmed (the replica died in between)."""
        cursor = self._collection.find(
            {"event_pending": True, "finished_at": {"$lte": finished_before}},
            {"app": 1, "state": 1, "counts": 1, "error": 1},
        ).limit(limit)
        return [doc async for doc in cursor]

    async def backlog(self, now: float) -> tuple[int, int]:
        """(due, future) counts of notifications still waiting to be worked on."""
        waiting = [
            str(NotificationState.ACCEPTED),
            str(NotificationState.SCHEDULED),
            str(NotificationState.DISPATCHING),
        ]
        due = await self._collection.count_documents({"state": {"$in": waiting}, "due_at": {"$lte": now}})
        future = await self._collection.count_documents({"state": {"$in": waiting}, "due_at": {"$gt": now}})
        return due, future
