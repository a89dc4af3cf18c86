"""The `notifications` collection: recording requests, lease-based claiming, progress and counters.

Times are stored as epoch seconds (floats): they compare and index the same way on every MongoDB
implementation, and the scheduler only ever needs "<= now".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo import ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError

from pushsvc.model import NotificationState, PushRequest
from pushsvc.store.database import TRANSIENT_WRITE_CODES, Database
from pushsvc.store.devices import SMALL_LOOKUP

DUPLICATE_KEY = 11000
# Finished notifications are deleted this long after they finish (settings.retention.notification_days).
DEFAULT_RETENTION_SECONDS = 30 * 86400.0
# How long after the upgrade from bare-id keys intake still looks for old-version duplicates (a rollout is done
# within a day).
LEGACY_WINDOW_SECONDS = 86400.0
# An erasure rewrites matching requests this many at a time, and gives up (an error) after this many rounds.
ERASURE_PAGE = 500
ERASURE_ROUNDS = 100
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
    # A dry run's devices whose payload was built and accepted (FCM: by its validate_only check).
    "validated",
)
# The counters that are final outcomes for a targeted device.
FINAL_KEYS = COUNT_KEYS[1:]
# A dry run also counts each final outcome per device platform, as "<outcome>:<platform>" (flat keys, so the
# same $inc per chunk, sums and hand-backs carry them; split_counts shows them nested).
PLATFORM_SEPARATOR = ":"


def platform_key(outcome: str, platform: str) -> str:
    return f"{outcome}{PLATFORM_SEPARATOR}{platform}"


def split_counts(counts: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Stored counts as (the COUNT_KEYS counters, {platform: {outcome: n}} of a dry run)."""
    plain: dict[str, int] = {}
    by_platform: dict[str, dict[str, int]] = {}
    for key, value in counts.items():
        outcome, separator, platform = key.partition(PLATFORM_SEPARATOR)
        if separator:
            by_platform.setdefault(platform, {})[outcome] = int(value)
        else:
            plain[key] = int(value)
    return plain, by_platform
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
    """Every counter of COUNT_KEYS, zero where `counts` has none, and a dry run's per-platform counters."""
    full = {key: int(counts.get(key, 0)) for key in COUNT_KEYS}
    full.update((key, int(value)) for key, value in counts.items() if PLATFORM_SEPARATOR in key)
    return full


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
class HandBack:
    """Where a notification given up mid-run resumes: the cursor of its current chunk, and which of that
    chunk's devices already have a final outcome (their counts since the last saved progress)."""

    notification_id: str
    cursor: Any
    counts: Mapping[str, int] = field(default_factory=dict)
    chunk_done: Sequence[str] = ()


@dataclass(frozen=True)
class RecordResult:
    inserted: list[str]
    duplicates: list[str]
    # id -> why MongoDB refuses that document for good (never retried; see TRANSIENT_WRITE_CODES)
    rejected: dict[str, str] = field(default_factory=dict)


def notification_key(app: str, request_id: str) -> str:
    """A notification's `_id`: request ids are unique per app, not across apps (app ids hold no ':')."""
    return f"{app}:{request_id}"


def request_id_of(doc: Mapping[str, Any]) -> str:
    """The producer's request id of a stored notification (what the API and outcome events show)."""
    return str(doc.get("request_id") or doc["_id"])


def _legacy_fields(doc: Mapping[str, Any], store: NotificationStore) -> dict[str, Any]:
    """What a document recorded before ids were per app lacks: its request id, the erasure fields, an expiry."""
    fields: dict[str, Any] = {"request_id": doc["_id"]}
    try:
        target = orjson.loads(doc["request"]).get("target", {})
    except (KeyError, TypeError, orjson.JSONDecodeError):
        target = {}
    if isinstance(target.get("users"), list):
        fields["target_users"] = target["users"]
    if isinstance(target.get("tokens"), list):
        fields["target_tokens"] = target["tokens"]
    if doc.get("finished_at"):
        fields["expire_at"] = store.expiry(float(doc["finished_at"]))
    return fields


