"""Dependency outages under load: MongoDB stopped, broker frozen, provider answering 503.

The service must stay up, report the outage on /readyz, lose nothing, and recover by itself. Each outage
uses its own MongoDB / broker process so the shared session servers are never disturbed.

Broker outages, two kinds: a frozen broker (SIGSTOP/SIGCONT: its port stays open but nothing answers,
like a network partition) and a real stop and restart of a broker on durable storage (Tansu's S3 engine on
moto's S3 server), which comes back with its topics, messages and committed offsets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from pushsvc.dev.servers import ServerProcess, create_topics, free_port, nx27017, tansu
from tests.integration.stack import Stack
from tests.reliability.harness import (
    Load,
    Replica,
    account,
    metric_sum,
    publish_load,
    register_devices,
    wait_all_finished,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 10.0


async def watch_readiness(replica: Replica, seconds: float, dependency: str) -> dict:
    """Poll /healthz and /readyz for `seconds`: did readiness name the dependency, did liveness hold."""
    seen = {"not_ready": 0, "polls": 0, "health_failures": 0, "report": None}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=4)) as http:
        while time.monotonic() < deadline:
            seen["polls"] += 1
            try:
                async with http.get(f"{replica.url}/healthz") as r:
                    if r.status != 200:
                        seen["health_failures"] += 1
                async with http.get(f"{replica.url}/readyz") as r:
                    body = await r.json()
                    if r.status == 503 and body["checks"].get(dependency) != "ok":
                        seen["not_ready"] += 1
                        seen["report"] = body["checks"][dependency]
            except (aiohttp.ClientError, TimeoutError):
                seen["health_failures"] += 1
            await asyncio.sleep(0.5)
    return seen


async def assert_recovered(
    stack: Stack, replica: Replica, load: Load, publisher: asyncio.Task, seen: dict, stopped: float, name: str
) -> None:
    """After the dependency is back: ready again, every request finished, none lost, liveness never failed."""
    restored = time.monotonic()
    ready_s = await replica.wait_ready(90)
    await publisher
    await wait_all_finished(stack, load, 120)
    finished_s = time.monotonic() - restored
    await asyncio.sleep(0.5)
    acc = await account(stack, load)
    print(
        f"{name} outage {restored - stopped:.1f}s: {acc.summary()} readiness={seen} "
        f"ready_again_after={ready_s:.1f}s all_finished_after={finished_s:.1f}s"
    )
    assert replica.alive and seen["health_failures"] == 0
    assert seen["not_ready"] > 0, seen
    assert acc.lost == [] and acc.unfinished == [] and acc.sent_without_delivery == []
    assert acc.delivered == acc.published == 600
    await replica.terminate()


async def loaded_replica_on(
    stack: Stack, broker: ServerProcess, name: str, prefix: str
) -> tuple[Replica, list[str], Load]:
    """Point the stack at a dedicated `broker`, make its topics, start a replica with 20 devices and publish
    300 requests through it (all acknowledged)."""
    stack.bootstrap = f"127.0.0.1:{broker.port}"
    await create_topics(
        stack.bootstrap, {stack.requests_topic: 3, stack.kafka["dlq_topic"]: 1, stack.kafka["outcomes_topic"]: 1}
    )
    replica = await Replica(stack, name).start()
    tokens = await register_devices(replica, 20)
    load = Load()
    await publish_load(stack, load, tokens, 300, 300, prefix=prefix)
    return replica, tokens, load


@pytest.mark.timeout(180)
async def test_mongodb_stopped_for_10s(stack: Stack, work_dir: Path) -> None:
    mongo = nx27017(work_dir / f"mongo-chaos-{stack.database}").start()
    try:
        await stack.use_mongo(f"mongodb://127.0.0.1:{mongo.port}")
        replica = await Replica(stack, "mongo-outage").start()
        tokens = await register_devices(replica, 20)
        load = Load()
        publisher = asyncio.create_task(publish_load(stack, load, tokens, 600, 60, prefix="mo"))
        await asyncio.sleep(2.0)
        mongo.stop()
        stopped = time.monotonic()
        seen = await watch_readiness(replica, OUTAGE_SECONDS, "mongodb")
        mongo.start()
        await assert_recovered(stack, replica, load, publisher, seen, stopped, "mongodb")
    finally:
        await stack.close()
        mongo.stop()


@pytest.mark.timeout(180)
async def test_broker_unreachable_for_10s(stack: Stack, work_dir: Path) -> None:
    broker = tansu(work_dir / f"tansu-chaos-{stack.database}").start()
    try:
        replica, tokens, load = await loaded_replica_on(stack, broker, "broker-outage", prefix="bo1")
        publisher = asyncio.create_task(publish_load(stack, load, tokens, 300, 60, prefix="bo2"))
        await asyncio.sleep(1.0)
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            seen = await watch_readiness(replica, OUTAGE_SECONDS, "kafka")
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        await assert_recovered(stack, replica, load, publisher, seen, stopped, "broker")
    finally:
        await stack.close()
        broker.stop()


@pytest.mark.timeout(180)
async def test_provider_answering_503_is_retried_until_it_recovers(stack: Stack) -> None:
    # Retry-After: 1 makes every retry wait >= 1 s, so 12 attempts outlast the 8 s outage.
    replica = await Replica(
        stack, "provider-503", dispatch={"max_attempts": 12, "backoff_base_seconds": 0.2, "backoff_max_seconds": 1.0}
    ).start()
    tokens = await register_devices(replica, 20)
    stack.apns.set_default(status=503, reason="ServiceUnavailable", retry_after=1)
    for token in tokens:
        if token.startswith("fcm:"):
            stack.fcm.script(token, error_code="UNAVAILABLE", retry_after=1)
    outage_started = time.time()
    load = Load()
    await publish_load(stack, load, tokens, 100, 200, prefix="p503")
    await asyncio.sleep(8.0)
    status, _ = await replica.readyz()
    health_ok = replica.alive
    stack.apns.set_default()
    for token in tokens:
        if token.startswith("fcm:"):
            stack.fcm.script(token, status=200)
    restored = time.time()
    await wait_all_finished(stack, load, 60)
    finished_s = time.time() - restored
    await asyncio.sleep(0.5)
    acc = await account(stack, load)
    text = await replica.metrics()
    retries = metric_sum(text, "pushsvc_retries_total")
    # Successful sends (after the outage) per request: exactly one each.
    after = {}
    for r in stack.apns.requests:
        if r.time >= restored and isinstance(r.body, dict):
            after[r.body.get("rid")] = after.get(r.body.get("rid"), 0) + 1
    for r in stack.fcm.requests:
        if r.status == 200:
            rid = r.body["message"]["data"]["rid"]
            after[rid] = after.get(rid, 0) + 1
    attempts_during = sum(1 for r in stack.apns.requests if r.time < restored) + sum(
        1 for r in stack.fcm.requests if r.status == 503
    )
    print(
        f"provider 503 for {restored - outage_started:.1f}s: {acc.summary()} retries={retries:.0f} "
        f"503s_answered={attempts_during} readyz_during={status} all_finished_after={finished_s:.1f}s"
    )
    assert health_ok
    assert retries > 0
    assert acc.lost == [] and acc.unfinished == []
    assert acc.delivered == acc.published == 100, acc.failure_reasons
    assert all(after.get(rid, 0) == 1 for rid in load.ids), {r: after.get(r) for r in load.ids if after.get(r) != 1}
    await replica.terminate()


def s3_server(work_dir: Path) -> tuple[ServerProcess, dict[str, str]]:
    """moto's S3 server with a bucket for Tansu, and the environment that points Tansu at it."""
    port = free_port()
    server = ServerProcess("moto", port, [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
                           work_dir / "moto.log").start()
    env = {"AWS_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3  # moto brings it

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT"], region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="tansu")
    return server, env


@pytest.mark.timeout(240)
async def test_broker_stopped_for_10s_and_restarted_loses_nothing(stack: Stack, work_dir: Path) -> None:
    """A real stop: the broker process exits and a new one starts on the same storage. pushsvc reports it
    (readiness), recovers by itself, and delivers every request once, including requests the broker alone
    held across the restart; the consumer resumes from its committed offsets."""
    s3, env = s3_server(work_dir / f"s3-{stack.database}")
    broker = tansu(work_dir / f"tansu-durable-{stack.database}", storage="s3://tansu/", env=env).start()
    try:
        replica, tokens, load = await loaded_replica_on(stack, broker, "broker-restart", prefix="br1")
        broker.stop()
        stopped = time.monotonic()
        seen = await watch_readiness(replica, OUTAGE_SECONDS, "kafka")
        broker.start()
        publisher = asyncio.create_task(publish_load(stack, load, tokens, 300, 60, prefix="br2"))
        await assert_recovered(stack, replica, load, publisher, seen, stopped, "broker stop+restart")  # stops it

        # Messages only the broker holds, and offsets it committed: pushsvc is down, 200 requests are
        # published, then the broker stops and starts again. The new pushsvc takes exactly those 200 (its
        # fresh counters: 200 accepted, none seen again), so it resumed from the committed offsets.
        await publish_load(stack, load, tokens, 200, 1000, prefix="br3")
        broker.stop()
        broker.start()
        await replica.start()
        await wait_all_finished(stack, load, 120)
        metrics = await replica.metrics()
        ingested = {o: metric_sum(metrics, "pushsvc_requests_ingested_total", source="kafka", outcome=o)
                    for o in ("accepted", "duplicate", "invalid")}
        assert ingested == {"accepted": 200, "duplicate": 0, "invalid": 0}, ingested
        acc = await account(stack, load)
        assert acc.delivered == acc.published == 800 and acc.lost == [] and acc.duplicates == {}, acc.summary()
        await replica.terminate()
    finally:
        await stack.close()
        broker.stop()
        s3.stop()
