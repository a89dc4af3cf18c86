"""Chaos harness: `pushsvc serve` as real subprocesses, a load generator, and accounting from the TLS peers.

Shared by tests/reliability (scaled down) and benchmarks/chaos_*.py (full size). Every request targets one
device and carries its id in the message data (``rid``), so the peers' records say exactly which request
reached which device how many times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaProducer

from pushsvc.api.auth import hash_api_key
from pushsvc.dev.servers import free_port
from tests.integration.stack import API_KEY, Stack, write_config
from tests.reliability.faultproxy import ProxiedServer

# The code the subprocesses run (the benchmarks can point this at a snapshot of a commit).
ROOT = Path(os.environ.get("CHAOS_CODE_ROOT") or Path(__file__).resolve().parents[2])
FINISHED = ("done", "failed", "cancelled")


def ios_token(i: int) -> str:
    return f"{i:064x}"


def android_token(i: int) -> str:
    return f"fcm:chaos-{i:06d}-" + "z" * 40


# --------------------------------------------------------------------------------------------- replicas


class Replica:
    """One `pushsvc serve` subprocess with its own config file and captured log."""

    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        dispatch: dict[str, Any] | None = None,
        kafka: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.name = name
        self.port = free_port()
        self.log_path = stack.tmp_path / f"{name}.log"
        self.config_path = stack.tmp_path / f"{name}.yaml"
        write_config(
            self.config_path,
            bootstrap=stack.bootstrap,
            mongo_uri=stack.mongo_uri,
            database=stack.database,
            kafka={**stack.kafka, **(kafka or {})},
            apns_port=stack.apns.port,
            fcm_base_url=stack.fcm.base_url,
            ca_file=stack.pki.ca_file,
            service_account=stack.service_account,
            dispatch={
                "lease_seconds": 4.0,
                "send_timeout_seconds": 2.0,
                "drain_timeout_seconds": 10.0,
                **(dispatch or {}),
            },
        )
        config = yaml.safe_load(self.config_path.read_text())
        config["http"]["port"] = self.port
        config["log_level"] = "info"
        config["instance_name"] = name
        for key, value in (extra or {}).items():
            config[key] = value
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SSL_CERT_FILE": str(stack.pki.bundle_file),
            "REQUESTS_CA_BUNDLE": str(stack.pki.bundle_file),
            **(env or {}),
        }
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready_timeout: float = 60.0, wait_ready: bool = True) -> Replica:
        assert self.process is None or self.process.returncode is not None, "already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f'{{"chaos":"start","n":{self.starts},"t":{time.time()}}}\n'.encode())
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pushsvc.cli",
                "serve",
                "--config",
                str(self.config_path),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=self.env,
                cwd=str(ROOT),
            )
        if wait_ready:
            await self.wait_ready(ready_timeout)
        return self

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until /readyz answered 200."""
        started = time.monotonic()
        deadline = started + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as r:
                        if r.status == 200:
                            return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    async def readyz(self) -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            return r.status, await r.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as r:
            return await r.text()

    async def kill(self) -> None:
        """kill -9: no cleanup at all."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                await self.kill()
                raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM:\n{self.tail()}") from None
        return self.process.returncode or 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def events(self, name: str) -> list[dict]:
        found = []
        for line in self.log_text().splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    found.append(orjson.loads(line))
        return found


def proxied_replica(
    stack: Stack, mongo: ProxiedServer, mongodb: dict[str, Any] | None = None, **dispatch: object
) -> Replica:
    """A replica that reaches MongoDB through `mongo`'s fault proxy (with more `mongodb` settings if given),
    with these dispatch settings."""
    proxied = {"uri": f"mongodb://{mongo.address}", "database": stack.database, **(mongodb or {})}
    return Replica(stack, "replica", dispatch=dispatch, extra={"mongodb": proxied})


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------------------------------------- load


def request_for(rid: str, token: str) -> dict:
    return {
        "id": rid,
        "app": "demo",
        "target": {"tokens": [token]},
        "message": {"title": "Chaos", "body": f"request {rid}", "data": {"rid": rid}},
    }


@dataclass
class Load:
    """Requests (id -> target token) published to the requests topic."""

    ids: dict[str, str] = field(default_factory=dict)
    published_at: dict[str, float] = field(default_factory=dict)
    done_publishing: float | None = None


async def register_tagged(replica: Replica, tokens: list[str], tag: str) -> None:
    """iOS devices carrying `tag`, registered through the API."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for token in tokens:
            body = {"app": "demo", "token": token, "platform": "ios", "tags": [tag]}
            async with http.post(f"{replica.url}/v1/devices", json=body) as response:
                assert response.status in (200, 201), await response.text()


