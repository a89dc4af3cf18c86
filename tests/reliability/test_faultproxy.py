"""The fault proxy itself, against the real servers: what each fault looks like to PyMongo, aiokafka and a
raw socket, that clients recover once the fault is over, and that a seed always gives the same plan."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import bson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from pushsvc.dev.servers import ServerProcess, create_topics
from tests.conftest import unique
from tests.integration.stack import wait_until
from tests.reliability.faultproxy import KINDS, Fault, FaultPlan, FaultProxy, proxied_tansu

pytestmark = pytest.mark.integration


@pytest.fixture
async def mongo_proxy(mongo_server: ServerProcess) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the session's nx-27017 (each test uses its own database)."""
    async with FaultProxy("127.0.0.1", mongo_server.port, name="mongo", seed=1) as proxy:
        yield proxy


def client_via(proxy: FaultProxy, **options: object) -> AsyncMongoClient:
    # Polling monitor with a long period: the driver's own monitor connection (also through the proxy)
    # then does not notice a fault before the operation under test does, which keeps the outcome exact.
    defaults: dict[str, object] = {
        "serverSelectionTimeoutMS": 3000,
        "serverMonitoringMode": "poll",
        "heartbeatFrequencyMS": 60_000,
    }
    return AsyncMongoClient(f"mongodb://{proxy.address}", **{**defaults, **options})


async def wait_links(proxy: FaultProxy, count: int) -> None:
    async def linked() -> bool:
        return proxy.forwarding_connections >= count

    await wait_until(linked, timeout=5, interval=0.01)


async def test_forwards_transparently_and_counts(mongo_proxy: FaultProxy, mongo_uri: str) -> None:
    database = unique("fp")
    client = client_via(mongo_proxy)
    direct = AsyncMongoClient(mongo_uri)
    try:
        await client[database].items.insert_many([{"i": i, "pad": "x" * 100} for i in range(500)])
        through = await client[database].items.find({}, {"_id": 0}).sort("i", 1).to_list(None)
        stored = await direct[database].items.find({}, {"_id": 0}).sort("i", 1).to_list(None)
        assert through == stored == [{"i": i, "pad": "x" * 100} for i in range(500)]
        stats = mongo_proxy.stats
        assert stats.accepted >= 1 and mongo_proxy.open_connections >= 1
        assert stats.bytes_up > 500 * 100  # the inserted documents went up through the proxy
        assert stats.bytes_down > 500 * 100  # and came back down
        assert not stats.faults and not mongo_proxy.log
    finally:
        await client.close()
        await direct.close()


async def test_drop_is_a_fin_reset_is_a_rst_refuse_resets_new_connections(mongo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mongo_proxy.port)
    await wait_links(mongo_proxy, 1)
    injected = mongo_proxy.drop()
    assert injected.connections == 1
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # orderly end of stream
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", mongo_proxy.port)
    await wait_links(mongo_proxy, 1)
    assert mongo_proxy.reset().connections == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 5)
    writer.close()

    mongo_proxy.refuse()
    with pytest.raises(ConnectionResetError):  # while connecting, or on the first read: as soon as accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", mongo_proxy.port)
        try:
            await asyncio.wait_for(reader.read(100), 5)
        finally:
            writer.close()
    assert mongo_proxy.stats.refused == 1
    assert [(i.kind, i.target) for i in mongo_proxy.log] == [("drop", "all"), ("reset", "all"), ("refuse", "new")]
    assert mongo_proxy.stats.faults == {"drop": 1, "reset": 1, "refuse": 1}


def hello_message(request_id: int) -> bytes:
    """A MongoDB OP_MSG `hello` (the wire protocol by hand, to talk through the proxy on a raw socket)."""
    body = struct.pack("<IB", 0, 0) + bson.encode({"hello": 1, "$db": "admin"})
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body


async def test_a_fault_can_hit_one_connection_chosen_at_random(mongo_proxy: FaultProxy) -> None:
    clients = [await asyncio.open_connection("127.0.0.1", mongo_proxy.port) for _ in range(3)]
    await wait_links(mongo_proxy, 3)
    assert mongo_proxy.reset(target="one", rng=random.Random(5)).connections == 1
    survivors = 0
    for n, (reader, writer) in enumerate(clients):
        try:
            writer.write(hello_message(n + 1))
            header = await asyncio.wait_for(reader.readexactly(16), 5)
            assert struct.unpack("<iiii", header)[2] == n + 1  # the server's answer to this request
            survivors += 1
        except (ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError):
            pass
        finally:
            writer.close()
    assert survivors == 2
    assert mongo_proxy.log[-1].target == "one"


