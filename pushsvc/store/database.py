"""The MongoDB client (PyMongo's native asyncio API), collection handles and every index the queries rely on.

PyMongo's `AsyncMongoClient` replaced Motor (deprecated by MongoDB on 2026-05-14): same maintainers, nearly
the same API, but no thread pool between the event loop and the socket, and an operation cancelled by
asyncio is really stopped (its connection is discarded) rather than left running in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from pushsvc.config import MongoSettings

# Error labels the server (or driver) puts on failures that a retry of the same operation may cure.
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "NetworkError")
# Server error codes that say nothing about the operation: the server was busy, stepping down, shutting down,
# out of disk or short of a write concern. Every other code (BSONObjectTooLarge 10334, KeyTooLong 17280,
# DocumentValidationFailure 121, BadValue 2, nx-27017's 8 for a document it cannot store, ...) fails the same
# way forever. (Codes: pymongo's retryable-write and not-primary lists, plus lock, conflict, interruption,
# disk and sharding-staleness codes.)
TRANSIENT_WRITE_CODES = frozenset(
    {6, 7, 24, 46, 50, 63, 64, 89, 91, 100, 112, 117, 134, 150, 189, 262, 9001, 10058, 10107, 11600, 11601,
     11602, 13388, 13435, 13436, 14031}
)


def is_transient(exc: BaseException) -> bool:
    """A database error that says nothing about the operation itself: the connection, the primary, a timeout,
    a write concern not met, a server busy or stepping down (also inside a bulk write).

    Retrying such an operation is safe only if it is idempotent; every write retried by the lease protocol
    (scheduling/lease.py) is fenced and carries enough state to tell "applied before the error" from "not".
    """
    if isinstance(exc, ConnectionFailure | WriteConcernError):  # AutoReconnect, NetworkTimeout, NotPrimaryError
        return True
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        errors = details.get("writeErrors", [])
        if details.get("writeConcernErrors") and not errors:
            return True
        return bool(errors) and all(e.get("code") in TRANSIENT_WRITE_CODES for e in errors)
    if isinstance(exc, OperationFailure) and exc.code in TRANSIENT_WRITE_CODES:
        return True
    return isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in _TRANSIENT_LABELS)

# MongoDB's code for a write that met a unique index's existing key.
DUPLICATE_KEY = 11000


def duplicate_keys(exc: BulkWriteError) -> list[int]:
    """The positions of an unordered bulk write's operations that met an existing key (the one failure these
    writes expect: a repeat, a lost race); re-raises `exc` for any other error or a write concern error."""
    details = exc.details or {}
    errors = details.get("writeErrors", [])
    if details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return [int(e["index"]) for e in errors]


# Each index serves a named query in store/; keep the two lists in step.
DEVICE_INDEXES = [
    IndexModel([("app", ASCENDING), ("token", ASCENDING)], unique=True, name="app_token_unique"),
    IndexModel([("app", ASCENDING), ("user_id", ASCENDING)], name="app_user"),  # users target, user listing
    IndexModel([("app", ASCENDING), ("tags", ASCENDING)], name="app_tags"),  # segment target
    # erase_user: the devices that were the user's before another's (multikey, on the few that changed user).
    IndexModel([("app", ASCENDING), ("user_changes.user", ASCENDING)], name="app_user_changes"),
]
NOTIFICATION_INDEXES = [
    # claim_due: per lane, the oldest due notifications whose lease has expired.
    IndexModel([("lane", ASCENDING), ("state", ASCENDING), ("due_at", ASCENDING)], name="lane_state_due"),
    # backlog: waiting notifications per state, due and future.
    IndexModel([("state", ASCENDING), ("due_at", ASCENDING)], name="state_due"),
    # EventStore.pending (store/events.py): the outcome sweep's small set of unannounced final notifications.
    IndexModel([("event_pending", ASCENDING), ("finished_at", ASCENDING)], name="event_pending"),
    # Retention: MongoDB's TTL monitor deletes a notification once `expire_at` (a BSON date) has passed.
    IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention"),
    # erase_user: the stored requests that name a user or one of their tokens (multikey).
    IndexModel([("app", ASCENDING), ("target_users", ASCENDING)], name="app_target_users"),
    IndexModel([("app", ASCENDING), ("target_tokens", ASCENDING)], name="app_target_tokens"),
    # store/ranges.py: the ranges of a split campaign, and split campaigns whose settle check is due.
    IndexModel([("parent", ASCENDING)], sparse=True, name="range_parent"),
    IndexModel([("settle_at", ASCENDING)], sparse=True, name="settle_at"),
]
# store/caps.py: a user's capped sends are forgotten once the longest window is over.
FREQUENCY_INDEXES = [IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="frequency_expiry")]
# store/open_hours.py: a user's opens are found by `_id`; forgotten once the newest can no longer count.
OPEN_HOURS_INDEXES = [IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="open_hours_expiry")]
# store/quotas.py: the shared quota limiter's slices are found by _id; the TTL monitor removes past ones.
QUOTA_SLICE_INDEXES = [IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="expiry")]
# store/receipts.py: looked up by `_id` only (a hash of notification, device and event: a repeat is a duplicate
# key); retention like notifications'.
RECEIPT_INDEXES = [
    IndexModel([("expire_at", ASCENDING)], expireAfterSeconds=0, name="retention"),
]


# On nx-27017 only, up to this many values are looked up one equality query each (concurrently) instead of
# one `$in` (Database.reads_each; measured with benchmarks/store_op_cost.py, kept below the ~500 break-even).
POINT_LOOKUPS_UP_TO = 300

Document = dict[str, Any]


async def first_reply(
    collection: AsyncCollection[Document], query: dict, count: int, projection: dict | None = None
) -> list[Document]:
    """At most `count` documents, all in the server's first reply.

    For reads that say which notifications a claim holds or wrote: one cut short would make the lease
    protocol take a held notification for lost. A result in one reply cannot be cut short by a connection
    lost between replies (nx-27017 then answers a getMore as if the cursor were exhausted).
    """
    size = max(1, count)
    return await collection.find(query, projection).limit(size).batch_size(size).to_list(length=size)


def client_options(settings: MongoSettings) -> dict[str, Any]:
    """The client's keyword options from settings (explicit options win over the same ones in the URI)."""
    return {
        "serverSelectionTimeoutMS": settings.server_selection_timeout_ms,
        "connectTimeoutMS": settings.connect_timeout_ms,
        # A server that stops answering mid-operation fails the operation after this long, and the next one
        # gets a fresh connection; without it a read on a blackholed connection waits for TCP (minutes).
        "socketTimeoutMS": settings.socket_timeout_ms,
        "maxPoolSize": settings.max_pool_size,
        "minPoolSize": settings.min_pool_size,
        # tz_aware so any datetime read back is UTC-aware; uuidRepresentation fixed to avoid driver warnings.
        "tz_aware": True,
        "uuidRepresentation": "standard",
        "appname": "pushsvc",
    }


