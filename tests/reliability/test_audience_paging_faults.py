"""Audience paging (DeviceStore.find_chunk) when the connection under it is reset.

Pages are keyset reads in token order, each one query answered in one reply: no server cursor is left open
between pages. The history: pages continued one open cursor, and nx-27017 drops a connection's cursors when
the connection closes and answers a getMore for a cursor it no longer has with an empty batch and cursor id
0, not an error: the page came back empty and looked like the end of the audience. The first test keeps
that server behaviour in view; the others check that a reset between or under pages costs a retry, never
a device.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import PyMongoError

from pushsvc.dev.servers import ServerProcess
from pushsvc.model import Segment, Target
from pushsvc.store.audience import AudienceCursor, audience_cursor_after, audience_filter
from pushsvc.store.database import Database
from pushsvc.store.devices import Device, DeviceStore
from tests.commands import CommandCounter
from tests.conftest import unique
from tests.reliability.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

TAG = "paging"


class Watch(CommandCounter, monitoring.ConnectionPoolListener):
    """Commands sent (by name) and pool clears, as the driver reports them (from its threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.cleared = threading.Event()

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        self.cleared.set()

    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None: ...
    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None: ...
    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None: ...
    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None: ...
    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None: ...
    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None: ...
    def connection_check_out_started(self, event: monitoring.ConnectionCheckOutStartedEvent) -> None: ...
    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None: ...
    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None: ...
    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None: ...


@pytest.fixture
async def proxy(mongo_server: ServerProcess) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", mongo_server.port, name="mongo") as proxy:
        yield proxy


class Seeded(NamedTuple):
    database: str
    ids: list[str]  # the devices' _ids in _id order (registration order)
    by_token: list[str]  # the same _ids in token order: the order audiences are read in


async def seeded(mongo_uri: str, count: int) -> Seeded:
    """A fresh database with `count` devices carrying TAG, registered in a shuffled token order so that
    token order and `_id` order differ (a read in the wrong order cannot pass for the right one)."""
    name = unique("paging")
    client = AsyncMongoClient(mongo_uri)
    try:
        store = DeviceStore(Database(client, client[name]))
        tokens = [f"{i:064x}" for i in range(count)]
        random.Random(count).shuffle(tokens)
        for start in range(0, count, 500):
            await store.upsert_many([Device("demo", t, "ios", tags=(TAG,)) for t in tokens[start : start + 500]])
        docs = [d async for d in client[name].devices.find({}, {"_id": 1, "token": 1}).sort("_id", 1)]
        ids = [str(d["_id"]) for d in docs]
        assert ids != [str(d["_id"]) for d in sorted(docs, key=lambda d: d["token"])], "orders must differ"
        return Seeded(name, ids, [str(d["_id"]) for d in sorted(docs, key=lambda d: d["token"])])
    finally:
        await client.close()


# The driver's monitor checks every 0.5 s, on a connection never idle for the 1 s after which the pool
# would test the socket and silently replace it: it meets a reset at its next check and clears the pool
# (as any other operation of the service on a reset connection does). The next getMore then goes out on a
# new connection, the case that lost devices.
NOTICE_RESETS = {"heartbeatFrequencyMS": 500}


def store_via(proxy: FaultProxy, database: str, watch: Watch, **options: object) -> tuple[DeviceStore, Database]:
    client = AsyncMongoClient(f"mongodb://{proxy.address}", event_listeners=[watch], **options)
    db = Database(client, client[database])
    return DeviceStore(db), db


def segment_query() -> dict:
    target = Target(segment=Segment(tags_any=(TAG,)))
    return audience_filter("demo", target, None, None, "alert")


async def read_all(
    store: DeviceStore, limit: int, after_page: int | None = None, fault: Callable[[], Awaitable[None]] | None = None
) -> list[str]:
    """Page through the audience like the fan-out runner (a failed read is read again); `fault` runs after
    page `after_page`. Returns the _ids in the order read."""
    ids: list[str] = []
    cursor: AudienceCursor = None
    page_no = 0
    while True:
        try:
            page = await store.find_chunk(segment_query(), cursor, limit)
        except PyMongoError:
            continue  # the runner retries a failed read from the same cursor
        ids.extend(str(d["_id"]) for d in page)
        page_no += 1
        if len(page) < limit:
            return ids
        cursor = audience_cursor_after(page[-1], cursor)
        if page_no == after_page and fault is not None:
            await fault()


async def test_nx27017_answers_a_lost_cursor_like_an_exhausted_one(proxy: FaultProxy, mongo_uri: str) -> None:
    """The server behaviour the fix relies on knowing (if nx-27017 changes, this says so)."""
    database = (await seeded(mongo_uri, 50)).database
    watch = Watch()
    client = AsyncMongoClient(f"mongodb://{proxy.address}", event_listeners=[watch], **NOTICE_RESETS)
    try:
        cursor = client[database].devices.find().sort("_id", 1).batch_size(10)
        assert len(await cursor.to_list(10)) == 10 and cursor.alive
        proxy.reset()
        assert await asyncio.to_thread(watch.cleared.wait, 5)  # the driver noticed: its pool is cleared
        assert await cursor.to_list(10) == []  # no error: an empty batch ...
        assert cursor.cursor_id == 0 and not cursor.alive  # ... and "exhausted", 40 documents early
    finally:
        await client.close()


@pytest.mark.parametrize("count", [1000, 1050])
async def test_happy_path_reads_each_page_with_one_query_and_no_cursor(
    proxy: FaultProxy, mongo_uri: str, count: int
) -> None:
    """No fault: one find per page and never a getMore (a page is one reply); an exactly full last page
    (1000 = 10 x 100) costs one more query, which finds nothing."""
    database, _, by_token = await seeded(mongo_uri, count)
    watch = Watch()
    store, db = store_via(proxy, database, watch)
    try:
        assert await read_all(store, 100) == by_token
        assert watch.commands["find"] == count // 100 + 1
        assert watch.commands["getMore"] == 0
    finally:
        await db.close()


@pytest.mark.parametrize("after_page", [1, 3, 9])
async def test_a_reset_between_pages_costs_nothing(proxy: FaultProxy, mongo_uri: str, after_page: int) -> None:
    database, _, by_token = await seeded(mongo_uri, 1000)
    watch = Watch()
    store, db = store_via(proxy, database, watch, **NOTICE_RESETS)

    async def reset_and_let_the_driver_notice() -> None:
        watch.cleared.clear()
        proxy.reset()
        assert await asyncio.to_thread(watch.cleared.wait, 5)

    try:
        got = await read_all(store, 100, after_page, reset_and_let_the_driver_notice)
        assert len(got) == len(by_token) and got == by_token  # every device once, in order
    finally:
        await db.close()


async def test_a_reset_under_a_page_read_is_read_again(proxy: FaultProxy, mongo_uri: str) -> None:
    """Reset while the next page's query is on the wire: it fails (an error, not a short page) and the same
    cursor reads the same page."""
    database, _, by_token = await seeded(mongo_uri, 500)
    watch = Watch()
    store, db = store_via(proxy, database, watch, serverMonitoringMode="poll", heartbeatFrequencyMS=60_000)
    trap = proxy.trap(lambda data: b"find" in data and b"devices" in data and b"$gt" in data, when="reply")
    try:
        assert await read_all(store, 100) == by_token
        assert trap.sprung == 1
    finally:
        await db.close()


async def test_a_cursor_saved_before_token_order_goes_on_in_id_order(proxy: FaultProxy, mongo_uri: str) -> None:
    """A run in flight across the upgrade saved a hex _id: its audience is read on in _id order, to the end."""
    database, ids, _ = await seeded(mongo_uri, 300)
    watch = Watch()
    store, db = store_via(proxy, database, watch)
    try:
        page = await store.find_chunk(segment_query(), ids[99], 150)
        assert [str(d["_id"]) for d in page] == ids[100:250]
        cursor = audience_cursor_after(page[-1], ids[99])
        assert cursor == ids[249]
        assert [str(d["_id"]) for d in await store.find_chunk(segment_query(), cursor, 150)] == ids[250:]
    finally:
        await db.close()


async def test_an_unreachable_database_is_an_error_not_the_end(proxy: FaultProxy, mongo_uri: str) -> None:
    database, _, by_token = await seeded(mongo_uri, 300)
    watch = Watch()
    store, db = store_via(proxy, database, watch, serverSelectionTimeoutMS=1000)
    try:
        first = await store.find_chunk(segment_query(), None, 100)
        assert [str(d["_id"]) for d in first] == by_token[:100]
        cursor = audience_cursor_after(first[-1], None)
        proxy.refuse()
        proxy.reset()
        with pytest.raises(PyMongoError):
            await store.find_chunk(segment_query(), cursor, 100)
        proxy.heal()  # the runner's retry then reads the same page
        assert [str(d["_id"]) for d in await store.find_chunk(segment_query(), cursor, 100)] == by_token[100:200]
    finally:
        await db.close()


class ResetAfterFirstReply(Watch):
    """Resets the proxy right after the first `find` reply that leaves a cursor open, before the driver asks
    for the next batch. The listener runs on the event loop (PyMongo's async client has no driver threads),
    so it cannot wait there for the pool to be cleared: it holds the loop until the reset has reached both
    ends (the server drops the connection and the cursors it held). The cursor's getMore then fails on the
    dead connection or, once the pool was cleared, meets the lost cursor: either way that page is lost."""

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.done = False

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "find" and event.reply["cursor"]["id"] and not self.done:
            self.done = True
            self.proxy.reset()
            time.sleep(0.3)  # blocks the loop on purpose: nothing of the lookup moves while the reset lands


async def test_a_token_lookup_is_never_cut_short(proxy: FaultProxy, mongo_uri: str) -> None:
    """The lookups read whole (a chunk's tokens, a few users' devices) page the same way: a cursor lost
    between two replies is read again from the last _id, never taken for all there is."""
    database, ids, _ = await seeded(mongo_uri, 1200)
    watch = ResetAfterFirstReply(proxy)
    store, db = store_via(proxy, database, watch, **NOTICE_RESETS)
    try:
        found = await store.find_by_tokens("demo", [f"{i:064x}" for i in range(1200)], "alert")
        assert watch.done  # the reset landed between the replies of one lookup ...
        assert watch.commands["find"] >= 2  # ... and the page it cost was read again with a fresh query
        assert [str(d["_id"]) for d in found] == ids
    finally:
        await db.close()


async def test_a_users_device_list_is_never_cut_short(proxy: FaultProxy, mongo_uri: str) -> None:
    """GET /v1/users/{id}/devices reads up to its limit in one reply: no cursor to lose between replies
    (it returned the first 101 of 150 devices when a reset landed after the first reply)."""
    name = unique("paging")
    direct = AsyncMongoClient(mongo_uri)
    try:
        devices = [Device("demo", f"{i:064x}", "ios", user_id="heavy-user") for i in range(150)]
        await DeviceStore(Database(direct, direct[name])).upsert_many(devices)
    finally:
        await direct.close()
    watch = ResetAfterFirstReply(proxy)
    store, db = store_via(proxy, name, watch, **NOTICE_RESETS)
    try:
        listed = await store.for_user("demo", "heavy-user")
        assert sorted(d.token for d in listed) == sorted(d.token for d in devices)
    finally:
        await db.close()
