"""The `notifications` collection: recording requests, lease-based claiming, progress and counters.

Times are stored as epoch seconds (floats): they compare and index the same way on every MongoDB
implementation, and the scheduler only ever needs "<= now".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError

from pushsvc.model import NotificationState, PushRequest
from pushsvc.store.database import Database
from pushsvc.store.devices import SMALL_LOOKUP

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
_ACTIVE = [str(s) for s in ACTIVE_STATES]
# A paused notification (a campaign) keeps its cursor and is not claimed until resumed.
PAUSED = "paused"
# Claim lanes, decided when a request is recorded. "batch": a few tokens or users, sent now, run many at a
# time (dispatch/batch.py). "fanout": segments, long lists, local-time waves and campaigns, run chunk by
# chunk (dispatch/fanout.py). Claimed separately, so busy or retrying campaigns never hold up
# transactional pushes and a burst of those never starves a campaign.
LANE_BATCH = "batch"
LANE_FANOUT = "fanout"


def lane_for(request: PushRequest) -> str:
    target = request.target
    few = (bool(target.tokens) and len(target.tokens) <= SMALL_LOOKUP) or (
        bool(target.users) and len(target.users) <= SMALL_LOOKUP
    )
    return LANE_BATCH if few and not request.options.local_time else LANE_FANOUT


def _due_at(doc: Mapping[str, Any]) -> float:
    return float(doc["due_at"])


def full_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Every counter of COUNT_KEYS, zero where `counts` has none."""
    return {key: int(counts.get(key, 0)) for key in COUNT_KEYS}


