"""Hostile input: fuzzed Kafka messages go to the DLQ and the consumer keeps going; oversize bodies get 413."""

from __future__ import annotations

import random

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.stack import API_KEY, Stack, consume
from tests.reliability.harness import (
    Load,
    Replica,
    account,
    leaks,
    register_devices,
    request_for,
    secret_values,
    wait_all_finished,
)

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 64 * 1024


def hostile_messages(token: str, seed: int = 3) -> list[tuple[str, bytes | None]]:
    """(expected DLQ reason, value) for every kind of bad input."""
    rng = random.Random(seed)
    good = request_for("x", token)
    many_keys = {f"k{i}": 1 for i in range(101)}
    big_body = {"body": "é" * 3000}
    cases: list[tuple[str, bytes | None]] = []
    for _ in range(40):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        try:
            orjson.loads(blob)
        except orjson.JSONDecodeError:
            cases.append(("invalid_json", blob))
    cases += [
        ("invalid_json", None),  # tombstone
        ("invalid_json", b""),
        ("invalid_json", b"\xff\xfe\x00binary"),
        ("invalid_json", b'{"id": "\xed\xa0\x80"}'),  # lone surrogate, invalid UTF-8
        ("invalid_json", b"[" * 20_000 + b"]" * 20_000),  # deeper than any parser's limit
        ("invalid_json", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("invalid_json", b"NaN"),
        ("invalid_json", orjson.dumps(good)[:-1]),  # truncated
        ("too_large", orjson.dumps({**good, "id": "big", "message": {"title": "x" * (MAX_MESSAGE_BYTES + 10)}})),
        ("too_large", b"x" * 900_000),
        ("invalid_request", b"42"),
        ("invalid_request", b'"a string"'),
        ("invalid_request", b"[]"),
        ("invalid_request", b"null"),
        ("invalid_json", b"1e400"),  # infinity
        ("invalid_request", orjson.dumps({**good, "id": 42})),
        ("invalid_request", orjson.dumps({**good, "id": ""})),
        ("invalid_request", orjson.dumps({**good, "id": "i" * 10_000})),
        ("invalid_request", orjson.dumps({**good, "target": ["a"]})),
        ("invalid_request", orjson.dumps({**good, "target": {"tokens": "not-a-list"}})),
        ("invalid_request", orjson.dumps({**good, "target": {"tokens": [1, 2]}})),
        ("invalid_request", orjson.dumps({**good, "target": {"tokens": [f"t{i:07d}" for i in range(1001)]}})),
        ("invalid_request", orjson.dumps({**good, "message": "hi"})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": ["x"]}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "badge": "one"}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "badge": True}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "data": {"from": "x"}}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "data": {"n": {"a": {"b": 1}}}}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "data": _deep(200)}})),
        ("invalid_request", orjson.dumps({**good, "options": {"ttl_seconds": "3600"}})),
        ("invalid_request", orjson.dumps({**good, "options": {"ttl_seconds": -1}})),
        ("invalid_request", orjson.dumps(good)[:-1] + b',"options":{"ttl_seconds":1000000000000000000000000000000}}'),
        ("invalid_request", orjson.dumps({**good, "options": {"priority": "urgent"}})),
        ("invalid_request", orjson.dumps({**good, "options": {"send_at": "yesterday"}})),
        ("invalid_request", orjson.dumps({**good, "options": {"send_at": "2026-12-01T09:00:00"}})),
        ("invalid_request", orjson.dumps({**good, "app": None})),
        ("invalid_request", orjson.dumps({**good, "app": "other"})),
        ("invalid_request", orjson.dumps({**good, "unexpected": 1})),
        ("invalid_request", orjson.dumps({**good, "__proto__": {"x": 1}})),
        ("invalid_request", orjson.dumps({**good, "": 1})),
        # send_at whose conversion to UTC overflowed (OverflowError crashed the loop and lost the batch)
        ("invalid_request", orjson.dumps({**good, "options": {"send_at": "9999-12-31T23:59:59-23:59"}})),
        ("invalid_request", orjson.dumps({**good, "options": {"send_at": "0001-01-01T00:00:00", "local_time": True}})),
        # over the providers' payload limits: refused at intake, not once per device
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "data": {"blob": "x" * 5000}}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "localized": {"fr": big_body}}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "badge": 2**40}})),
        ("invalid_request", orjson.dumps({**good, "message": {"title": "t", "data": many_keys}})),
    ]
    return cases


