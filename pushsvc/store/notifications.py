"""The `notifications` collection: the document a request becomes, its key, and recording and reading requests.

The lease protocol's writes are in store/claims.py and store/leases.py, the counters in store/counts.py,
outcome events owed in store/events.py, GDPR erasure in store/erasure.py.

Times are stored as epoch seconds (floats): they compare and index the same way on every MongoDB
implementation, and the scheduler only ever needs "<= now".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from pushsvc.model import NotificationState, PushRequest
from pushsvc.store.counts import COUNT_KEYS
from pushsvc.store.database import DUPLICATE_KEY, TRANSIENT_WRITE_CODES, Database, first_reply

# Finished notifications are deleted this long after they finish (settings.retention.notification_days).
DEFAULT_RETENTION_SECONDS = 30 * 86400.0
# How long after the upgrade from bare-id keys intake still looks for old-version duplicates (a rollout is done
# within a day).
LEGACY_WINDOW_SECONDS = 86400.0
# The backfill of documents keyed by the bare request id rewrites them this many at a time.
BACKFILL_PAGE = 500

# Claimable, and waiting or being worked on.
ACTIVE_STATES = [NotificationState.ACCEPTED, NotificationState.SCHEDULED, NotificationState.DISPATCHING]
# A paused notification (a campaign) keeps its cursor and is not claimed until resumed.
PAUSED = "paused"
# Claim lanes (the `lane` field), decided by scheduling/lanes.py when a request is recorded; claimed
# separately. The ranges of a split campaign have their own: store/ranges.py LANE_RANGE.
LANE_BATCH = "batch"
LANE_FANOUT = "fanout"


def state_filters(database: Database, states: Sequence[NotificationState]) -> list[dict[str, Any]]:
    """The filters on `state` that together select `states`, one query each: one `$in` on MongoDB (an index
    scan of each state's range, merged), one `$eq` per state where the server scans for an `$in` (nx-27017:
    Database.reads_each)."""
    if database.reads_each(len(states)):
        return [{"$eq": str(state)} for state in states]
    return [{"$in": [str(state) for state in states]}]


@dataclass(frozen=True)
class RecordResult:
    inserted: list[str]
    duplicates: list[str]
    # id -> why MongoDB refuses that document for good (never retried; see TRANSIENT_WRITE_CODES)
    rejected: dict[str, str] = field(default_factory=dict)


def expiry(after: float, retention_seconds: float) -> datetime:
    """When a notification finished (or due) at `after` is deleted by the TTL index (a BSON date)."""
    return datetime.fromtimestamp(after + retention_seconds, UTC)


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
    *,
    lane: str,
) -> dict:
    """The notification a request becomes, in `lane` (scheduling/lanes.py `lane_for` decides: required, so no
    caller records a request in a lane nobody chose); with `claim`, recorded already held by that lease.

    Its recorder adds `request_hash` (ingest/idempotency.py: the hash of what the caller sent, before any
    stamping), which a repeated id is compared with.
    """
    state = NotificationState.SCHEDULED if due_at > now else NotificationState.ACCEPTED
    document = {
        "_id": notification_key(request.app, request.id),
        "request_id": request.id,
        "app": request.app,
        # Kept as the validated JSON text: message data keys may contain '.' or '$', which MongoDB
        # field names do not accept everywhere; store/records.py parses it with the same validator, once per read.
        "request": orjson.dumps(raw).decode(),
        "source": source,
        "state": str(state),
        "lane": lane,
        # Who the request names, queryable for GDPR erasure (store/erasure.py).
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


class NotificationStore:
    def __init__(
        self,
        database: Database,
        clock: Callable[[], float] = time.time,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        # The shared handle the other stores of the collection take (claims, leases, events, erasure, ranges).
        self.database = database
        self._collection = database.notifications
        # Whether the legacy-duplicate window is still open (`_legacy_duplicates`): the service passes the
        # database's clock (scheduling/clock.py) rather than this host's.
        self._clock = clock
        self._retention = retention_seconds
        # Until when intake also checks for requests recorded under their bare id (backfill_request_ids).
        self._legacy_until = 0.0

    def expiry(self, after: float) -> datetime:
        """When a notification finished (or due) at `after` is deleted by the TTL index (a BSON date)."""
        return expiry(after, self._retention)

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
        # The app too: a bare id of the old version may spell another app's key ("A:foo" recorded by app B).
        doc = await self._collection.find_one({"_id": notification_key(app, request_id), "app": {"$eq": app}})
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
        docs = await first_reply(self._collection, {"_id": {"$in": list(keys)}}, len(keys))
        # Only the app's own: a bare id of the old version may spell another app's key (see find).
        found = {doc["_id"]: doc for doc in docs if doc.get("app") == keys[doc["_id"]][0]}
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
                docs = await first_reply(self._collection, {"request_id": {"$eq": None}}, BACKFILL_PAGE)
                for doc in docs:
                    await self._collection.update_one({"_id": doc["_id"]}, {"$set": _legacy_fields(doc, self)})
                changed += len(docs)
                if len(docs) < BACKFILL_PAGE:
                    break
            marker = {"_id": "notification_keys", "done_at": now, "documents": changed}
            await migrations.replace_one({"_id": "notification_keys"}, marker, upsert=True)
        self._legacy_until = float(marker["done_at"]) + LEGACY_WINDOW_SECONDS if marker.get("documents") else 0.0
        return changed

    async def _legacy_duplicates(self, documents: Sequence[dict]) -> set[str]:
        """Keys of `documents` whose request an old-version replica recorded under its bare id (see above)."""
        if self._clock() >= self._legacy_until:
            return set()
        # Per bare id, every app's document of the batch: the same request id in two apps is two requests.
        by_bare: dict[str, dict[str, str]] = {}
        for d in documents:
            by_bare.setdefault(d["request_id"], {})[d["app"]] = d["_id"]
        found = await first_reply(self._collection, {"_id": {"$in": list(by_bare)}}, len(by_bare), {"app": 1})
        return {by_bare[f["_id"]][f["app"]] for f in found if f.get("app") in by_bare[f["_id"]]}

    async def transition(
        self,
        notification_id: str,
        from_states: Sequence[str],
        update: Mapping[str, Any],
        lease_ended_by: float | None = None,
    ) -> dict | None:
        """Move a notification between states if it is in one of `from_states` (and, with `lease_ended_by`, its
        lease ran out by then: nobody holds it); returns the new document."""
        condition: dict[str, Any] = {"_id": notification_id, "state": {"$in": list(from_states)}}
        if lease_ended_by is not None:
            condition["lease_until"] = {"$lte": lease_ended_by}
        return await self._collection.find_one_and_update(
            condition,
            {"$set": dict(update)},
            return_document=ReturnDocument.AFTER,
        )

    async def backlog(self, now: float) -> tuple[int, int]:
        """(due, future) counts of notifications still waiting to be worked on."""
        # The `count` command is an index count of (state, due_at) on any MongoDB. count_documents runs an
        # aggregation, which nx-27017 evaluates without indexes: ~0.5 s per count at 30k notifications, during
        # which it answers nothing else.
        due = future = 0
        for states in state_filters(self.database, ACTIVE_STATES):
            due += await self._count({"state": states, "due_at": {"$lte": now}})
            future += await self._count({"state": states, "due_at": {"$gt": now}})
        return due, future

    async def _count(self, query: dict) -> int:
        reply = await self._collection.database.command({"count": self._collection.name, "query": query})
        return int(reply["n"])