@pytest.mark.parametrize("fault", ["reset", "drop"])
async def test_pymongo_sees_a_connection_error_then_recovers(mongo_proxy: FaultProxy, fault: str) -> None:
    client = client_via(mongo_proxy, retryReads=False)
    collection = client[unique("fp")].items
    try:
        await collection.insert_one({"x": 1})
        assert await collection.find_one({"x": 1}) is not None
        hit = mongo_proxy.reset() if fault == "reset" else mongo_proxy.drop()
        assert hit.connections >= 1
        with pytest.raises(AutoReconnect):
            await collection.find_one({"x": 1})
        # The driver reconnects (through the proxy again) for the next operation.
        assert await collection.find_one({"x": 1}) is not None
        assert mongo_proxy.stats.accepted > hit.connections
    finally:
        await client.close()


async def test_pymongo_cursor_reset_between_batches_raises(mongo_proxy: FaultProxy) -> None:
    """A getMore on a connection the proxy reset fails loudly (the driver does not retry getMore)."""
    client = client_via(mongo_proxy)
    collection = client[unique("fp")].items
    try:
        await collection.insert_many([{"i": i} for i in range(50)])
        cursor = collection.find().sort("_id", 1).batch_size(10)
        assert len(await cursor.to_list(10)) == 10
        mongo_proxy.reset()
        with pytest.raises(AutoReconnect):
            await cursor.to_list(10)
    finally:
        await client.close()


@pytest.mark.parametrize("when", ["request", "reply"])
async def test_a_trap_loses_the_request_or_only_its_answer(mongo_proxy: FaultProxy, mongo_uri: str, when: str) -> None:
    """The ambiguous failure a retry must survive: "reply" lets the server apply the update, then resets the
    connection before its answer reaches the client; "request" resets it before the server sees anything."""
    database = unique("fp")
    client = client_via(mongo_proxy, retryWrites=False)
    direct = AsyncMongoClient(mongo_uri)
    try:
        await client[database].items.insert_one({"_id": 1, "n": 0})
        trap = mongo_proxy.trap(lambda data: b"update" in data and b"items" in data, when=when)  # type: ignore[arg-type]
        with pytest.raises(AutoReconnect):
            await client[database].items.update_one({"_id": 1}, {"$inc": {"n": 1}})
        assert trap.sprung == 1 and trap.remaining == 0
        stored = await direct[database].items.find_one({"_id": 1})
        assert stored is not None and stored["n"] == (1 if when == "reply" else 0)
        # Sprung once: the next update goes through.
        await client[database].items.update_one({"_id": 1}, {"$inc": {"n": 10}})
        stored = await direct[database].items.find_one({"_id": 1})
        assert stored is not None and stored["n"] == (11 if when == "reply" else 10)
        assert [i.kind for i in mongo_proxy.log] == ["trap"]
    finally:
        await client.close()
        await direct.close()


async def test_blackhole_makes_operations_time_out_until_healed(mongo_proxy: FaultProxy) -> None:
    client = client_via(mongo_proxy, socketTimeoutMS=400, connectTimeoutMS=400, serverSelectionTimeoutMS=800)
    collection = client[unique("fp")].items
    try:
        await collection.insert_one({"x": 1})
        mongo_proxy.blackhole()
        # Failed by the socket timeout (NetworkTimeout), or cancelled first when the driver's monitor, whose
        # check also goes unanswered, clears the pool (_OperationCancelled): both AutoReconnect, neither hangs.
        with pytest.raises(AutoReconnect):
            await asyncio.wait_for(collection.find_one({"x": 1}), 5)
        # A new client's connection is accepted but its handshake never gets an answer.
        late = client_via(mongo_proxy, connectTimeoutMS=400, serverSelectionTimeoutMS=800)
        try:
            with pytest.raises(ServerSelectionTimeoutError):
                await late[collection.database.name].items.find_one({"x": 1})
        finally:
            await late.close()
        mongo_proxy.heal()
        async with asyncio.timeout(10):
            while True:  # the driver marked the server unknown; it comes back once healed
                try:
                    assert await collection.find_one({"x": 1}) is not None
                    break
                except AutoReconnect:
                    await asyncio.sleep(0.1)
        assert mongo_proxy.stats.faults == {"blackhole": 1}
    finally:
        await client.close()


async def test_blackhole_for_a_while_delays_without_losing(mongo_proxy: FaultProxy) -> None:
    """A bounded blackhole holds the bytes and delivers them once over: the operation just takes longer."""
    client = client_via(mongo_proxy)
    collection = client[unique("fp")].items
    try:
        await collection.insert_one({"x": 1})
        mongo_proxy.blackhole(duration=0.5)
        started = time.monotonic()
        assert await collection.find_one({"x": 1}) is not None
        assert time.monotonic() - started >= 0.4  # a lower bound: the fault's own length, not a performance claim
    finally:
        await client.close()