def _deep(depth: int) -> dict:
    node: dict = {"leaf": 1}
    for _ in range(depth):
        node = {"n": node}
    return node


@pytest.mark.timeout(120)
async def test_fuzzed_kafka_messages_go_to_dlq_and_consumer_stays_alive(stack: Stack) -> None:
    replica = await Replica(stack, "fuzz", kafka={"max_message_bytes": MAX_MESSAGE_BYTES}).start()
    tokens = await register_devices(replica, 2)
    cases = hostile_messages(tokens[0])
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    load = Load()
    try:
        for n, (_, value) in enumerate(cases):
            await producer.send_and_wait(stack.requests_topic, value, key=f"k{n % 5}".encode())
            if n % 10 == 0:  # valid requests in between must all be delivered
                rid = f"ok-{n}"
                load.ids[rid] = tokens[n % 2]
                await producer.send_and_wait(
                    stack.requests_topic, orjson.dumps(request_for(rid, tokens[n % 2])), key=f"k{n % 5}".encode()
                )
    finally:
        await producer.stop()
    await wait_all_finished(stack, load, 60)
    dead = await consume(stack.bootstrap, stack.kafka["dlq_topic"], len(cases), timeout=30)
    letters = [orjson.loads(r.value) for r in dead]
    acc = await account(stack, load)
    got = sorted(letter["reason"] for letter in letters)
    want = sorted(reason for reason, _ in cases)
    print(
        f"fuzz: {len(cases)} hostile messages -> {len(letters)} dead letters "
        f"{ {r: got.count(r) for r in set(got)} }; valid in between: {acc.summary()}"
    )
    assert replica.alive
    assert got == want
    assert all(len(r.value) < 200_000 for r in dead)  # oversize input keeps a prefix only
    assert acc.delivered == acc.published == len(load.ids) and acc.duplicates == {}
    assert not replica.events("loop_crashed")
    status, _ = await replica.readyz()
    assert status == 200
    assert leaks([replica], secret_values(stack, [replica], tokens)) == []
    await replica.terminate()


@pytest.mark.timeout(60)
async def test_oversize_http_bodies_are_rejected(stack: Stack) -> None:
    replica = await Replica(stack, "bodies").start()
    limit = replica.config["http"].get("max_body_bytes", 256 * 1024)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    big = orjson.dumps(
        {"id": "big", "app": "demo", "target": {"tokens": ["a" * 64]}, "message": {"title": "x" * (limit + 1000)}}
    )

    async def chunks():
        for i in range(0, len(big), 16 * 1024):
            yield big[i : i + 16 * 1024]

    async with aiohttp.ClientSession() as http:
        for path in ("/v1/notifications", "/v1/devices"):
            async with http.post(f"{replica.url}{path}", data=big, headers=headers) as r:
                assert r.status == 413, (path, r.status, await r.text())
                assert (await r.json())["error"]["code"] == "body_too_large"
            async with http.post(f"{replica.url}{path}", data=chunks(), headers=headers) as r:  # chunked
                assert r.status == 413, (path, "chunked", r.status, await r.text())
        # Deep JSON inside the size limit is a 400, not a crash.
        deep = b"[" * 100_000 + b"]" * 100_000
        async with http.post(f"{replica.url}/v1/notifications", data=deep, headers=headers) as r:
            assert r.status == 400, await r.text()
        async with http.get(f"{replica.url}/healthz") as r:
            assert r.status == 200
    await replica.terminate()