# Connections of the lease client: renewals of every lease a replica holds go in one update per lease every
# third of the lease, and the server clock is read every few seconds; a handful never waits.
LEASE_POOL_SIZE = 4


@dataclass
class Database:
    client: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    # The server answers `$in` on an indexed field by scanning the collection (nx-27017, the MongoDB wire
    # server used for tests and benchmarks here): see DeviceStore._find_values, the one place that uses it.
    scans_for_in: bool = False
    groups_by_one_field: bool = False
    # A second client, with its own small pool, for what keeps leases alive (renewals, the server clock):
    # with one pool, a replica whose connections are all busy with long reads (a large audience page, a slow
    # server) would queue its renewals behind them until its leases lapsed and another replica sent again.
    lease_client: AsyncMongoClient[Document] | None = None
    # mongodb.in_queries: "auto" leaves scans_for_in to identify_server.
    in_queries: str = "auto"

    @classmethod
    def connect(cls, settings: MongoSettings) -> Database:
        """The clients for `settings` (they connect lazily, on the first operation)."""
        options = client_options(settings)
        client: AsyncMongoClient[Document] = AsyncMongoClient(settings.uri, **options)
        lease_options = {**options, "maxPoolSize": LEASE_POOL_SIZE, "minPoolSize": 0, "appname": "pushsvc-leases"}
        lease_client: AsyncMongoClient[Document] = AsyncMongoClient(settings.uri, **lease_options)
        return cls(client=client, db=client[settings.database], lease_client=lease_client,
                   in_queries=settings.in_queries)

    @property
    def lease_db(self) -> AsyncDatabase[Document]:
        """The database through the lease client (the main client when there is none)."""
        return self.db if self.lease_client is None else self.lease_client[self.db.name]

    @property
    def devices(self) -> AsyncCollection[Document]:
        return self.db["devices"]

    @property
    def notifications(self) -> AsyncCollection[Document]:
        return self.db["notifications"]

    @property
    def frequency(self) -> AsyncCollection[Document]:
        return self.db["frequency"]

    @property
    def open_hours(self) -> AsyncCollection[Document]:
        return self.db["open_hours"]

    @property
    def quota_slices(self) -> AsyncCollection[Document]:
        return self.db["quota_slices"]

    @property
    def receipts(self) -> AsyncCollection[Document]:
        return self.db["receipts"]

    async def ensure_indexes(self) -> None:
        await self.devices.create_indexes(DEVICE_INDEXES)
        await self.notifications.create_indexes(NOTIFICATION_INDEXES)
        await self.frequency.create_indexes(FREQUENCY_INDEXES)
        await self.open_hours.create_indexes(OPEN_HOURS_INDEXES)
        await self.quota_slices.create_indexes(QUOTA_SLICE_INDEXES)
        await self.receipts.create_indexes(RECEIPT_INDEXES)

    def reads_each(self, count: int) -> bool:
        """Whether `count` values (ids, tokens, user ids) are read one equality query each, concurrently, rather
        than with one `$in`: for one value, and on nx-27017 (`scans_for_in`) up to POINT_LOOKUPS_UP_TO. The one
        place that rule is chosen (DeviceStore._find_values, the receipts' notifications, the caps' users)."""
        return count == 1 or (self.scans_for_in and count <= POINT_LOOKUPS_UP_TO)

    async def identify_server(self) -> None:
        """Learn whether the server is nx-27017 (its buildInfo names its process; MongoDB's has no such field).

        Only to pick how a set of values is looked up (`scans_for_in`) and how devices are counted by two fields
        (`groups_by_one_field`: nx-27017's $group takes a single field path as `_id`, and returns a compound
        `_id` as written); every query means the same on both.
        """
        info = await self.client.admin.command("buildInfo")
        self.scans_for_in = self.groups_by_one_field = info.get("process") == "nx_27017"
        if self.in_queries != "auto":
            self.scans_for_in = self.in_queries == "scanned"

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def server_time(self) -> float:
        """The server's clock (epoch seconds) from `hello`'s localTime: the one clock leases are judged by."""
        reply = await (self.lease_client or self.client).admin.command("hello")
        return float(reply["localTime"].timestamp())

    async def close(self) -> None:
        await self.client.close()
        if self.lease_client is not None:
            await self.lease_client.close()