def new_claim_token(owner: str) -> str:
    """A fresh claim token (scheduling/lease.py): names the replica for people, unique for fencing."""
    return f"{owner}/{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Claim:
    """A lease taken on notifications: written by `claim_due`, or by intake into a new document (direct
    dispatch: the replica recording a due-now request holds it from the start)."""

    token: str
    owner: str
    until: float  # lease_until, on the database's clock

    def fields(self) -> dict[str, Any]:
        return {
            "state": str(NotificationState.DISPATCHING),
            "lease_owner": self.owner,
            "lease_until": self.until,
            "claim": self.token,
        }


# `stalled_runs`: how many runs (claims, including one written at birth) a notification has had since it last
# made progress (a chunk saved, a wave rescheduled). The scheduler gives up on one past its limit.
STALLED_RUNS = "stalled_runs"


def new_document(
    request: PushRequest,
    raw: Mapping[str, Any],
    source: str,
    due_at: float,
    now: float,
    claim: Claim | None = None,
) -> dict:
    """The notification a request becomes; with `claim`, recorded already held by that lease.

    Its recorder adds `request_hash` (ingest/idempotency.py: the hash of what the caller sent, before any
    stamping), which a repeated id is compared with.
    """
    state = NotificationState.SCHEDULED if due_at > now else NotificationState.ACCEPTED
    document = {
        "_id": notification_key(request.app, request.id),
        "request_id": request.id,
        "app": request.app,
        # Kept as the validated JSON text: message data keys may contain '.' or '$', which MongoDB
        # field names do not accept everywhere, and the dispatcher re-parses it with the same validator.
        "request": orjson.dumps(raw).decode(),
        "source": source,
        "state": str(state),
        "lane": lane_for(request),
        # Who the request names, queryable for GDPR erasure (store.notifications.erase_user).
        **({"target_users": list(request.target.users)} if request.target.users else {}),
        **({"target_tokens": list(request.target.tokens)} if request.target.tokens else {}),
        "created_at": now,
        "due_at": due_at,
        "lease_owner": None,
        "lease_until": 0.0,
        "claim": None,
        "progress_seq": 0,
        "cursor": None,
        "counts": dict.fromkeys(COUNT_KEYS, 0),
    }
    if request.options.dry_run:
        # Shown by the API and the outcome event: nothing of it was delivered.
        document["dry_run"] = True
    if claim is not None:
        document.update(claim.fields())
        document[STALLED_RUNS] = 1
    return document


def _events_published(ids: list[str]) -> UpdateMany:
    """Clear `event_pending` on notifications whose outcome event the broker acknowledged."""
    return UpdateMany({"_id": {"$in": ids}, "event_pending": {"$eq": True}}, {"$set": {"event_pending": False}})


