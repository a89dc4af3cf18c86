"""The writes of a run under its lease (scheduling/lease.py): saving progress, handing back, rescheduling,
releasing and finishing, each fenced by the claim token and idempotent under retry (taking and keeping leases:
store/claims.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReturnDocument, UpdateMany, UpdateOne

from pushsvc.model import NotificationState
from pushsvc.store.counts import full_counts
from pushsvc.store.database import Database, first_reply
from pushsvc.store.events import events_published
from pushsvc.store.notifications import (
    DEFAULT_RETENTION_SECONDS,
    STALLED_RUNS,
    expiry,
)

_DISPATCHING = str(NotificationState.DISPATCHING)
# What every write giving a notification up sets besides its own fields (`released_claim`: see _released_by).
_LET_GO = {"claim": None, "lease_owner": None, "lease_until": 0.0}


@dataclass(frozen=True)
class BatchRunEnd:
    """How a notification run by the batch lane ended: its final state and complete counts."""

    notification_id: str
    state: NotificationState
    counts: Mapping[str, int]  # completed to every COUNT_KEYS counter: written as the notification's counts
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", full_counts(self.counts))


@dataclass(frozen=True)
class HandBack:
    """Where a notification given up mid-run resumes: the cursor of its current chunk, and which of that
    chunk's devices already have a final outcome (their counts since the last saved progress)."""

    notification_id: str
    cursor: Any
    counts: Mapping[str, int] = field(default_factory=dict)
    chunk_done: Sequence[str] = ()


def _increments(counts: Mapping[str, int]) -> dict[str, int]:
    return {f"counts.{k}": v for k, v in counts.items() if v}