def padded_tokens(prefix: str, count: int, fill: str) -> list[str]:
    """`count` distinct 64-character hex-like tokens starting with `prefix`."""
    return [f"{prefix}{n:04x}".ljust(64, fill) for n in range(count)]


async def register_devices(replica: Replica, count: int) -> list[str]:
    """Half iOS, half Android, through the API; returns the tokens."""
    tokens = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for i in range(count):
            if i % 2 == 0:
                body = {"app": "demo", "token": ios_token(i), "platform": "ios"}
            else:
                body = {"app": "demo", "token": android_token(i), "platform": "android"}
            async with http.post(f"{replica.url}/v1/devices", json=body) as response:
                assert response.status in (200, 201), await response.text()
            tokens.append(body["token"])
    return tokens


async def publish_load(
    stack: Stack, load: Load, tokens: list[str], count: int, rate: float, prefix: str, batch: int = 50
) -> None:
    """Publish `count` requests at about `rate` per second (acks=all, each awaited per batch)."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for first in range(0, count, batch):
            futures = []
            for i in range(first, min(count, first + batch)):
                rid = f"{prefix}-{i:06d}"
                token = tokens[i % len(tokens)]
                futures.append(
                    await producer.send(stack.requests_topic, orjson.dumps(request_for(rid, token)), key=rid.encode())
                )
                load.ids[rid] = token
            await asyncio.gather(*futures)
            now = time.time()
            for i in range(first, min(count, first + batch)):
                load.published_at[f"{prefix}-{i:06d}"] = now
            ahead = (first + batch) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    load.done_publishing = time.time()


# ------------------------------------------------------------------------------------------ accounting


def sends_per_request(stack: Stack) -> Counter[tuple[str, str]]:
    """(rid, token) -> how many send requests the APNs and FCM peers received."""
    sends: Counter[tuple[str, str]] = Counter()
    for r in list(stack.apns.requests):
        if isinstance(r.body, dict) and "rid" in r.body:
            sends[(str(r.body["rid"]), r.token)] += 1
    for r in list(stack.fcm.requests):
        try:
            sends[(r.body["message"]["data"]["rid"], r.token or "")] += 1
        except (TypeError, KeyError):
            continue
    return sends


@dataclass
class Accounting:
    published: int
    delivered: int
    failed: int
    failure_reasons: Counter[str]
    lost: list[str]
    unfinished: list[str]
    duplicates: dict[str, int]  # rid -> sends beyond the first
    sent_without_delivery: list[str]

    def summary(self) -> str:
        dup_sends = sum(self.duplicates.values())
        return (
            f"published={self.published} delivered={self.delivered} failed={self.failed} "
            f"reasons={dict(self.failure_reasons)} lost={len(self.lost)} unfinished={len(self.unfinished)} "
            f"duplicate_sends={dup_sends} (requests={len(self.duplicates)})"
        )


async def account(stack: Stack, load: Load) -> Accounting:
    projection = {"request_id": 1, "state": 1, "counts": 1, "error": 1}
    docs = {d["request_id"]: d async for d in stack.db.notifications.find({}, projection)}
    sends = sends_per_request(stack)
    delivered = failed = 0
    reasons: Counter[str] = Counter()
    lost: list[str] = []
    unfinished: list[str] = []
    without: list[str] = []
    for rid, token in load.ids.items():
        doc = docs.get(rid)
        if doc is None:
            lost.append(rid)
            continue
        if doc["state"] not in FINISHED:
            unfinished.append(rid)
            continue
        counts = doc.get("counts", {})
        if counts.get("delivered", 0) >= 1:
            delivered += 1
            if sends[(rid, token)] == 0:
                without.append(rid)  # counted delivered, but the provider never saw it: lost
        else:
            failed += 1
            reason = (
                doc.get("error")
                or ",".join(k for k, v in counts.items() if v and k not in ("targeted", "delivered"))
                or "no_outcome"
            )
            reasons[reason] += 1
    duplicates = {rid: n - 1 for (rid, _), n in sends.items() if n > 1 and rid in load.ids}
    return Accounting(len(load.ids), delivered, failed, reasons, lost, unfinished, duplicates, without)


async def wait_all_finished(stack: Stack, load: Load, timeout: float) -> float:
    """Wait until every published request is finished in MongoDB; returns when that happened (epoch)."""
    deadline = time.monotonic() + timeout
    ids = list(load.ids)
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            n = await stack.db.notifications.count_documents({"state": {"$in": list(FINISHED)}})
            if n >= len(ids):
                return time.time()
        await asyncio.sleep(0.5)
    return time.time()


async def outcome_ids(stack: Stack, idle_seconds: float = 2.0) -> Counter[str]:
    """Notification id -> outcome events on the outcomes topic (read from the start until it is idle)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        stack.kafka["outcomes_topic"],
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_seconds:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(Exception):
                        seen[orjson.loads(record.value)["id"]] += 1
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return seen