@dataclass(frozen=True)
class Final:
    """The end of a notification run by the batch lane: its final state and complete counts."""

    notification_id: str
    state: NotificationState
    counts: Mapping[str, int]  # completed to every COUNT_KEYS counter: written as the notification's counts
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", full_counts(self.counts))


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
        "lane": lane_for(request),
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

    async def claim_due(
        self,
        owner: str,
        now: float,
        lease_seconds: float,
        limit: int,
        lane: str,
        states: Sequence[NotificationState] = ACTIVE_STATES,
    ) -> list[dict]:
        """Take up to `limit` of the oldest due notifications of `lane` in `states` nobody holds a lease on.

        A crashed owner's lease expires, so its notifications are claimable again. Several replicas may
        pick the same candidates: the conditional update gives each notification to exactly one, and the
        claim token written with it tells this replica which ones it won.
        """
        # One equality query per claimable state, merged by due_at: each is a range scan of the
        # (lane, state, due_at) index on any MongoDB; `state: {$in: [...]}` makes nx-27017 scan the collection.
        lookups = [
            self._collection.find(
                {
                    "lane": {"$eq": lane},
                    "state": {"$eq": str(state)},
                    "due_at": {"$lte": now},
                    "lease_until": {"$lte": now},
                }
            )
            .sort("due_at", 1)
            .limit(limit)
            .to_list(length=limit)
            for state in states
        ]
        candidates = sorted((c for found in await asyncio.gather(*lookups) for c in found), key=_due_at)[:limit]
        if not candidates:
            return []
        ids = [c["_id"] for c in candidates]
        claim = f"{owner}/{uuid.uuid4().hex}"
        claimed = {
            "state": str(NotificationState.DISPATCHING),
            "lease_owner": owner,
            "lease_until": now + lease_seconds,
            "claim": claim,
        }
        won = await self._collection.update_many(
            {"_id": {"$in": ids}, "state": {"$in": _ACTIVE}, "lease_until": {"$lte": now}}, {"$set": claimed}
        )
        if won.modified_count == len(ids) and all(c["state"] != str(NotificationState.DISPATCHING) for c in candidates):
            # Won them all, and no previous owner could have written to them since we read them (an
            # orphaned, expired lease might still be saving a chunk): the documents read are current.
            return [{**c, **claimed} for c in candidates]
        if not won.modified_count:
            return []
        docs = await self._collection.find({"_id": {"$in": ids}, "claim": {"$eq": claim}}).to_list(length=limit)
        return sorted(docs, key=_due_at)

    async def renew_claim(self, claim: str, ids: Sequence[str], until: float) -> int:
        """Extend the lease of notifications still held under `claim`; returns how many still are."""
        result = await self._collection.update_many(
            {"_id": {"$in": list(ids)}, "claim": {"$eq": claim}, "lease_until": {"$gt": 0.0}},
            {"$set": {"lease_until": until}},
        )
        return result.matched_count

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

    async def finish_many(self, claim: str, finals: Sequence[Final]) -> list[str]:
        """Final state and counts for notifications still held under `claim`, in one round trip.

        Returns the ids actually finished: one whose lease lapsed and was claimed by another replica (or
        was cancelled meanwhile) is left to its new owner.
        """
        if not finals:
            return []
        now = time.time()
        operations = [
            UpdateOne(
                {
                    "_id": final.notification_id,
                    "claim": {"$eq": claim},
                    "state": {"$eq": str(NotificationState.DISPATCHING)},
                },
                {
                    "$set": {
                        "state": str(final.state),
                        "error": final.error,
                        "counts": final.counts,
                        "finished_at": now,
                        "lease_owner": None,
                        "lease_until": 0.0,
                        "event_pending": True,
                    }
                },
            )
            for final in finals
        ]
        result = await self._collection.bulk_write(operations, ordered=False)
        ids = [final.notification_id for final in finals]
        if result.modified_count == len(ids):
            return ids
        # Some were lost: the ones we finished are those still carrying our claim and no longer dispatching
        # (a takeover writes its own claim; only campaigns, never in a batch, can be cancelled meanwhile).
        finished = self._collection.find(
            {"_id": {"$in": ids}, "claim": {"$eq": claim}, "state": {"$ne": str(NotificationState.DISPATCHING)}},
            {"_id": 1},
        )
        return [doc["_id"] async for doc in finished]

    async def mark_events_published(self, notification_ids: Sequence[str]) -> None:
        if notification_ids:
            await self._collection.update_many(
                {"_id": {"$in": list(notification_ids)}, "event_pending": True}, {"$set": {"event_pending": False}}
            )

    async def release_all(self, owner: str) -> int:
        """Drop every dispatching lease `owner` still holds (shutdown); cursors stay where they are."""
        result = await self._collection.update_many(
            {"lease_owner": owner, "state": str(NotificationState.DISPATCHING)},
            {"$set": {"lease_owner": None, "lease_until": 0.0}},
        )
        return result.modified_count

    async def events_pending(self, finished_before: float, limit: int) -> list[dict]:
        """Final notifications whose outcome event was never confirmed (the replica died in between)."""
        cursor = self._collection.find(
            # `$eq` spelled out (same meaning): nx-27017 scans the collection for a bare equality.
            {"event_pending": {"$eq": True}, "finished_at": {"$lte": finished_before}},
            {"app": 1, "state": 1, "counts": 1, "error": 1},
        ).limit(limit)
        return [doc async for doc in cursor]

    async def backlog(self, now: float) -> tuple[int, int]:
        """(due, future) counts of notifications still waiting to be worked on."""
        # The `count` command per state is an index count (state, due_at) on any MongoDB. count_documents
        # runs an aggregation, which nx-27017 evaluates without indexes: ~0.5 s per count at 30k
        # notifications, during which it answers nothing else (seen as p99 spikes every refresh).
        due = future = 0
        for state in ACTIVE_STATES:
            due += await self._count({"state": {"$eq": str(state)}, "due_at": {"$lte": now}})
            future += await self._count({"state": {"$eq": str(state)}, "due_at": {"$gt": now}})
        return due, future

    async def _count(self, query: dict) -> int:
        reply = await self._collection.database.command({"count": self._collection.name, "query": query})
        return int(reply["n"])
