"""Batch claims and batch finishes on the real MongoDB wire server: who gets what, and lost leases."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from pymongo import AsyncMongoClient

from pushsvc.dispatch.batch import runs_in_batch
from pushsvc.model import NotificationState
from pushsvc.store.database import Database
from pushsvc.store.leases import BatchRunEnd
from pushsvc.store.notifications import LANE_BATCH, LANE_FANOUT
from pushsvc.store.records import NotificationRecord, UnreadableRequest
from tests.commands import CommandCounter
from tests.conftest import unique
from tests.integration.stores import Stores, document


@pytest.fixture(params=["in", "each"])
def store(notification_store: Stores, request: pytest.FixtureRequest) -> Stores:
    """Both ways of selecting several states: one `$in` query (MongoDB) and one equality query per state (where
    the server scans for an `$in`, nx-27017): each claim and count must come out the same."""
    notification_store.notifications.database.scans_for_in = request.param == "each"
    return notification_store


def request(request_id: str, target: dict | None = None, **options: object) -> dict:
    return {
        "id": request_id,
        "app": "demo",
        "target": target or {"tokens": ["a" * 64]},
        "message": {"title": "t", "body": "b"},
        **({"options": options} if options else {}),
    }


async def claim(
    store: Stores,
    owner: str,
    now: float,
    lease_seconds: float,
    limit: int,
    lane: str,
    states: list[NotificationState] | None = None,
) -> list[NotificationRecord]:
    """claim_due with the lease clock and the scheduling clock at the same time (as in production)."""
    token, records = await store.claims.claim_due(
        owner, now, now + lease_seconds, now, limit, lane, *([states] if states else [])
    )
    # What was won is held under the claim's token, as written (the records leave the lease fields out).
    held = [doc["_id"] async for doc in store.collection.find({"claim": {"$eq": token}}, {"_id": 1})]
    assert sorted(held) == sorted(r.id for r in records)
    return records


async def stored(store: Stores, records: list[NotificationRecord]) -> list[dict]:
    """The documents of `records` as they are now."""
    return [doc for record in records if (doc := await store.notifications.get(record.id)) is not None]


async def record(store: Stores, count: int, now: float, prefix: str = "n") -> list[str]:
    documents = []
    for i in range(count):
        raw = request(f"{prefix}{i:03d}")
        # Distinct due times so "oldest first" is observable.
        documents.append(document(raw, "test", now - count + i, now))
    await store.notifications.record(documents)
    return [d["_id"] for d in documents]


async def test_concurrent_claims_split_the_due_notifications_without_overlap(store: Stores) -> None:
    now = time.time()
    ids = await record(store, 60, now)
    claims = await asyncio.gather(*(claim(store, f"owner{k}", now, 30.0, 25, LANE_BATCH) for k in range(4)))
    taken = [record.id for records in claims for record in records]
    assert len(taken) == len(set(taken)), "a notification was claimed twice"
    assert all(len(records) <= 25 for records in claims)
    # Whatever the race left over is claimable next; nothing is lost.
    rest = await claim(store, "owner9", now, 30.0, 100, LANE_BATCH)
    assert sorted(taken + [r.id for r in rest]) == ids
    for k, records in enumerate(claims):
        assert all(r.state == "dispatching" for r in records)
        docs = await stored(store, records)
        assert all(d["lease_owner"] == f"owner{k}" and d["state"] == "dispatching" for d in docs)
        assert len({d["claim"] for d in docs}) <= 1


async def test_claim_takes_the_oldest_first_and_leaves_future_and_held_ones(store: Stores) -> None:
    now = time.time()
    ids = await record(store, 10, now)
    future = request("later", send_at="2099-01-01T00:00:00Z")
    await store.notifications.record([document(future, "test", 4_070_908_800.0, now)])
    first = await claim(store, "a", now, 30.0, 4, LANE_BATCH)
    assert [r.id for r in first] == ids[:4]
    second = await claim(store, "b", now, 60.0, 100, LANE_BATCH)
    assert [r.id for r in second] == ids[4:], "held leases and future notifications are not claimable"
    assert await claim(store, "c", now, 30.0, 100, LANE_BATCH) == []
    # Owner a crashed: once its leases expire another replica takes the same notifications over.
    taken_over = await claim(store, "c", now + 31.0, 30.0, 100, LANE_BATCH)
    assert [r.id for r in taken_over] == ids[:4]


async def test_finish_many_only_finishes_what_the_claim_still_holds(store: Stores) -> None:
    now = time.time()
    ids = await record(store, 6, now)
    token, records = await store.claims.claim_due("a", now, now + 1.0, now, 6, LANE_BATCH)
    assert len(records) == 6
    # a stalls past its lease; b takes two of them over.
    taken = await claim(store, "b", now + 2.0, 30.0, 2, LANE_BATCH)
    assert [r.id for r in taken] == ids[:2]
    assert await store.claims.renew(token, ids, now + 60.0) == set(ids[2:])
    counts = {"targeted": 1, "delivered": 1}
    finished = await store.leases.finish_many(token, [BatchRunEnd(i, NotificationState.DONE, counts) for i in ids], now)
    assert sorted(finished) == ids[2:]
    for notification_id in ids[2:]:
        doc = await store.notifications.get(notification_id)
        assert doc is not None
        assert doc["state"] == "done" and doc["lease_owner"] is None and doc["event_pending"] in (True, 1)
        assert doc["counts"]["delivered"] == 1 and doc["counts"]["failed"] == 0
    for notification_id in ids[:2]:
        doc = await store.notifications.get(notification_id)
        assert doc is not None and doc["state"] == "dispatching" and doc["lease_owner"] == "b"
    await store.events.mark_published(finished)
    assert await store.events.pending(now + 100, 100) == []


@pytest.mark.parametrize(
    ("raw", "small"),
    [
        (request("tokens", {"tokens": ["a" * 64, "b" * 64]}), True),
        (request("users", {"users": [f"u{i}" for i in range(16)]}), True),
        (request("many-users", {"users": [f"u{i}" for i in range(17)]}), False),
        (request("segment", {"segment": {"tags_any": ["news"]}}), False),
        (request("local", send_at="2030-01-01T09:00:00", local_time=True), False),
    ],
)
def test_the_batch_lane_takes_only_single_chunk_notifications(raw: dict, small: bool) -> None:
    doc = document(raw, "test", 0.0, 0.0)
    assert runs_in_batch(NotificationRecord.from_document(doc)) is small
    campaign = NotificationRecord.from_document({**doc, "kind": "campaign"})
    assert not runs_in_batch(campaign), "campaigns keep per-chunk progress"
    started = NotificationRecord.from_document({**doc, "cursor": 5})
    assert not runs_in_batch(started), "a started fan-out resumes in the runner"
    unreadable = NotificationRecord.from_document({**doc, "request": '{"id": "x"}'})
    assert isinstance(unreadable.request, UnreadableRequest)
    assert not runs_in_batch(unreadable), "the fan-out runner fails it, saying why"


async def test_backlog_counts_waiting_notifications_due_and_future(store: Stores) -> None:
    now = time.time()
    await record(store, 5, now)
    later = request("later", send_at="2099-01-01T00:00:00Z")
    await store.notifications.record([document(later, "test", 4_070_908_800.0, now)])
    assert await store.notifications.backlog(now) == (5, 1)
    token, records = await store.claims.claim_due("a", now, now + 30.0, now, 2, LANE_BATCH)
    assert len(records) == 2  # dispatching still counts as waiting
    assert await store.notifications.backlog(now) == (5, 1)
    ends = [BatchRunEnd(r.id, NotificationState.DONE, {}) for r in records]
    await store.leases.finish_many(token, ends, now)
    assert await store.notifications.backlog(now) == (3, 1)


async def test_a_wake_up_claim_takes_only_new_requests(store: Stores) -> None:
    now = time.time()
    await record(store, 2, now)
    # Scheduled earlier for a time that has now come: found by the periodic full claim, not a wake-up one.
    raw = request("was-scheduled", send_at="2030-01-01T00:00:00Z")
    await store.notifications.record([document(raw, "test", now - 0.5, now - 60)])
    doc = await store.notifications.get("demo:was-scheduled")
    assert doc is not None and doc["state"] == "scheduled"
    woken = await claim(store, "a", now, 30.0, 10, LANE_BATCH, [NotificationState.ACCEPTED])
    assert sorted(r.id for r in woken) == ["demo:n000", "demo:n001"]
    full = await claim(store, "a", now, 30.0, 10, LANE_BATCH)
    assert [r.id for r in full] == ["demo:was-scheduled"]
    (doc,) = await stored(store, full)
    assert full[0].state == "dispatching" and doc["lease_owner"] == "a"


async def test_lanes_are_claimed_separately(store: Stores) -> None:
    now = time.time()
    raws = [
        request("small", {"users": ["alice"]}),
        request("segment", {"segment": {"tags_any": ["news"]}}),
        request("long-list", {"tokens": [f"{i:064x}" for i in range(17)]}),
    ]
    await store.notifications.record([document(raw, "test", now, now) for raw in raws])
    fanout = await claim(store, "a", now, 30.0, 10, LANE_FANOUT)
    assert sorted(r.id for r in fanout) == ["demo:long-list", "demo:segment"]
    batch = await claim(store, "a", now, 30.0, 10, LANE_BATCH)
    assert [r.id for r in batch] == ["demo:small"]


@pytest.mark.parametrize(("scans_for_in", "finds", "counts"), [(False, 1, 2), (True, 3, 6)])
async def test_a_full_claim_is_one_query_per_lane_and_the_backlog_two_counts_where_in_is_indexed(
    mongo_uri: str, scans_for_in: bool, finds: int, counts: int
) -> None:
    """The safety poll and the backlog gauge are the reads an idle replica makes on a timer: on MongoDB one
    candidate query per lane and two counts; one of each per state only where the server scans for `$in`."""
    commands = CommandCounter("notifications")
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, event_listeners=[commands])
    database = Database(client, client[unique("rounds")], scans_for_in=scans_for_in)
    try:
        await database.ensure_indexes()
        store = Stores.on(database)
        now = time.time()
        commands.commands.clear()
        assert await claim(store, "a", now, 30.0, 10, LANE_BATCH) == []
        assert commands.commands == Counter(find=finds + 1)  # and claim()'s own check of what is held
        commands.commands.clear()
        assert await store.notifications.backlog(now) == (0, 0)
        assert commands.commands == Counter(count=counts)
    finally:
        await client.drop_database(database.db.name)
        await client.close()
