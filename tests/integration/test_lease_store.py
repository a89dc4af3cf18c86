"""The lease protocol's writes on the real MongoDB wire server: fenced by the claim token, idempotent under retry.

A replica whose lease lapsed must never overwrite the new holder's progress (fencing), and a write retried
after its answer was lost must not apply twice (counts added twice, a notification finished twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from structlog.testing import capture_logs

from pushsvc.model import NotificationState
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.lease import Interruption, Lease
from pushsvc.store.leases import BatchRunEnd, HandBack
from pushsvc.store.notifications import LANE_FANOUT
from tests.integration.stores import Stores, document


@pytest.fixture
def store(notification_store: Stores) -> Stores:
    return notification_store


async def recorded(store: Stores, notification_id: str, now: float) -> None:
    raw = {
        "id": notification_id.removeprefix("demo:"),
        "app": "demo",
        "target": {"segment": {"tags_any": ["news"]}},
        "message": {"title": "t", "body": "b"},
    }
    await store.notifications.record([document(raw, "test", now, now)])


async def take(store: Stores, owner: str, now: float, lease_seconds: float) -> str:
    token, docs = await store.claims.claim_due(owner, now, now + lease_seconds, now, 10, LANE_FANOUT)
    assert len(docs) == 1
    return token


async def test_a_lapsed_holder_can_write_nothing_once_another_replica_holds_the_notification(
    store: Stores,
) -> None:
    now = time.time()
    await recorded(store, "demo:n1", now)
    stale = await take(store, "a", now, 1.0)
    # a stalls past its lease (a skewed clock, a long GC, a partition); b takes the notification over.
    fresh = await take(store, "b", now + 2.0, 30.0)
    assert await store.leases.advance("demo:n1", fresh, 0, "cursor-b", {"targeted": 5, "delivered": 5}) is not None
    before = await store.notifications.get("demo:n1")

    assert await store.claims.renew(stale, ["demo:n1"], now + 100) == set()
    assert await store.leases.advance("demo:n1", stale, 0, "cursor-a", {"targeted": 7}) is None
    assert await store.leases.advance("demo:n1", stale, 1, "cursor-a", {"targeted": 7}) is None
    assert await store.leases.hand_back(stale, [HandBack("demo:n1", "cursor-a", {"delivered": 3}, ["x"])]) == []
    assert await store.leases.release(["demo:n1"], stale) == []
    assert not await store.leases.reschedule("demo:n1", stale, now + 3600, {"zones_done": ["UTC"]})
    assert await store.leases.finish("demo:n1", stale, NotificationState.DONE, None, now) is None
    ends = [BatchRunEnd("demo:n1", NotificationState.DONE, {"delivered": 9})]
    assert await store.leases.finish_many(stale, ends, now) == []

    after = await store.notifications.get("demo:n1")
    assert after == before, "the stale holder changed the new holder's notification"
    assert after is not None and after["claim"] == fresh and after["lease_owner"] == "b"


async def test_a_progress_write_retried_after_a_lost_answer_applies_once(store: Stores) -> None:
    now = time.time()
    await recorded(store, "demo:n2", now)
    token = await take(store, "a", now, 30.0)
    first = await store.leases.advance("demo:n2", token, 0, "c1", {"targeted": 10, "delivered": 9, "failed": 1})
    # The answer was lost (connection reset after the server applied it): the runner retries the same write.
    again = await store.leases.advance("demo:n2", token, 0, "c1", {"targeted": 10, "delivered": 9, "failed": 1})
    assert first is not None and again is not None
    assert again["progress_seq"] == 1 and again["counts"]["targeted"] == 10 and again["counts"]["delivered"] == 9
    nxt = await store.leases.advance("demo:n2", token, 1, "c2", {"targeted": 4, "delivered": 4})
    assert nxt is not None and nxt["progress_seq"] == 2 and nxt["counts"]["targeted"] == 14
    doc = await store.notifications.get("demo:n2")
    assert doc is not None and doc["cursor"] == "c2" and doc["counts"]["delivered"] == 13


async def test_hand_back_saves_what_was_answered_in_the_chunk_and_lets_go(store: Stores) -> None:
    now = time.time()
    await recorded(store, "demo:n3", now)
    token = await take(store, "a", now, 30.0)
    assert await store.leases.advance("demo:n3", token, 0, "c1", {"targeted": 5, "delivered": 5}) is not None
    answered = ["65f000000000000000000001", "65f000000000000000000002"]
    saved = HandBack("demo:n3", "c1", {"targeted": 2, "delivered": 2}, answered)
    assert await store.leases.hand_back(token, [saved]) == ["demo:n3"]
    # Retried after a lost answer: reported as done, not applied again.
    assert await store.leases.hand_back(token, [saved]) == ["demo:n3"]
    doc = await store.notifications.get("demo:n3")
    assert doc is not None
    assert doc["claim"] is None and doc["lease_until"] == 0.0 and doc["state"] == "dispatching"
    assert doc["cursor"] == "c1" and doc["chunk_done"] == answered and doc["counts"]["delivered"] == 7
    # Claimable again at once (no waiting for the lease to expire), resuming in that chunk.
    claim, records = await store.claims.claim_due("b", now, now + 30.0, now, 10, LANE_FANOUT)
    assert [r.id for r in records] == ["demo:n3"] and records[0].chunk_done == frozenset(answered)
    # The next full chunk clears the chunk's partial record.
    seq = records[0].progress_seq
    assert await store.leases.advance("demo:n3", claim, seq, "c2", {"targeted": 3}) is not None
    doc = await store.notifications.get("demo:n3")
    assert doc is not None and doc["chunk_done"] is None and doc["counts"]["targeted"] == 10


async def test_a_finish_retried_after_a_lost_answer_reports_the_same_counts(store: Stores) -> None:
    now = time.time()
    await recorded(store, "demo:n4", now)
    token = await take(store, "a", now, 30.0)
    assert await store.leases.advance("demo:n4", token, 0, "c1", {"targeted": 3, "delivered": 3}) is not None
    counts = await store.leases.finish("demo:n4", token, NotificationState.DONE, None, now)
    assert counts is not None and counts["delivered"] == 3
    assert await store.leases.finish("demo:n4", token, NotificationState.DONE, None, now) == counts
    for notification_id in ("demo:n5", "demo:n6"):
        await recorded(store, notification_id, now)
    batch_token, records = await store.claims.claim_due("b", now, now + 30.0, now, 10, LANE_FANOUT)
    ends = [BatchRunEnd(r.id, NotificationState.DONE, {"targeted": 1, "delivered": 1}) for r in records]
    assert sorted(await store.leases.finish_many(batch_token, ends, now)) == ["demo:n5", "demo:n6"]
    assert sorted(await store.leases.finish_many(batch_token, ends, now)) == ["demo:n5", "demo:n6"]


async def test_a_lost_lease_names_every_notification_it_held(store: Stores) -> None:
    """The lease events are how an operator (and the fault checker) tells an explained repeat from a bug: a
    claim of 120 notifications taken over must name all 120, not a sample."""
    now = time.time()
    ids = [f"demo:many-{n:03d}" for n in range(120)]
    for notification_id in ids:
        await recorded(store, notification_id, now)
    stale, docs = await store.claims.claim_due("a", now, now + 1.0, now, 200, LANE_FANOUT)
    assert len(docs) == 120
    _, taken = await store.claims.claim_due("b", now + 2.0, now + 30.0, now + 2.0, 200, LANE_FANOUT)
    assert len(taken) == 120

    async def server_time() -> float:
        return time.time()

    clock = ServerClock(server_time)
    await clock.sync()
    # Renewal falls due at once (until - 2/3 of the lease is now); it matches nothing: all 120 are lost.
    lease = Lease(store.claims, clock, stale, ids, clock.now() + 2.0, 3.0)
    with capture_logs() as logs:
        keeping = asyncio.create_task(lease.keep())
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*(lease.stop_signal(i).wait() for i in ids))
        finally:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
    lost = [entry for entry in logs if entry["event"] == "lease_lost"]
    assert [(entry["part"], entry["parts"], entry["notifications"]) for entry in lost] == [
        (1, 3, 120), (2, 3, 120), (3, 3, 120)
    ]
    assert [i for entry in lost for i in entry["ids"]] == ids
    assert all(lease.interruption(i) is Interruption.LOST for i in ids)
