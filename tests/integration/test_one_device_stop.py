"""A one-device chunk's stop (dispatch/chunks.py `_send_one`): its delivery runs in the caller's task, and the
lease's stop must cut it short exactly as it cuts a chunk of many (`_wait_all`).

The lease here lapses for real: its renewals go to a MongoDB address where nothing listens, so they fail until
the lease is no longer good; or it is lost for real, to a second replica's claim on the same nx-27017. The
request is already on the wire to the APNs peer then. A lapse waits for answers on the wire (the in-flight
grace, `answer_seconds`): one that comes within it is recorded, and the next holder does not send that device
again; one that does not is cut short and its stream reset. A loss cuts it short at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from pushsvc.config import DispatchSettings, MongoSettings
from pushsvc.dev.servers import free_port
from pushsvc.dispatch.chunks import Chunk, ChunkOutcome, ChunkWorker, Terms
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.model import parse_request
from pushsvc.providers.apns import ApnsProvider
from pushsvc.scheduling.clock import ServerClock
from pushsvc.scheduling.lease import Interruption, Lease
from pushsvc.simulators.apns import ApnsPeer
from pushsvc.store.claims import ClaimStore
from pushsvc.store.database import Database
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import LANE_BATCH
from tests.integration.stores import Stores, document

pytest_plugins = ("tests.peers.fixtures_apns",)
pytestmark = pytest.mark.integration

TOKEN = "d" * 64
NOTIFICATION = "demo:one-device"
LEASE_SECONDS = 1.6  # lapses ~1.1 s after it is taken (safety margin: 0.5 s)


@pytest.fixture
async def unreachable() -> AsyncIterator[Database]:
    """A database whose server is down: every renewal fails (connection refused) and is retried."""
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200&connectTimeoutMS=200"
    database = Database.connect(MongoSettings(uri=uri, database="nobody"))
    yield database
    await database.close()


async def send_under_lapsing_lease(
    database: Database, provider: ApnsProvider, answer_seconds: float
) -> tuple[ChunkOutcome, Lease]:
    """Deliver the one-device chunk under a lease that lapses while its request is on the wire."""
    async def local_time() -> float:
        return time.time()

    clock = ServerClock(local_time)
    await clock.sync()
    lease = Lease(ClaimStore(database), clock, "claim-1", [NOTIFICATION], clock.now() + LEASE_SECONDS, LEASE_SECONDS)
    sender = DeliverySender({("demo", "apns"): provider}, DispatchSettings())
    worker = ChunkWorker(DeviceStore(database), sender, answer_seconds)
    request = parse_request({"id": "one-device", "app": "demo", "target": {"tokens": [TOKEN]},
                             "message": {"title": "t", "body": "b"}})
    device = {"_id": "d1", "app": "demo", "token": TOKEN, "platform": "ios", "kind": "apns"}
    chunk = Chunk([device], [], 1, True, by_token=True)
    keeping = asyncio.create_task(lease.keep())
    try:
        async with asyncio.timeout(10.0):  # the peer holds its answer longer: only the stop can end a cut send
            outcome = await worker.deliver(
                request, chunk, time.time(), (), lease.hold(NOTIFICATION), Terms(lane=LANE_BATCH)
            )
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
    return outcome, lease


async def test_an_answer_on_the_wire_when_the_lease_lapses_is_awaited_and_counted(
    unreachable: Database, apns_demo_provider: ApnsProvider, apns_fresh_peer: ApnsPeer
) -> None:
    apns_fresh_peer.script(TOKEN, delay=3.0)  # answered ~2 s after the lapse, within the 5 s grace
    outcome, lease = await send_under_lapsing_lease(unreachable, apns_demo_provider, answer_seconds=5.0)
    assert lease.interruption(NOTIFICATION) is Interruption.LAPSED
    assert outcome.complete and outcome.counts["delivered"] == 1, outcome
    assert outcome.done == [TOKEN]
    assert len(apns_fresh_peer.requests) == 1 and apns_fresh_peer.streams_reset_by_client == 0


async def test_an_answer_later_than_the_grace_is_cut_short_and_its_stream_reset(
    unreachable: Database, apns_demo_provider: ApnsProvider, apns_fresh_peer: ApnsPeer
) -> None:
    apns_fresh_peer.script(TOKEN, delay=20.0)
    started = time.monotonic()
    outcome, lease = await send_under_lapsing_lease(unreachable, apns_demo_provider, answer_seconds=1.0)
    assert lease.interruption(NOTIFICATION) is Interruption.LAPSED
    assert not outcome.complete and outcome.counts["delivered"] == 0 and outcome.done == [], outcome
    assert time.monotonic() - started < 8.0  # the lapse (~1.1 s) plus the grace (1 s), not the answer's 20 s
    await asyncio.sleep(0.2)  # the reset reaches the peer
    assert len(apns_fresh_peer.requests) == 1 and apns_fresh_peer.streams_reset_by_client == 1


async def test_a_lease_taken_over_by_another_replica_cuts_the_send_at_once_and_writes_nothing(
    notification_store: Stores, apns_demo_provider: ApnsProvider, apns_fresh_peer: ApnsPeer
) -> None:
    """Replica A's request is on the wire when replica B claims the notification (A stalled past its lease, as
    B's claim judges it): A's next renewal finds it lost, and the send is cut at once (no in-flight grace: the
    device is B's to send now), its stream reset, and A writes nothing more about it."""
    apns_fresh_peer.script(TOKEN, delay=20.0)
    store, lease_seconds = notification_store, 3.0
    raw = {"id": "taken-over", "app": "demo", "target": {"tokens": [TOKEN]}, "message": {"title": "t", "body": "b"}}
    now = time.time()
    await store.collection.insert_one(document(raw, "kafka", now, now))
    notification = "demo:taken-over"

    async def local_time() -> float:
        return time.time()

    clock = ServerClock(local_time)
    await clock.sync()
    token_a, held = await store.claims.claim_due("replica-a", now, now + lease_seconds, now, 10, LANE_BATCH)
    assert [r.id for r in held] == [notification]
    lease = Lease(store.claims, clock, token_a, [notification], now + lease_seconds, lease_seconds)
    database = store.notifications.database
    worker = ChunkWorker(DeviceStore(database), DeliverySender({("demo", "apns"): apns_demo_provider},
                                                               DispatchSettings()), answer_seconds=5.0)
    device = {"_id": "d1", "app": "demo", "token": TOKEN, "platform": "ios", "kind": "apns"}
    keeping = asyncio.create_task(lease.keep())
    sending = asyncio.ensure_future(worker.deliver(
        parse_request(raw), Chunk([device], [], 1, True, by_token=True), now, (), lease.hold(notification),
        Terms(lane=LANE_BATCH),
    ))
    try:
        async with asyncio.timeout(5.0):
            while not apns_fresh_peer.requests:  # noqa: ASYNC110 - the peer's request list, polled
                await asyncio.sleep(0.01)
        token_b, taken = await store.claims.claim_due(
            "replica-b", now + 60, now + 60 + lease_seconds, now + 60, 10, LANE_BATCH
        )
        assert [r.id for r in taken] == [notification]
        taken_at = time.monotonic()
        async with asyncio.timeout(10.0):
            outcome = await sending
        # The next renewal (within a third of the lease) finds it lost: not the answer's 20 s, nor a grace.
        assert time.monotonic() - taken_at < lease_seconds / 3 + 1.0
    finally:
        sending.cancel()
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
    assert lease.interruption(notification) is Interruption.LOST
    assert not outcome.complete and outcome.counts["delivered"] == 0 and outcome.done == [], outcome
    await asyncio.sleep(0.2)  # the reset reaches the peer
    assert len(apns_fresh_peer.requests) == 1 and apns_fresh_peer.streams_reset_by_client == 1
    stored = await store.collection.find_one({"_id": notification})
    assert stored["claim"] == token_b and stored["state"] == held[0].state