class NotificationStore:
    def __init__(
        self,
        database: Database,
        clock: Callable[[], float] = time.time,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self._collection = database.notifications
        # Renewals go through the lease client's own pool (Database.lease_client).
        self._leases = database.lease_db["notifications"]
        # Time stamps written here (finished_at) are compared by other replicas (the outcome sweep): the
        # service passes the database's clock (scheduling/clock.py) rather than this host's.
        self._clock = clock
        self._retention = retention_seconds
        # Until when intake also checks for requests recorded under their bare id (backfill_request_ids).
        self._legacy_until = 0.0

    def expiry(self, after: float) -> datetime:
        """When a notification finished (or due) at `after` is deleted by the TTL index (a BSON date)."""
        return datetime.fromtimestamp(after + self._retention, UTC)

    @property
    def collection(self) -> Any:
        return self._collection

    async def record(self, documents: Sequence[dict]) -> RecordResult:
        """Insert new requests in one round trip; ids already recorded are reported as duplicates.

        A document the server refuses for good is reported in ``rejected``; a transient per-document error,
        a write concern error or a failed command raises (the caller holds the batch and retries).
        """
        if not documents:
            return RecordResult([], [])
        legacy = await self._legacy_duplicates(documents)
        if legacy:
            documents = [d for d in documents if d["_id"] not in legacy]
            if not documents:
                return RecordResult([], sorted(legacy))
        ids = [d["_id"] for d in documents]
        try:
            # No expire_at yet: retention counts from the end (a paused campaign or a long throttled run must
            # not be deleted under its runner); _final_fields and a cancel set it.
            await self._collection.insert_many(list(documents), ordered=False)
            return RecordResult(ids, sorted(legacy))
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") in TRANSIENT_WRITE_CODES for e in errors):
                raise
            failed = {e["index"]: e for e in errors}
            return RecordResult(
                [i for n, i in enumerate(ids) if n not in failed],
                [ids[n] for n, e in failed.items() if e.get("code") == DUPLICATE_KEY] + sorted(legacy),
                {
                    ids[n]: f"MongoDB error {e.get('code')}: {str(e.get('errmsg', ''))[:300]}"
                    for n, e in failed.items()
                    if e.get("code") != DUPLICATE_KEY
                },
            )

    async def get(self, notification_id: str) -> dict | None:
        return await self._collection.find_one({"_id": notification_id})

    async def find(self, app: str, request_id: str) -> dict | None:
        """A notification by its app and request id (including one recorded before ids were per app)."""
        doc = await self._collection.find_one({"_id": notification_key(app, request_id)})
        if doc is None:  # recorded by a version that keyed notifications by the bare request id
            doc = await self._collection.find_one({"_id": {"$eq": request_id}, "app": {"$eq": app}})
        return doc

    async def find_many(self, requests: Collection[tuple[str, str]]) -> dict[str, dict]:
        """Notifications by (app, request id), keyed by notification_key; those not found are left out.

        One read (intake compares repeated request ids with what was recorded: rare, a redelivered batch at
        most), plus a look-up by bare id for each not found (recorded by the version before per-app ids).
        """
        keys = {notification_key(app, request_id): (app, request_id) for app, request_id in requests}
        if not keys:
            return {}
        found = {doc["_id"]: doc for doc in await self._one_reply({"_id": {"$in": list(keys)}}, len(keys))}
        for key in keys.keys() - found.keys():
            app, request_id = keys[key]
            legacy = await self._collection.find_one({"_id": {"$eq": request_id}, "app": {"$eq": app}})
            if legacy is not None:
                found[key] = legacy
        return found

    # --- notifications recorded before ids were per app (`_id` = request id) ----------------------------------

    async def backfill_request_ids(self, now: float) -> int:
        """Give documents of the version that keyed notifications by the bare request id what this version
        relies on (request_id, the erasure fields, an expiry once final); they keep their `_id`. Once: a
        marker records it, with whether there were any.

        While such documents may still be written (a rolling upgrade: replicas of the old version record
        requests until they are replaced), intake also takes a request whose bare id exists in its app as a
        duplicate (`_legacy_duplicates`), for LEGACY_WINDOW_SECONDS after the backfill found old documents.
        Returns how many documents were changed.
        """
        migrations = self._collection.database["migrations"]
        marker = await migrations.find_one({"_id": "notification_keys"})
        changed = 0
        if marker is None:
            while True:
                # `$eq: None`: a missing field; the same meaning as `$exists: false` here, and what nx-27017 serves.
                docs = await self._one_reply({"request_id": {"$eq": None}}, ERASURE_PAGE)
                for doc in docs:
                    await self._collection.update_one({"_id": doc["_id"]}, {"$set": _legacy_fields(doc, self)})
                changed += len(docs)
                if len(docs) < ERASURE_PAGE:
                    break
            marker = {"_id": "notification_keys", "done_at": now, "documents": changed}
            await migrations.replace_one({"_id": "notification_keys"}, marker, upsert=True)
        self._legacy_until = float(marker["done_at"]) + LEGACY_WINDOW_SECONDS if marker.get("documents") else 0.0
        return changed

    async def _legacy_duplicates(self, documents: Sequence[dict]) -> set[str]:
        """Keys of `documents` whose request an old-version replica recorded under its bare id (see above)."""
        if self._clock() >= self._legacy_until:
            return set()
        by_bare = {d["request_id"]: d for d in documents}
        found = await self._one_reply({"_id": {"$in": list(by_bare)}}, len(by_bare), {"app": 1})
        return {by_bare[f["_id"]]["_id"] for f in found if f.get("app") == by_bare[f["_id"]]["app"]}

    async def claim_due(
        self,
        owner: str,
        expired_by: float,
        until: float,
        due_by: float,
        limit: int,
        lane: str,
        states: Sequence[NotificationState] = ACTIVE_STATES,
    ) -> tuple[str, list[dict]]:
        """Take up to `limit` of the oldest notifications of `lane` due by `due_by` whose lease ended by
        `expired_by`, leasing them until `until`.

        `expired_by` and `until` are on the database's clock (scheduling/clock.py), the one every replica
        judges leases by; `due_by` is the scheduling clock (the same in production; tests move it to reach
        local times). A crashed owner's lease expires, so its notifications are claimable again. Several
        replicas may pick the same candidates: the conditional update gives each notification to exactly one,
        and the claim token written with it (returned with the documents) fences every later write
        (scheduling/lease.py).
        """
        # One equality query per claimable state, merged by due_at: each is a range scan of the
        # (lane, state, due_at) index on any MongoDB; `state: {$in: [...]}` makes nx-27017 scan the collection.
        lookups = [
            self._collection.find(
                {
                    "lane": {"$eq": lane},
                    "state": {"$eq": str(state)},
                    "due_at": {"$lte": due_by},
                    "lease_until": {"$lte": expired_by},
                }
            )
            .sort("due_at", 1)
            .limit(limit)
            .batch_size(limit)
            .to_list(length=limit)
            for state in states
        ]
        candidates = sorted((c for found in await asyncio.gather(*lookups) for c in found), key=_due_at)[:limit]
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
        docs = await self._one_reply({"_id": {"$in": ids}, "claim": {"$eq": token}}, len(ids))
        return token, sorted(docs, key=_due_at)

    async def renew(self, token: str, ids: Collection[str], until: float) -> set[str]:
        """Extend the lease of `ids` held under `token`; returns those still held (the rest were taken over)."""
        if not ids:
            return set()
        result = await self._leases.update_many(
            {"_id": {"$in": list(ids)}, "claim": {"$eq": token}}, {"$set": {"lease_until": until}}
        )
        if result.matched_count == len(ids):
            return set(ids)
        held = await self._one_reply(
            {"_id": {"$in": list(ids)}, "claim": {"$eq": token}}, len(ids), {"_id": 1}, self._leases
        )
        return {doc["_id"] for doc in held}

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
        increments = {f"counts.{k}": v for k, v in counts.items() if v}
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
                    "claim": None,
                    "released_claim": token,
                    "lease_owner": None,
                    "lease_until": 0.0,
                    # Devices answered before it stopped are progress.
                    **({STALLED_RUNS: 0} if item.chunk_done else {}),
                }
            }
            increments = {f"counts.{k}": v for k, v in item.counts.items() if v}
            if increments:
                update["$inc"] = increments
            operations.append(UpdateOne({"_id": item.notification_id, "claim": {"$eq": token}}, update))
        result = await self._collection.bulk_write(operations, ordered=False)
        ids = [item.notification_id for item in items]
        return ids if result.matched_count == len(ids) else await self._released_by_token(ids, token)

    async def release(self, ids: Sequence[str], token: str) -> list[str]:
        """Give leases up keeping the saved progress as it is (cursor, chunk_done); fenced, idempotent.
        Returns the ids released by us (an id missing is held by another replica now)."""
        if not ids:
            return []
        result = await self._collection.update_many(
            {"_id": {"$in": list(ids)}, "claim": {"$eq": token}},
            # Let go of cleanly by its holder (a drain, an abandoned reservation): not a stalled run.
            {
                "$set": {
                    "claim": None,
                    "released_claim": token,
                    "lease_owner": None,
                    "lease_until": 0.0,
                    STALLED_RUNS: 0,
                }
            },
        )
        return list(ids) if result.matched_count == len(ids) else await self._released_by_token(ids, token)

    async def _one_reply(
        self, query: dict, count: int, projection: dict | None = None, collection: Any = None
    ) -> list[dict]:
        """At most `count` documents, all in the server's first reply.

        These reads say which notifications a claim holds or wrote; one cut short would make the lease
        protocol take a held notification for lost. A result in one reply cannot be cut short by a
        connection lost between replies (nx-27017 then answers a getMore as if the cursor were exhausted).
        """
        size = max(1, count)
        cursor = (collection if collection is not None else self._collection).find(query, projection)
        return await cursor.limit(size).batch_size(size).to_list(length=size)

    async def _released_by_token(self, ids: Sequence[str], token: str) -> list[str]:
        """Those of `ids` whose last give-up write was ours: applied now, or by an attempt whose answer was lost
        (a write matching fewer than all means some were taken over, or an earlier attempt got there)."""
        query = {"_id": {"$in": list(ids)}, "released_claim": {"$eq": token}}
        return [doc["_id"] for doc in await self._one_reply(query, len(ids), {"_id": 1})]

    async def transition(
        self, notification_id: str, from_states: Sequence[str], update: Mapping[str, Any]
    ) -> dict | None:
        """Move a notification between states if it is in one of `from_states`; returns the new document."""
        return await self._collection.find_one_and_update(
            {"_id": notification_id, "state": {"$in": list(from_states)}},
            {"$set": dict(update)},
            return_document=ReturnDocument.AFTER,
        )

    async def reschedule(self, notification_id: str, token: str, due_at: float, extra: Mapping[str, Any]) -> bool:
        """Hand the notification back to the scheduler for a later wave (local time); fenced, idempotent.

        Only from dispatching: a pause or cancel that landed since the last chunk is kept, and the lease is
        just released (`wave_zones` and the cursor at the wave's end stay, so a resume finishes that wave
        without a send and reschedules then).
        """
        result = await self._collection.update_one(
            {"_id": notification_id, "claim": {"$eq": token}, "state": str(NotificationState.DISPATCHING)},
            {
                "$set": {
                    "state": str(NotificationState.SCHEDULED),
                    "due_at": due_at,
                    "claim": None,
                    "released_claim": token,
                    "lease_owner": None,
                    "lease_until": 0.0,
                    STALLED_RUNS: 0,
                    **extra,
                }
            },
        )
        if result.matched_count == 1 or await self._released_by_token([notification_id], token):
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
            {"_id": notification_id, "claim": {"$eq": token}, "state": str(NotificationState.DISPATCHING)},
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
            "expire_at": self.expiry(now),
            "claim": None,
            "released_claim": token,
            "lease_owner": None,
            "lease_until": 0.0,
            "chunk_done": None,
            # A finished notification keeps no cursor: an audience cursor holds a device token.
            "cursor": None,
            # Cleared once push.outcomes has the event; the outcome sweep publishes any left behind.
            "event_pending": announce,
            **({} if announce else {"expire_at": None}),
        }

    async def finish_many(
        self, token: str, finals: Sequence[Final], now: float, announced: Sequence[str] = ()
    ) -> list[str]:
        """Final state and counts for notifications still held under `token`, finished at `now`, in one round
        trip; the same bulk write clears `event_pending` on `announced` (notifications whose outcome event the
        broker acknowledged since: outcomes.Announcer).

        Notifications ending alike (state, counts, error: most single-device pushes) share one update, so a
        batch is a few updates, not one per notification. Returns the ids finished by us (now, or by an
        earlier attempt whose answer was lost): one taken over by another replica is left to its new holder.
        """
        if not finals:
            return []
        alike: dict[tuple[str, str | None, tuple[tuple[str, int], ...]], list[str]] = {}
        for final in finals:
            group = (str(final.state), final.error, tuple(sorted(final.counts.items())))
            alike.setdefault(group, []).append(final.notification_id)
        operations: list[UpdateMany] = [
            UpdateMany(
                {"_id": {"$in": ids}, "claim": {"$eq": token}, "state": {"$eq": str(NotificationState.DISPATCHING)}},
                {"$set": {**self._final_fields(token, NotificationState(state), error, now), "counts": dict(counts)}},
            )
            for (state, error, counts), ids in alike.items()
        ]
        announced = list(dict.fromkeys(announced))
        if announced:
            operations.append(_events_published(announced))
        result = await self._collection.bulk_write(operations, ordered=False)
        ids = [final.notification_id for final in finals]
        # Every finish applied exactly when the total reaches it with every mark too (a mark matches at most
        # its own notification); short of that, the holder of each is read back.
        if result.modified_count == len(ids) + len(announced):
            return ids
        return await self._released_by_token(ids, token)

    async def erase_user(self, app: str, user_id: str, tokens: Sequence[str]) -> int:
        """GDPR erasure: remove a user id and their device tokens from every stored request of `app`.

        Each one is replaced by a placeholder that matches no device ("erased-<random>"), so the stored
        request stays valid and positions in a token list (a fan-out's cursor) do not move. Finished
        notifications are included: they keep the request until retention deletes them. Returns how many
        notifications were rewritten.

        Safe against concurrent writers: each rewrite is conditional on the request text it was computed from
        (another erasure of the same notification, a hand-back writing `chunk_done`), and the lookups are
        repeated until they find nothing, so a read cut short or a lost race only costs another round.
        """
        erased = set(tokens)
        # Two queries rather than one `$or`: each is an index point lookup on (app, target_users) and
        # (app, target_tokens) on MongoDB (nx-27017 scans for either spelling; erasures are rare). Array
        # fields are matched with `$in` (the same meaning as `$eq` on MongoDB): nx-27017 turns `$eq` into a
        # plain equality that does not look inside arrays.
        lookups = [{"app": {"$eq": app}, "target_users": {"$in": [user_id]}}]
        if erased:
            lookups.append({"app": {"$eq": app}, "target_tokens": {"$in": sorted(erased)}})
        rewritten: set[str] = set()
        for _ in range(ERASURE_ROUNDS):
            found = 0
            for query in lookups:
                for doc in await self._one_reply(query, ERASURE_PAGE, {"request": 1, "chunk_done": 1, "claim": 1}):
                    found += 1
                    if await self._scrub(doc, user_id, erased):
                        rewritten.add(doc["_id"])
            if not found:
                return len(rewritten)
        raise RuntimeError(f"erasure of a user in app {app!r} did not settle after {ERASURE_ROUNDS} rounds")

    async def _scrub(self, doc: dict, user_id: str, erased: set[str]) -> bool:
        """Rewrite one request without the user and their tokens, if it still reads as it did."""
        raw = orjson.loads(doc["request"])
        target = raw.get("target", {})
        replacements: dict[str, str] = {}
        for field_name, names in (("users", {user_id}), ("tokens", erased)):
            values = target.get(field_name)
            if isinstance(values, list):
                target[field_name] = [
                    replacements.setdefault(v, f"erased-{uuid.uuid4().hex}") if v in names else v for v in values
                ]
        update: dict[str, Any] = {"request": orjson.dumps(raw).decode()}
        if "users" in target:
            update["target_users"] = target["users"]
        if "tokens" in target:
            update["target_tokens"] = target["tokens"]
        if doc.get("chunk_done"):  # the placeholders stand for the same devices in a stopped chunk
            update["chunk_done"] = [replacements.get(key, key) for key in doc["chunk_done"]]
        # Unchanged since read: the same request text, and the same holder (a claim, hand-back or finish
        # in between may have rewritten chunk_done, which this update would otherwise overwrite).
        condition = {"_id": doc["_id"], "request": {"$eq": doc["request"]}, "claim": {"$eq": doc.get("claim")}}
        # The hash of what the caller sent (ingest/idempotency.py) was taken over the user's id and tokens: it
        # goes too, so nothing derived from them stays. A repeat of the request id is then compared with the
        # scrubbed request, which no longer names them.
        erase_hash = {"request_hash": ""}
        result = await self._collection.update_one(condition, {"$set": update, "$unset": erase_hash})
        return result.modified_count == 1

    async def mark_events_published(self, notification_ids: Sequence[str]) -> None:
        if notification_ids:
            await self._collection.bulk_write([_events_published(list(notification_ids))])

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

    async def events_pending(self, finished_before: float, limit: int) -> list[dict]:
        """Final notifications whose outcome event was never confirmed (the replica died in between)."""
        cursor = self._collection.find(
            # `$eq` spelled out (same meaning): nx-27017 scans the collection for a bare equality.
            {"event_pending": {"$eq": True}, "finished_at": {"$lte": finished_before}},
            {"app": 1, "request_id": 1, "state": 1, "counts": 1, "error": 1, "finished_at": 1, "dry_run": 1},
        ).limit(limit).batch_size(limit)
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