class LeaseStore:
    def __init__(self, database: Database, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self._collection = database.notifications
        self._retention = retention_seconds

    async def advance(
        self,
        notification_id: str,
        token: str,
        seq: int,
        cursor: Any,
        counts: Mapping[str, int],
        extra: Mapping[str, Any] | None = None,
    ) -> dict | None:
        """Save a finished chunk under the lease: move the cursor and add its counts, as progress number seq+1.

        One atomic update per chunk means a crash repeats at most the chunk that was in flight. Fenced by the
        claim token and keyed on the progress sequence number, so a retry after a lost answer never adds the
        counts twice: if the first attempt applied, the retry reads back seq+1 under our token and reports
        success. Returns the notification's state, counts, progress number and audience estimate after the
        update (the runner stops when the state is no longer dispatching: paused or cancelled meanwhile),
        or None when another replica holds the notification now.
        """
        update: dict[str, Any] = {
            "$set": {"cursor": cursor, "progress_seq": seq + 1, "chunk_done": None, **(extra or {})}
        }
        increments = _increments(counts)
        if increments:
            update["$inc"] = increments
        projection = {"state": 1, "counts": 1, "audience_estimate": 1, "claim": 1, "progress_seq": 1}
        # Documents written before progress numbers existed have none: number 0 matches them too.
        expected: dict[str, Any] = {"$eq": seq} if seq else {"$in": [0, None]}
        after = await self._collection.find_one_and_update(
            {"_id": notification_id, "claim": {"$eq": token}, "progress_seq": expected},
            update,
            projection=projection,
            return_document=ReturnDocument.AFTER,
        )
        if after is None:
            now = await self._collection.find_one({"_id": notification_id}, projection)
            if now is not None and now.get("claim") == token and now.get("progress_seq") == seq + 1:
                return now  # an earlier attempt of this very write applied; its answer was lost
        return after

    async def hand_back(self, token: str, items: Sequence[HandBack]) -> list[str]:
        """Give leases up, saving where each notification resumes, in one round trip; returns the ids handed back.

        Used when work stops before its chunk is complete (drain deadline, lapsed lease: `chunk_done` names
        the devices of the chunk at `cursor` with a final outcome, counted in `counts`, which the next holder
        skips) and, without a partial chunk, when a run stops between chunks. Fenced and idempotent: each
        write records our token as `released_claim`, which a retry reads back. An id missing from the result
        is held by another replica now.
        """
        if not items:
            return []
        operations = []
        for item in items:
            update: dict[str, Any] = {
                "$set": {
                    "cursor": item.cursor,
                    "chunk_done": list(item.chunk_done) if item.chunk_done else None,
                    "released_claim": token,
                    **_LET_GO,
                    # Devices answered before it stopped are progress.
                    **({STALLED_RUNS: 0} if item.chunk_done else {}),
                }
            }
            increments = _increments(item.counts)
            if increments:
                update["$inc"] = increments
            operations.append(UpdateOne({"_id": item.notification_id, "claim": {"$eq": token}}, update))
        result = await self._collection.bulk_write(operations, ordered=False)
        ids = [item.notification_id for item in items]
        return ids if result.matched_count == len(ids) else await self._released_by(ids, token)

    async def release(self, ids: Sequence[str], token: str) -> list[str]:
        """Give leases up keeping the saved progress as it is (cursor, chunk_done); fenced, idempotent.
        Returns the ids released by us (an id missing is held by another replica now)."""
        if not ids:
            return []
        result = await self._collection.update_many(
            {"_id": {"$in": list(ids)}, "claim": {"$eq": token}},
            # Let go of cleanly by its holder (a drain, an abandoned reservation): not a stalled run.
            {"$set": {"released_claim": token, **_LET_GO, STALLED_RUNS: 0}},
        )
        return list(ids) if result.matched_count == len(ids) else await self._released_by(ids, token)

    async def _released_by(self, ids: Sequence[str], token: str) -> list[str]:
        """Those of `ids` whose last give-up write was ours: applied now, or by an attempt whose answer was lost
        (a write matching fewer than all means some were taken over, or an earlier attempt got there)."""
        query = {"_id": {"$in": list(ids)}, "released_claim": {"$eq": token}}
        return [doc["_id"] for doc in await first_reply(self._collection, query, len(ids), {"_id": 1})]

    async def reschedule(self, notification_id: str, token: str, due_at: float, extra: Mapping[str, Any]) -> bool:
        """Hand the notification back to the scheduler for a later wave (local time); fenced, idempotent.

        Only from dispatching: a pause or cancel that landed since the last chunk is kept, and the lease is
        just released (`wave_zones` and the cursor at the wave's end stay, so a resume finishes that wave
        without a send and reschedules then).
        """
        result = await self._collection.update_one(
            {"_id": notification_id, "claim": {"$eq": token}, "state": _DISPATCHING},
            {
                "$set": {
                    "state": str(NotificationState.SCHEDULED),
                    "due_at": due_at,
                    "released_claim": token,
                    **_LET_GO,
                    STALLED_RUNS: 0,
                    **extra,
                }
            },
        )
        if result.matched_count == 1 or await self._released_by([notification_id], token):
            return True
        return bool(await self.release([notification_id], token))

    async def finish(
        self,
        notification_id: str,
        token: str,
        state: NotificationState,
        error: str | None,
        now: float,
        announce: bool = True,
    ) -> dict | None:
        """Final state under the lease, finished at `now`; returns the final counts, or None if another replica
        holds it now.

        Only from dispatching: a cancel that landed meanwhile is not overwritten. Fenced and idempotent
        (`released_claim` read back after a lost answer). Without `announce` it is a range (store/ranges.py):
        no outcome event is owed (its parent is announced) and it expires with its parent, set when that
        is settled.
        """
        doc = await self._collection.find_one_and_update(
            {"_id": notification_id, "claim": {"$eq": token}, "state": _DISPATCHING},
            {"$set": self._final_fields(token, state, error, now, announce)},
            projection={"counts": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self._collection.find_one({"_id": notification_id}, {"counts": 1, "released_claim": 1})
            if doc is None or doc.get("released_claim") != token:
                return None
        return dict(doc.get("counts", {}))

    def _final_fields(
        self, token: str, state: NotificationState, error: str | None, now: float, announce: bool = True
    ) -> dict[str, Any]:
        return {
            "state": str(state),
            "error": error,
            "finished_at": now,
            "expire_at": expiry(now, self._retention),
            "released_claim": token,
            **_LET_GO,
            "chunk_done": None,
            # A finished notification keeps no cursor: an audience cursor holds a device token.
            "cursor": None,
            # Cleared once push.outcomes has the event; the outcome sweep publishes any left behind.
            "event_pending": announce,
            **({} if announce else {"expire_at": None}),
        }

    async def finish_many(
        self, token: str, ends: Sequence[BatchRunEnd], now: float, announced: Sequence[str] = ()
    ) -> list[str]:
        """Final state and counts for notifications still held under `token`, finished at `now`, in one round
        trip; the same bulk write clears `event_pending` on `announced` (notifications whose outcome event the
        broker acknowledged since: outcomes.Announcer).

        Notifications ending alike (state, counts, error: most single-device pushes) share one update, so a
        batch is a few updates, not one per notification. Returns the ids finished by us (now, or by an
        earlier attempt whose answer was lost): one taken over by another replica is left to its new holder.
        """
        if not ends:
            return []
        alike: dict[tuple[str, str | None, tuple[tuple[str, int], ...]], list[str]] = {}
        for end in ends:
            group = (str(end.state), end.error, tuple(sorted(end.counts.items())))
            alike.setdefault(group, []).append(end.notification_id)
        operations: list[UpdateMany] = [
            UpdateMany(
                {"_id": {"$in": ids}, "claim": {"$eq": token}, "state": {"$eq": _DISPATCHING}},
                {"$set": {**self._final_fields(token, NotificationState(state), error, now), "counts": dict(counts)}},
            )
            for (state, error, counts), ids in alike.items()
        ]
        announced = list(dict.fromkeys(announced))
        if announced:
            operations.append(events_published(announced))
        result = await self._collection.bulk_write(operations, ordered=False)
        ids = [end.notification_id for end in ends]
        # Every finish applied exactly when the total reaches it with every mark too (a mark matches at most
        # its own notification); short of that, the holder of each is read back.
        if result.modified_count == len(ids) + len(announced):
            return ids
        return await self._released_by(ids, token)
