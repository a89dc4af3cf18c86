"""The batch lane reads the devices of a whole batch at once (`ChunkWorker.first_chunks`): it must find exactly
what each request's own read finds, on the real MongoDB wire server, by either way of looking up a set of
values (one `$in`, or one equality per value)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from pushsvc.config import DispatchSettings, MongoSettings
from pushsvc.dispatch.chunks import Chunk, ChunkWorker
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.model import PushRequest, parse_request
from pushsvc.store.database import Database
from pushsvc.store.devices import Device, DeviceStore
from tests.conftest import unique

pytestmark = pytest.mark.integration

APPS = ("a", "b")
KINDS = {"apns": "ios", "apns_voip": "ios", "fcm": "android"}


@pytest.fixture
async def database(mongo_uri: str) -> AsyncIterator[Database]:
    database = Database.connect(MongoSettings(uri=mongo_uri, database=unique("lookups")))
    await database.ensure_indexes()
    yield database
    await database.client.drop_database(database.db.name)
    await database.close()


async def seed(devices: DeviceStore, rng: random.Random) -> list[str]:
    """Users u0..u24 in both apps with 0-4 devices of any kind; some opted out of "promo", some inactive."""
    tokens: list[str] = []
    for app in APPS:
        for user in range(25):
            for n in range(rng.randint(0, 4)):
                kind = rng.choice(sorted(KINDS))
                token = f"{app}-u{user}-{n}-{kind}"
                opt_out = ("promo",) if rng.random() < 0.3 else ()
                await devices.upsert(Device(app, token, KINDS[kind], kind, f"u{user}", opt_out=opt_out))
                tokens.append(token)
                if rng.random() < 0.15:
                    await devices.deactivate(app, [(token, "Unregistered")])
    return tokens


def random_request(n: int, rng: random.Random, tokens: list[str]) -> PushRequest:
    push_type = rng.choice(["alert", "alert", "background", "voip"])
    message: dict = {"title": "t", "body": "b"} if push_type == "alert" else {"data": {"k": "v"}}
    if rng.random() < 0.4:
        message["category"] = "promo"
    if rng.random() < 0.5:
        # Tokens of either app, of any kind, some never registered, some repeated.
        pool = [*tokens, "never-registered-1", "never-registered-2"]
        target: dict = {"tokens": [rng.choice(pool) for _ in range(rng.randint(1, 6))]}
    else:
        target = {"users": [f"u{rng.randrange(30)}" for _ in range(rng.randint(1, 5))]}
    raw = {"id": f"r{n}", "app": rng.choice(APPS), "target": target, "message": message,
           "options": {"push_type": push_type}}
    return parse_request(raw)


def view(chunk: Chunk) -> tuple:
    return (sorted(str(d["_id"]) for d in chunk.devices), chunk.unknown_tokens, chunk.next_cursor, chunk.exhausted,
            chunk.by_token)


@pytest.mark.parametrize("seed_value", [1, 2, 3])
@pytest.mark.parametrize("point_lookups", [False, True])
@pytest.mark.parametrize("size", [5000, 2])
async def test_a_batch_read_finds_what_each_request_finds_alone(
    database: Database, seed_value: int, point_lookups: bool, size: int
) -> None:
    rng = random.Random(seed_value)
    devices = DeviceStore(database)
    tokens = await seed(devices, rng)
    database.scans_for_in = point_lookups  # both ways of looking up a set of values (store/devices.py)
    chunks = ChunkWorker(devices, DeliverySender({}, DispatchSettings()), 1.0)
    requests = [random_request(n, rng, tokens) for n in range(40)]
    together = await chunks.first_chunks(requests, size)
    alone = [await chunks.next_chunk(r, None, None, True, size) for r in requests]
    for request, batch_chunk, own_chunk in zip(requests, together, alone, strict=True):
        assert view(batch_chunk) == view(own_chunk), request
    # The seed reaches every case: devices found, unknown tokens, pages cut short by the size.
    assert any(c.devices for c in alone) and any(c.unknown_tokens for c in alone)
    if size == 2:
        assert any(not c.exhausted for c in alone)


@pytest.mark.parametrize(("in_queries", "scans"), [("auto", True), ("indexed", False), ("scanned", True)])
async def test_mongodb_in_queries_says_how_sets_of_values_are_read(
    mongo_uri: str, in_queries: str, scans: bool
) -> None:
    """nx-27017 names itself and answers `$in` by scanning ("auto" reads it so); the setting overrides what the
    server says, to measure MongoDB's path (one `$in` per batch) on nx-27017 or the other way round."""
    database = Database.connect(MongoSettings(uri=mongo_uri, database=unique("lookups"), in_queries=in_queries))
    try:
        await database.identify_server()
        assert database.scans_for_in is scans
        assert database.reads_each(17) is scans and database.reads_each(1)
        assert database.groups_by_one_field  # what the server is does not change with the setting
    finally:
        await database.close()