async def dispatching_ids(stack: Stack) -> set[str]:
    """Notifications a crashed replica may have had in flight (claimed, not finished)."""
    return {d["request_id"] async for d in stack.db.notifications.find({"state": "dispatching"}, {"request_id": 1})}


# ---------------------------------------------------------------------------------------------- secrets


def secret_values(stack: Stack, replicas: list[Replica], tokens: list[str]) -> dict[str, str]:
    """Everything that must never appear in a log line, by what it is."""
    secrets: dict[str, str] = {f"device token {t}": t for t in tokens}
    secrets["api key"] = API_KEY
    sa = orjson.loads(Path(stack.service_account).read_text())
    for line in sa["private_key"].strip().splitlines()[1:-1]:
        if len(line) >= 32:
            secrets["fcm private key line"] = line
            break
    secrets["fcm private key id"] = sa.get("private_key_id", "") or "-"
    for token in list(stack.fcm.issued_tokens):
        secrets[f"fcm access token {token[:6]}"] = token
    for r in list(stack.apns.requests)[:50]:
        auth = r.headers.get("authorization", "")
        if auth.startswith("bearer "):
            secrets["apns provider jwt"] = auth.removeprefix("bearer ")
    for replica in replicas:
        key_file = replica.config["apps"]["demo"]["apns"].get("key_file")
        if key_file:
            body = Path(key_file).read_text().strip().splitlines()[1:-1]
            if body:
                secrets[f"apns signing key ({replica.name})"] = body[0]
    return {k: v for k, v in secrets.items() if v and len(v) >= 8}


def leaks(replicas: list[Replica], secrets: dict[str, str]) -> list[str]:
    found = []
    for replica in replicas:
        for n, line in enumerate(replica.log_text().splitlines(), 1):
            for what, value in secrets.items():
                if value in line:
                    found.append(f"{replica.name}:{n}: {what}: {line[:200]}")
    return found


JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def jwt_like(replicas: list[Replica]) -> list[str]:
    return [f"{r.name}: {line[:200]}" for r in replicas for line in r.log_text().splitlines() if JWT.search(line)]


# ----------------------------------------------------------------------------------------- crash runs


