"""Taking and keeping leases (scheduling/lease.py): claiming due notifications, renewing what is held, and
letting every lease of a stopping replica run out. The writes of a run under its lease: store/leases.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pushsvc.model import NotificationState
from pushsvc.store.database import Database, first_reply
from pushsvc.store.notifications import ACTIVE_STATES, STALLED_RUNS, Claim, new_claim_token, state_filters
from pushsvc.store.records import NotificationRecord

_ACTIVE = [str(s) for s in ACTIVE_STATES]


def _due_at(doc: Mapping[str, Any]) -> float:
    return float(doc["due_at"])


class ClaimStore:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._collection = database.notifications
        # Renewals go through the lease client's own pool (Database.lease_client).
        self._leases = database.lease_db["notifications"]

    async def claim_due(
        self,
        owner: str,
        expired_by: float,
        until: float,
        due_by: float,
        limit: int,
        lane: str,
        states: Sequence[NotificationState] = ACTIVE_STATES,
    ) -> tuple[str, list[NotificationRecord]]:
        """Take up to `limit` of the oldest notifications of `lane` due by `due_by` whose lease ended by
        `expired_by`, leasing them until `until`.

        `expired_by` and `until` are on the database's clock (scheduling/clock.py), the one every replica
        judges leases by; `due_by` is the scheduling clock (the same in production; tests move it to reach
        local times). A crashed owner's lease expires, so its notifications are claimable again. Several
        replicas may pick the same candidates: the conditional update gives each notification to exactly one,
        and the claim token written with it (returned with the records) fences every later write
        (scheduling/lease.py). The records are read once here, their requests parsed, oldest due first.
        """
        candidates = await self._candidates(expired_by, due_by, limit, lane, states)
        token = new_claim_token(owner)
        if not candidates:
            return token, []
        ids = [c["_id"] for c in candidates]
        won = await self._collection.update_many(
            {
                "_id": {"$in": ids},
                "state": {"$in": _ACTIVE},
                "due_at": {"$lte": due_by},
                "lease_until": {"$lte": expired_by},
            },
            {"$set": Claim(token, owner, until).fields(), "$inc": {STALLED_RUNS: 1}},
        )
        if not won.modified_count:
            return token, []
        # Always read back what was won: between our read and our update another replica may have claimed a
        # candidate, saved progress and let it go, so the copy read first can be stale (cursor, progress).
        docs = await first_reply(self._collection, {"_id": {"$in": ids}, "claim": {"$eq": token}}, len(ids))
        return token, sorted(map(NotificationRecord.from_document, docs), key=lambda record: record.due_at)

    async def _candidates(
        self, expired_by: float, due_by: float, limit: int, lane: str, states: Sequence[NotificationState]
    ) -> list[dict]:
        """The oldest `limit` claimable notifications of `lane` as read now (another replica may claim them)."""
        # Range scans of the (lane, state, due_at) index: one query for the lane on MongoDB, which merges the
        # states' ranges by due_at, one per state on nx-27017 (state_filters), merged here.
        lookups = [
            self._collection.find(
                {
                    "lane": {"$eq": lane},
                    "state": match,
                    "due_at": {"$lte": due_by},
                    "lease_until": {"$lte": expired_by},
                }
            )
            .sort("due_at", 1)
            .limit(limit)
            .batch_size(limit)
            .to_list(length=limit)
            for match in state_filters(self._database, states)
        ]
        return sorted((c for found in await asyncio.gather(*lookups) for c in found), key=_due_at)[:limit]

    async def renew(self, token: str, ids: Collection[str], until: float) -> set[str]:
        """Extend the lease of `ids` held under `token`; returns those still held (the rest were taken over)."""
        if not ids:
            return set()
        held_query = {"_id": {"$in": list(ids)}, "claim": {"$eq": token}}
        result = await self._leases.update_many(held_query, {"$set": {"lease_until": until}})
        if result.matched_count == len(ids):
            return set(ids)
        return {doc["_id"] for doc in await first_reply(self._leases, held_query, len(ids), {"_id": 1})}

    async def release_all(self, owner: str) -> int:
        """Let every dispatching lease `owner` still holds run out now (shutdown); cursors stay where they are.

        The claim token stays: a write of ours that was already on its way (a finish cancelled mid-flight at
        the deadline) still lands, and the next claim, which writes its own token, fences off anything later.
        """
        result = await self._collection.update_many(
            {"lease_owner": {"$eq": owner}, "state": str(NotificationState.DISPATCHING)},
            {"$set": {"lease_owner": None, "lease_until": 0.0}},
        )
        return result.modified_count