async def test_delay_adds_latency_per_direction(mongo_proxy: FaultProxy) -> None:
    client = client_via(mongo_proxy)
    collection = client[unique("fp")].items
    try:
        await collection.insert_one({"x": 1})
        mongo_proxy.delay(0.15, direction="both", duration=5.0)
        started = time.monotonic()
        await collection.find_one({"x": 1})
        assert time.monotonic() - started >= 0.3  # one chunk up, one down
        mongo_proxy.heal()
        mongo_proxy.delay(0.2, direction="down")
        started = time.monotonic()
        await collection.find_one({"x": 1})
        assert time.monotonic() - started >= 0.2
        assert [i.kind for i in mongo_proxy.log] == ["delay", "delay"]
    finally:
        await client.close()


async def test_same_seed_same_plan() -> None:
    def make(seed: int) -> FaultPlan:
        return FaultPlan.generate(seed, 6, window=(1.0, 9.0), targets=("all", "one"), proxies=("mongo", "kafka"))

    assert make(7).faults == make(7).faults
    assert make(7).describe() == make(7).describe()
    assert make(7).faults != make(8).faults
    plan = make(7)
    assert [f.at for f in plan.faults] == sorted(f.at for f in plan.faults)
    assert all(1.0 <= f.at <= 9.0 and f.kind in KINDS for f in plan.faults)
    assert "seed=7" in plan.describe() and len(plan.describe().splitlines()) == 7
    # A replayed plan can be written out by hand from a report.
    assert FaultPlan([Fault(2.0, "reset"), Fault(3.3, "reset")], seed=42).describe().splitlines()[1:] == [
        "  planned  2.0s reset all",
        "  planned  3.3s reset all",
    ]


async def test_plan_injects_at_its_times_and_logs_it(mongo_proxy: FaultProxy) -> None:
    client = client_via(mongo_proxy)
    collection = client[unique("fp")].items
    try:
        await collection.insert_one({"x": 1})
        plan = FaultPlan.generate(11, 5, window=(0.1, 0.8), durations=(0.1, 0.2), delays=(0.01, 0.02))
        started = time.monotonic()
        plan.start(mongo_proxy)
        await plan.finish()
        assert time.monotonic() - started >= plan.faults[-1].at
        assert [i.kind for i in plan.log] == [f.kind for f in plan.faults]
        assert sum(mongo_proxy.stats.faults.values()) == 5
        assert "injected" in plan.report() and "seed=11" in plan.report()
        async with asyncio.timeout(10):  # healed: the client works again
            while True:
                try:
                    assert await collection.find_one({"x": 1}) is not None
                    break
                except AutoReconnect:
                    await asyncio.sleep(0.1)
    finally:
        await client.close()


async def test_kafka_through_the_proxied_broker_survives_resets(tmp_path: Path) -> None:
    async with proxied_tansu(tmp_path, seed=3) as kafka:
        proxy = kafka.proxy
        topic = "fp-events"
        await create_topics(kafka.address, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=kafka.address, acks="all", request_timeout_ms=10_000)
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka.address, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await producer.start()
        await consumer.start()
        received: list[bytes] = []

        async def consume() -> None:
            async for record in consumer:
                received.append(record.value)

        reading = asyncio.create_task(consume())
        sent: list[bytes] = []
        try:
            for i in range(100):
                value = f"before-{i:04d}-".encode() + b"x" * 200
                await producer.send_and_wait(topic, value)
                sent.append(value)
            before = proxy.stats.bytes_up
            assert before > 100 * 200  # produce requests came through the proxy: the broker advertises it
            # Resets while producing and consuming: every acknowledged message must still arrive.
            plan = FaultPlan([Fault(0.3, "reset"), Fault(0.9, "reset"), Fault(1.5, "reset")], seed="kafka")
            plan.start(proxy)
            deadline = time.monotonic() + 2.5
            i = 0
            while time.monotonic() < deadline:
                value = f"during-{i:04d}-".encode() + b"y" * 200
                await producer.send_and_wait(topic, value)
                sent.append(value)
                i += 1
                await asyncio.sleep(0.005)
            await plan.finish()
            assert [i.connections > 0 for i in plan.log] == [True, True, True], plan.report()
            async def all_received() -> bool:
                return set(sent) <= set(received)

            await wait_until(all_received, timeout=30)
            assert proxy.stats.faults == {"reset": 3}
            assert proxy.stats.accepted > 3  # the clients reconnected through the proxy
        finally:
            reading.cancel()
            await producer.stop()
            await consumer.stop()
