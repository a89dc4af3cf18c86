"""An independent fault checker: load pushsvc while everything that can go wrong does, then count.

Setup: a dedicated nx-27017 and a dedicated Tansu, each behind the fault proxy (pushsvc reaches them only
through it; the checker reads MongoDB directly), two `pushsvc serve` replicas, the second with its clock
moved by libfaketime, and the TLS APNs/FCM peers recording every request.

During the load (valid requests of every targeting kind with poison messages mixed in): a seeded plan of
connection faults on both proxies (reset, drop, delay, short blackholes, refused connections) and kill -9
of the first replica at seeded moments, each followed by a restart.

Then, from the peers' records and MongoDB, never from pushsvc's own view:
- every published request is recorded and finished, and no poison is;
- every device a request targets received it at least once;
- a device received a request twice only if that request was in flight (claimed, unfinished) on a replica
  at the moment it was killed, or its lease lapsed (listed by the replica's `lease_lapsed` log);
- each request's counts give every targeted device exactly one final outcome, and say what the peers saw;
- the DLQ holds exactly the poison, each at least once; every finished request has an outcome event.

`run_check` is driven by tests/reliability/test_fault_checker.py (short) and benchmarks/fault_checker.py
(10k requests x 20 seeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from pushsvc.dev.servers import create_topics
from pushsvc.simulators.apns import ApnsPeer
from pushsvc.simulators.fcm import FcmPeer
from pushsvc.simulators.tls import TestPki
from tests.integration.stack import API_KEY, Stack
from tests.reliability.faultproxy import FaultPlan, ProxiedServer, proxied_nx27017, proxied_tansu
from tests.reliability.harness import FINISHED, Replica, android_token, ios_token, sends_per_request

POISON_SEND_AT = "9999-12-31T23:59:59-23:59"


@dataclass(frozen=True)
class CheckPlan:
    seed: int
    requests: int = 800
    rate: float = 100.0  # requests published per second
    poison_every: int = 50  # one poison message after every this many valid requests
    devices: int = 60  # 2 per user (iOS + Android), 5 tag groups
    users_share: float = 0.2  # requests to 1-2 users (batch lane)
    segment_share: float = 0.03  # requests to a tag group (fan-out lane, several chunks)
    kills: int = 2
    faults: int = 10  # connection faults over both proxies
    blackhole_seconds: tuple[float, float] = (0.3, 1.5)  # kept under the lease: a lapse is not the point here
    skew: str | None = "+45s"  # the second replica's clock offset (libfaketime); None: no second replica
    lease_seconds: float = 4.0
    chunk_size: int = 5
    finish_timeout: float = 240.0
    # Every provider answer takes this long (the peers hold it): work is in flight most of the time.
    provider_delay: float = 0.15


@dataclass
class CheckReport:
    plan: CheckPlan
    published: int = 0
    poison: int = 0
    recorded: int = 0
    unfinished: list[str] = field(default_factory=list)
    missing_devices: dict[str, int] = field(default_factory=dict)  # rid -> targeted devices never sent
    duplicates: dict[str, int] = field(default_factory=dict)  # rid -> extra sends
    duplicates_unexplained: dict[str, int] = field(default_factory=dict)
    count_mismatches: list[str] = field(default_factory=list)
    dlq_missing: list[str] = field(default_factory=list)
    dlq_unexpected: list[str] = field(default_factory=list)
    poison_recorded: list[str] = field(default_factory=list)
    missing_events: list[str] = field(default_factory=list)
    kills: list[dict] = field(default_factory=list)
    lapsed: set[str] = field(default_factory=set)
    faults: str = ""
    runtime: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.unfinished
            or self.missing_devices
            or self.duplicates_unexplained
            or self.count_mismatches
            or self.dlq_missing
            or self.dlq_unexpected
            or self.poison_recorded
            or self.missing_events
            or self.recorded != self.published
        )

    def summary(self) -> str:
        dup_sends = sum(self.duplicates.values())
        return (
            f"seed={self.plan.seed} requests={self.published} recorded={self.recorded} poison={self.poison} "
            f"lost={self.published - self.recorded + len(self.unfinished)} "
            f"missing_devices={sum(self.missing_devices.values())} "
            f"duplicate_sends={dup_sends} (requests={len(self.duplicates)}, "
            f"unexplained={len(self.duplicates_unexplained)}) count_mismatches={len(self.count_mismatches)} "
            f"dlq_missing={len(self.dlq_missing)} dlq_unexpected={len(self.dlq_unexpected)} "
            f"missing_events={len(self.missing_events)} kills={len(self.kills)} lapsed={len(self.lapsed)} "
            f"runtime={self.runtime:.1f}s"
        )

    def details(self) -> str:
        lines = [self.summary(), self.faults]
        for name in ("unfinished", "missing_devices", "duplicates_unexplained", "count_mismatches",
                     "dlq_missing", "dlq_unexpected", "poison_recorded", "missing_events"):
            value = getattr(self, name)
            if value:
                shown = sorted(value)[:10] if not isinstance(value, dict) else dict(sorted(value.items())[:10])
                lines.append(f"  {name}: {shown}")
        lines += [f"  kill {k}" for k in self.kills]
        return "\n".join(lines)


def faketime(offset: str) -> dict[str, str]:
    libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not libraries:
        raise RuntimeError("libfaketime missing: apt-get install faketime (.ci/run installs it)")
    return {"LD_PRELOAD": libraries[0], "FAKETIME": offset, "FAKETIME_DONT_RESET": "1"}


# ------------------------------------------------------------------------------------------------ the load


@dataclass
class Audience:
    tokens: list[str]  # devices[i] token
    users: dict[str, list[str]]  # user -> tokens
    groups: dict[str, list[str]]  # tag -> tokens


def audience(devices: int) -> Audience:
    tokens = [ios_token(i) if i % 2 == 0 else android_token(i) for i in range(devices)]
    users: dict[str, list[str]] = defaultdict(list)
    groups: dict[str, list[str]] = defaultdict(list)
    for i, token in enumerate(tokens):
        users[f"user-{i // 2}"].append(token)
        groups[f"group-{i % 5}"].append(token)
    return Audience(tokens, dict(users), dict(groups))


def build_load(plan: CheckPlan, people: Audience) -> tuple[list[tuple[str, bytes, set[str]]], list[str]]:
    """[(request id or poison marker, value, targeted tokens)], poison markers: all drawn from the seed."""
    rng = random.Random(f"{plan.seed}/load")
    messages: list[tuple[str, bytes, set[str]]] = []
    poison: list[str] = []
    user_names = sorted(people.users)
    for n in range(plan.requests):
        rid = f"s{plan.seed}-{n:06d}"
        draw = rng.random()
        if draw < plan.segment_share:
            group = rng.choice(sorted(people.groups))
            target: dict[str, Any] = {"segment": {"tags_any": [group]}}
            expected = set(people.groups[group])
        elif draw < plan.segment_share + plan.users_share:
            names = rng.sample(user_names, rng.choice((1, 2)))
            target = {"users": names}
            expected = {t for name in names for t in people.users[name]}
        else:
            token = rng.choice(people.tokens)
            target = {"tokens": [token]}
            expected = {token}
        request = {"id": rid, "app": "demo", "target": target,
                   "message": {"title": "check", "body": rid, "data": {"rid": rid}}}
        messages.append((rid, orjson.dumps(request), expected))
        if plan.poison_every and n % plan.poison_every == plan.poison_every - 1:
            marker = f"poison-{plan.seed}-{len(poison):06d}"  # fixed width: no marker is a prefix of another
            poison.append(marker)
            messages.append((marker, _poison(marker, len(poison)), set()))
    return messages, poison


def _poison(marker: str, kind: int) -> bytes:
    base = {"id": marker, "app": "demo", "target": {"tokens": ["a" * 64]}, "message": {"title": "x"}}
    variants: list[bytes] = [
        orjson.dumps({**base, "options": {"send_at": POISON_SEND_AT}}),  # crashed the consume loop once
        b'{"id": "' + marker.encode() + b'", not json',
        orjson.dumps({**base, "app": "no-such-app"}),
        orjson.dumps({**base, "target": {"tokens": marker}}),
        orjson.dumps({**base, "message": {"title": "x", "data": {"blob": marker + "x" * 6000}}}),
    ]
    return variants[kind % len(variants)]


# ------------------------------------------------------------------------------------------------- the run


async def run_check(
    plan: CheckPlan,
    work_dir: Path,
    pki: TestPki,
    apns: ApnsPeer,
    fcm: FcmPeer,
    log: Callable[[str], None] = lambda line: None,
) -> CheckReport:
    started = time.monotonic()
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    apns.reset()
    fcm.reset()
    async with proxied_nx27017(work_dir / "nx", seed=plan.seed) as mongo, proxied_tansu(
        work_dir / "tansu", seed=plan.seed
    ) as kafka:
        topics = {"requests_topic": "check.requests", "dlq_topic": "check.dlq", "outcomes_topic": "check.outcomes"}
        await create_topics(kafka.address, {topics["requests_topic"]: 3, topics["dlq_topic"]: 1,
                                            topics["outcomes_topic"]: 1})
        service_account = fcm.write_service_account(work_dir / "fcm-sa.json")
        stack = Stack(work_dir, kafka.address, f"mongodb://{mongo.direct_address}", f"check{plan.seed}",
                      {**topics, "group_id": "check"}, pki, apns, fcm, service_account)
        try:
            return await _run(plan, stack, mongo, kafka, started, log)
        finally:
            await stack.close()


async def _run(
    plan: CheckPlan,
    stack: Stack,
    mongo: ProxiedServer,
    kafka: ProxiedServer,
    started: float,
    log: Callable[[str], None],
) -> CheckReport:
    report = CheckReport(plan)
    rng = random.Random(f"{plan.seed}/kills")
    people = audience(plan.devices)
    messages, poison = build_load(plan, people)
    expected = {rid: targets for rid, _, targets in messages if targets}
    report.poison = len(poison)
    dispatch = {"lease_seconds": plan.lease_seconds, "send_timeout_seconds": 2.0, "chunk_size": plan.chunk_size,
                "drain_timeout_seconds": 5.0, "outcome_sweep_grace_seconds": 2.0}
    proxied = {"uri": f"mongodb://{mongo.address}", "database": stack.database}
    first = Replica(stack, "checker-a", dispatch=dispatch, kafka={"max_poll_records": 100},
                    extra={"mongodb": proxied})
    replicas = [first]
    if plan.skew:
        replicas.append(Replica(stack, "checker-b", dispatch=dispatch, kafka={"max_poll_records": 100},
                                extra={"mongodb": proxied}, env=faketime(plan.skew)))
    for replica in replicas:
        await replica.start(ready_timeout=90)
    await register(first, people)
    stack.apns.set_default(delay=plan.provider_delay)
    for token in people.tokens:
        if token.startswith("fcm:"):
            stack.fcm.script(token, delay=plan.provider_delay)
    duration = len(messages) / plan.rate
    fault_plan = FaultPlan.generate(
        # Resets twice as likely as each other kind: they are what leaves a write's outcome unknown.
        plan.seed, plan.faults, kinds=("reset", "reset", "drop", "delay", "blackhole", "refuse"),
        window=(0.5, max(1.0, duration)), targets=("all", "one"), durations=plan.blackhole_seconds,
        delays=(0.02, 0.3), proxies=("mongo", "kafka"),
    )
    acked: set[str] = set()
    publisher = asyncio.create_task(publish(kafka.address, stack.requests_topic, messages, plan.rate, acked))
    fault_plan.start(mongo.proxy, kafka.proxy)
    in_flight: set[str] = set()
    try:
        kill_times = sorted(rng.uniform(0.2 * duration, 0.9 * duration) for _ in range(plan.kills))
        t0 = time.monotonic()
        for n, at in enumerate(kill_times, 1):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            await first.kill()
            caught = await claimed_by(stack, "checker-a")
            in_flight |= caught
            report.kills.append({"n": n, "at": round(time.monotonic() - t0, 1), "in_flight": len(caught)})
            log(f"kill -9 #{n} at {report.kills[-1]['at']}s: {len(caught)} notifications in flight")
            await first.start(ready_timeout=90)
        await publisher
        await fault_plan.finish()
        report.faults = fault_plan.report()
        log(report.faults)
        await wait_finished(stack, acked & set(expected), plan.finish_timeout)
        await asyncio.sleep(1.0)  # late duplicate sends would arrive now
        await account(report, stack, replicas, expected, acked, poison, in_flight)
    finally:
        publisher.cancel()
        with contextlib.suppress(BaseException):
            await publisher
        await fault_plan.cancel()
        for replica in replicas:
            if replica.alive:
                with contextlib.suppress(Exception):
                    await replica.terminate()
    report.runtime = time.monotonic() - started
    return report


async def register(replica: Replica, people: Audience) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for i, token in enumerate(people.tokens):
            body = {"app": "demo", "token": token, "platform": "ios" if i % 2 == 0 else "android",
                    "user_id": f"user-{i // 2}", "tags": [f"group-{i % 5}"]}
            async with http.post(f"{replica.url}/v1/devices", json=body) as response:
                assert response.status in (200, 201), await response.text()


async def publish(bootstrap: str, topic: str, messages: list, rate: float, acked: set[str]) -> None:
    """Publish every message at `rate`, each until the broker acknowledges it (through the faulty proxy a
    send may fail; a repeat is absorbed by the request id, as a producer's retry would be)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=5000)
    await producer.start()
    try:
        began = time.monotonic()
        for n, (name, value, _) in enumerate(messages):
            while True:
                try:
                    await producer.send_and_wait(topic, value, key=name.encode())
                    break
                except KafkaError:
                    await asyncio.sleep(0.2)
            acked.add(name)
            ahead = (n + 1) / rate - (time.monotonic() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()


async def claimed_by(stack: Stack, instance: str) -> set[str]:
    """Request ids a replica held (claimed, unfinished) when it died: their sends may repeat."""
    query = {"state": "dispatching", "lease_owner": {"$regex": f"^{instance}-"}}
    return {d["request_id"] async for d in stack.db.notifications.find(query, {"request_id": 1})}


async def wait_finished(stack: Stack, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await stack.db.notifications.count_documents({"state": {"$in": list(FINISHED)}})
        if done >= len(ids):
            return
        await asyncio.sleep(0.5)


async def account(
    report: CheckReport,
    stack: Stack,
    replicas: list[Replica],
    expected: dict[str, set[str]],
    acked: set[str],
    poison: list[str],
    in_flight: set[str],
) -> None:
    docs = {d["request_id"]: d async for d in stack.db.notifications.find({}, {"request_id": 1, "state": 1,
                                                                                "counts": 1})}
    published = {rid for rid in expected if rid in acked}
    report.published = len(published)
    report.recorded = len(published & set(docs))
    report.poison_recorded = sorted(p for p in poison if p in docs)
    report.unfinished = sorted(rid for rid in published if rid in docs and docs[rid]["state"] not in FINISHED)
    for replica in replicas:
        for event in replica.events("lease_lapsed"):
            report.lapsed |= {str(i).split(":", 1)[-1] for i in event.get("ids", [])}
    seen = sends_per_request(stack)
    per_request: dict[str, Counter[str]] = defaultdict(Counter)
    for (rid, token), n in seen.items():
        per_request[rid][token] += n
    for rid in published:
        got = per_request.get(rid, Counter())
        missing = [t for t in expected[rid] if got[t] == 0]
        if missing:
            report.missing_devices[rid] = len(missing)
        extra = sum(n - 1 for n in got.values() if n > 1)
        if extra:
            report.duplicates[rid] = extra
            if rid not in in_flight and rid not in report.lapsed:
                report.duplicates_unexplained[rid] = extra
        doc = docs.get(rid)
        if doc is None or doc["state"] not in FINISHED:
            continue
        counts = doc.get("counts", {})
        finals = sum(int(v) for k, v in counts.items() if k != "targeted")
        if not (counts.get("targeted") == len(expected[rid]) == finals == counts.get("delivered")):
            report.count_mismatches.append(f"{rid}: {counts} for {len(expected[rid])} devices")
        elif counts["delivered"] > len([t for t in got if got[t]]):
            report.count_mismatches.append(f"{rid}: counted {counts['delivered']} delivered, peers saw fewer")
    letters = await read_topic(stack.bootstrap, stack.kafka["dlq_topic"])
    in_dlq = set()
    for letter in letters:
        text = letter.decode("utf-8", "replace")
        marker = next((p for p in poison if p in text), None)
        if marker is None:
            report.dlq_unexpected.append(text[:120])
        else:
            in_dlq.add(marker)
    report.dlq_missing = sorted(set(poison) - in_dlq)
    events = await read_topic(stack.bootstrap, stack.kafka["outcomes_topic"])
    announced = {orjson.loads(e)["id"] for e in events}
    finished = {rid for rid in published if rid in docs and docs[rid]["state"] in FINISHED}
    report.missing_events = sorted(finished - announced)


async def read_topic(bootstrap: str, topic: str, idle_seconds: float = 2.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_seconds:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                values.extend(r.value or b"" for r in records)
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return values


__all__ = ["CheckPlan", "CheckReport", "run_check"]