@dataclass
class CrashReport:
    accounting: Accounting
    kills: list[dict]
    in_flight_at_kills: Counter[str]  # rid -> how many kills found it claimed (in flight)
    duplicates_outside_in_flight: dict[str, int]
    runtime_seconds: float
    drain_seconds: float
    leaked: list[str] = field(default_factory=list)  # log lines carrying a token, key or provider secret
    missing_outcome_events: list[str] = field(default_factory=list)  # finished, no event on push.outcomes

    def summary(self) -> str:
        return (
            f"{self.accounting.summary()} kills={len(self.kills)} "
            f"in_flight_at_kills={len(self.in_flight_at_kills)} "
            f"dups_outside_in_flight={len(self.duplicates_outside_in_flight)} "
            f"runtime={self.runtime_seconds:.1f}s drain_after_last_kill={self.drain_seconds:.1f}s "
            f"log_leaks={len(self.leaked)} missing_outcome_events={len(self.missing_outcome_events)}"
        )


async def crash_run(
    stack: Stack,
    *,
    requests: int,
    kills: int,
    rate: float,
    devices: int = 40,
    seed: int = 7,
    kill_window: tuple[float, float] = (1.0, 3.0),
    mode: str = "kill",
    finish_timeout: float = 300.0,
    log: Any = None,
) -> CrashReport:
    """Publish `requests` at `rate`/s into one replica and kill -9 (or SIGTERM, mode="term") it `kills`
    times at random moments, restarting it each time; then wait for everything to finish and account."""
    rng = random.Random(seed)
    started = time.monotonic()
    replica = Replica(stack, f"crash-{mode}", kafka={"max_poll_records": 200})
    await replica.start()
    tokens = await register_devices(replica, devices)
    load = Load()
    publisher = asyncio.create_task(publish_load(stack, load, tokens, requests, rate, prefix=f"c{seed}"))
    kill_log: list[dict] = []
    in_flight: Counter[str] = Counter()
    try:
        for n in range(kills):
            await asyncio.sleep(rng.uniform(*kill_window))
            finished = await stack.db.notifications.count_documents({"state": {"$in": list(FINISHED)}})
            if mode == "kill":
                await replica.kill()
                suspects = await dispatching_ids(stack)
                in_flight.update(suspects)
            else:
                code = await replica.terminate()
                assert code == 0, f"graceful exit code {code}"
                suspects = await dispatching_ids(stack)
            kill_log.append(
                {
                    "n": n + 1,
                    "at": round(time.monotonic() - started, 2),
                    "finished_before": finished,
                    "published_before": len(load.ids),
                    "dispatching": len(suspects),
                }
            )
            if log:
                log(
                    f"{mode} #{n + 1} at {kill_log[-1]['at']}s: finished={finished} "
                    f"published={len(load.ids)} dispatching={len(suspects)}"
                )
            restart = time.monotonic()
            await replica.start()
            kill_log[-1]["restart_ready_s"] = round(time.monotonic() - restart, 2)
        await publisher
        last = time.monotonic()
        await wait_all_finished(stack, load, finish_timeout)
        drain = time.monotonic() - last
        await asyncio.sleep(0.5)  # late duplicate sends would show up now
        accounting = await account(stack, load)
        leaked = leaks([replica], secret_values(stack, [replica], tokens))
        outcomes = await outcome_ids(stack)
        missing_events = sorted(rid for rid in load.ids if rid not in outcomes)
    finally:
        publisher.cancel()
        with contextlib.suppress(BaseException):
            await publisher
        if replica.alive:
            await replica.terminate()
    outside = {rid: n for rid, n in accounting.duplicates.items() if in_flight[rid] == 0}
    return CrashReport(
        accounting, kill_log, in_flight, outside, time.monotonic() - started, drain, leaked, missing_events
    )


def api_key_config(name: str, plain: str, scopes: list[str], apps: Sequence[str] = ("*",)) -> dict:
    return {"name": name, "hash": hash_api_key(plain), "scopes": scopes, "apps": list(apps)}
