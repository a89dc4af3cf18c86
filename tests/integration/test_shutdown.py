"""Graceful shutdown of a real `pushsvc serve` process on SIGTERM.

The service runs as a subprocess (`python -m pushsvc.cli serve --config ...`) against the session's
Tansu broker, nx-27017 and TLS APNs peer; the peer is scripted to hold answers so that sends are in
flight when SIGTERM arrives. Checked: exit status and time against dispatch.drain_timeout_seconds,
in-flight deliveries finished (or, past the drain deadline, cancelled with the lease released and the
cursor saved so a new instance repeats only that chunk), committed offsets covering every recorded
request, a request published after SIGTERM delivered by the next instance, and logs that are JSON lines
without a full device token. In process: an idle replica's stop does not wait out its Kafka poll.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pushsvc.ingest import kafka as kafka_ingest
from tests.integration.stack import Stack, auth_headers, consume, wait_until, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Closing the consumer, producer, provider connections and HTTP after the drain; exiting the interpreter.
EXIT_MARGIN_SECONDS = 5.0


def ios_tokens(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:04x}".ljust(64, "e") for n in range(count)]


def alert(request_id: str, target: dict) -> dict:
    return {"id": request_id, "app": "demo", "target": target, "message": {"title": "Bye", "body": "soon"}}


class ServeProcess:
    """`pushsvc serve` in a subprocess, wired to the test's servers; stdout (JSON logs) kept in a file."""

    def __init__(self, stack: Stack, name: str, dispatch: dict[str, Any]) -> None:
        self.stack = stack
        self.dispatch = dispatch
        self.config = write_config(
            stack.tmp_path / f"serve-{name}.yaml",
            bootstrap=stack.bootstrap,
            mongo_uri=stack.mongo_uri,
            database=stack.database,
            kafka=stack.kafka,
            apns_port=stack.apns.port,
            fcm_base_url=stack.fcm.base_url,
            ca_file=stack.pki.ca_file,
            service_account=stack.service_account,
            dispatch=dispatch,
        )
        self.stdout_path = stack.tmp_path / f"serve-{name}.stdout"
        self.stderr_path = stack.tmp_path / f"serve-{name}.stderr"
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.started: dict[str, Any] = {}

    async def start(self) -> ServeProcess:
        env = {
            **os.environ,
            "SSL_CERT_FILE": str(self.stack.pki.bundle_file),
            "REQUESTS_CA_BUNDLE": str(self.stack.pki.bundle_file),
            "PYTHONPATH": str(ROOT),
            "PUSHSVC_LOG_LEVEL": "info",  # the lifecycle events are info lines
        }
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pushsvc.cli",
                "serve",
                "--config",
                str(self.config),
                stdout=out,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )

        async def started() -> dict[str, Any] | None:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"pushsvc serve exited with {self.process.returncode}: {self.output()}")
            return next((e for e in self.events() if e.get("event") == "pushsvc_started"), None)

        self.started = await wait_until(started, timeout=30)
        self.port = self.started["http_port"]
        return self

    def terminate(self) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"pushsvc serve still running {timeout:.1f}s after SIGTERM: {self.output()}") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        return f"stdout:\n{self.stdout()[-3000:]}\nstderr:\n{self.stderr_path.read_text(errors='replace')[-3000:]}"

    def events(self) -> list[dict[str, Any]]:
        """Every complete stdout line as JSON (a line that is not JSON fails the test)."""
        text = self.stdout()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # still being written
        events = []
        for line in filter(str.strip, lines):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"log line is not JSON: {line!r}") from exc
            assert isinstance(event, dict), line
            events.append(event)
        return events

    def check_logs(self, tokens: list[str]) -> list[dict[str, Any]]:
        """Logs are structlog JSON lines with level and timestamp, and name no device token in full."""
        text = self.stdout()
        events = self.events()
        assert events, "no log output"
        for event in events:
            assert {"event", "level", "timestamp"} <= set(event), event
        leaked = [t for t in tokens if t in text or t in self.stderr_path.read_text(errors="replace")]
        assert not leaked, f"full device tokens in the logs: {leaked[:3]}"
        return events

    async def register(self, tokens: list[str], platform: str = "ios") -> None:
        url = f"http://127.0.0.1:{self.port}/v1/devices"
        async with aiohttp.ClientSession() as http:
            for token in tokens:
                body = {"app": "demo", "token": token, "platform": platform}
                async with http.post(url, json=body, headers=auth_headers()) as response:
                    assert response.status in (200, 201), await response.text()


async def committed(stack: Stack) -> dict[int, int]:
    """The group's committed offset per partition of the requests topic (0 where nothing is committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=stack.kafka["group_id"], enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(stack.requests_topic) or set()
        assert partitions
        return {p: await consumer.committed(TopicPartition(stack.requests_topic, p)) or 0 for p in sorted(partitions)}
    finally:
        await consumer.stop()


async def assert_offsets_cover_recorded(stack: Stack, published: int) -> dict[str, bool]:
    """Every request recorded in MongoDB is below its partition's committed offset; {id: committed}."""
    records = await consume(stack.bootstrap, stack.requests_topic, published)
    offsets = await committed(stack)
    status: dict[str, bool] = {}
    for record in records:
        request_id = orjson.loads(record.value)["id"]
        is_committed = record.offset < offsets[record.partition]
        recorded = await stack.notification(request_id) is not None
        assert is_committed or not recorded, f"{request_id} recorded in MongoDB but its offset is not committed"
        status[request_id] = is_committed
    return status


def sends(stack: Stack, tokens: list[str]) -> Counter[str]:
    by_token = Counter(r.token for r in stack.apns.requests)
    return Counter({t: by_token[t] for t in tokens})


async def test_sigterm_finishes_in_flight_sends_commits_and_exits(stack: Stack) -> None:
    drain = 10.0
    serve = await ServeProcess(stack, "graceful", {"drain_timeout_seconds": drain}).start()
    try:
        tokens = ios_tokens("a7", 50)
        late_token = ios_tokens("b8", 1)
        await serve.register(tokens + late_token)
        stack.apns.set_default(delay=2.0)  # every answer held 2s: all 50 sends are in flight together
        await stack.publish(alert("before-sigterm", {"tokens": tokens}))
        await stack.apns.wait_for_requests(50, timeout=15)

        sent_at = serve.terminate()
        await stack.publish(alert("after-sigterm", {"tokens": tokens[:1] + late_token}))
        assert await serve.wait_exit(drain + EXIT_MARGIN_SECONDS) == 0, serve.output()
        took = time.monotonic() - sent_at
        # The held answers (2s) were awaited: the drain did not just cut them off.
        assert 1.0 < took < drain + EXIT_MARGIN_SECONDS, took

        doc = await stack.notification("before-sigterm")
        assert doc is not None
        assert doc["state"] == "done", doc
        assert doc["counts"]["targeted"] == 50
        assert doc["counts"]["delivered"] == 50
        assert doc["lease_owner"] is None
        assert set(sends(stack, tokens).values()) == {1}
        status = await assert_offsets_cover_recorded(stack, published=2)
        assert status["before-sigterm"]

        events = serve.check_logs(tokens + late_token)
        names = [e["event"] for e in events]
        assert names.index("shutdown_requested") < names.index("pushsvc_stopping") < names.index("pushsvc_stopped")
        assert "drain_timeout" not in names
        assert not any(e["level"] in ("error", "critical") for e in events), [
            e for e in events if e["level"] == "error"
        ]

        # The request published after SIGTERM is not lost: the next instance delivers it, once.
        stack.apns.set_default()
        await stack.start()
        late = await stack.wait_finished("after-sigterm", timeout=30)
        assert late["counts"]["delivered"] == 2
        assert sends(stack, late_token)[late_token[0]] == 1
        assert sends(stack, tokens)[tokens[0]] == 2  # once per request
        assert set(sends(stack, tokens[1:]).values()) == {1}  # nothing of the first request re-sent
        await wait_until(lambda: _all_committed(stack, 2), timeout=15)
    finally:
        await serve.kill()


async def _all_committed(stack: Stack, published: int) -> bool:
    return sum((await committed(stack)).values()) >= published


async def handed_back_at_the_deadline(serve: ServeProcess, stack: Stack, drain: float, request_id: str) -> dict:
    """SIGTERM while a send hangs: the process exits once the drain deadline has passed, and the notification is
    handed back (still dispatching, no claim, no lease) rather than left to its lease's expiry. Its document."""
    sent_at = serve.terminate()
    assert await serve.wait_exit(drain + EXIT_MARGIN_SECONDS) == 0, serve.output()
    assert time.monotonic() - sent_at >= drain - 0.1
    doc = await stack.notification(request_id)
    assert doc is not None
    assert doc["state"] == "dispatching", doc
    assert doc["claim"] is None and doc["lease_owner"] is None and doc["lease_until"] == 0.0, doc
    return doc


async def test_drain_deadline_hands_back_what_was_answered_and_a_new_instance_sends_only_the_rest(
    stack: Stack,
) -> None:
    """The drain deadline cuts a chunk short: the devices already answered are saved with the lease's hand-back,
    so the next instance re-sends only the requests that were on the wire without an answer."""
    drain = 2.0
    # Long lease: resuming within seconds proves the lease was handed back, not left to expire.
    dispatch = {"drain_timeout_seconds": drain, "chunk_size": 10, "lease_seconds": 60.0}
    serve = await ServeProcess(stack, "cut", dispatch).start()
    try:
        tokens = ios_tokens("c9", 30)
        first, cut, last = tokens[:10], tokens[10:20], tokens[20:]
        answered, hanging = cut[:5], cut[5:]
        await serve.register(tokens)
        for token in hanging:  # half of the second chunk hangs past the drain deadline, once
            stack.apns.script(token, delay=30.0, times=1)
        await stack.publish(alert("cut-short", {"tokens": tokens}))
        await stack.apns.wait_for_requests(20, timeout=15)
        assert set(sends(stack, first).values()) == {1}
        assert set(sends(stack, cut).values()) == {1}

        doc = await handed_back_at_the_deadline(serve, stack, drain, "cut-short")
        assert int(doc["cursor"]) == 10, "the cursor stays at the start of the chunk that was cut short"
        assert sorted(doc["chunk_done"]) == sorted(answered), "the answered devices of that chunk are saved"
        assert doc["counts"]["delivered"] == 15 and doc["counts"]["targeted"] == 15
        assert sends(stack, last) == Counter(dict.fromkeys(last, 0))

        events = serve.check_logs(tokens)
        names = [e["event"] for e in events]
        assert "drain_deadline" in names and "notification_handed_back" in names, names

        resumed_at = time.monotonic()
        await stack.start(dispatch={"chunk_size": 10, "lease_seconds": 60.0})
        doc = await stack.wait_finished("cut-short", timeout=20)
        assert time.monotonic() - resumed_at < 15, "resumed at once, not after lease_seconds"
        assert doc["state"] == "done"
        assert doc["counts"]["targeted"] == 30
        assert doc["counts"]["delivered"] == 30
        # Only requests on the wire without an answer at the deadline were sent twice.
        assert set(sends(stack, first).values()) == {1}
        assert set(sends(stack, answered).values()) == {1}
        assert set(sends(stack, hanging).values()) == {2}
        assert set(sends(stack, last).values()) == {1}
    finally:
        await serve.kill()


async def test_drain_deadline_hands_back_a_one_device_push_whose_answer_hangs(stack: Stack) -> None:
    """The batch lane sends a one-device push in the notification's own task (dispatch/chunks.py _send_one): the
    drain deadline must still cut it short and hand it back, and the next instance sends it once more."""
    drain = 2.0
    # The send's own timeout far past the hand-back's time: only the abort can end the hanging send in time.
    dispatch = {"drain_timeout_seconds": drain, "lease_seconds": 60.0, "send_timeout_seconds": 30.0}
    serve = await ServeProcess(stack, "one", dispatch).start()
    try:
        (token,) = ios_tokens("d4", 1)
        await serve.register([token])
        stack.apns.script(token, delay=60.0, times=1)
        await stack.publish(alert("one-hangs", {"tokens": [token]}))
        await stack.apns.wait_for_requests(1, timeout=15)

        await handed_back_at_the_deadline(serve, stack, drain, "one-hangs")
        names = [e["event"] for e in serve.check_logs([token])]
        assert "drain_deadline" in names and "notification_handed_back" in names, names
        assert "drain_timeout" not in names, "the run had to be cancelled: the abort did not stop the send"

        resumed_at = time.monotonic()
        await stack.start(dispatch={"lease_seconds": 60.0})
        doc = await stack.wait_finished("one-hangs", timeout=20)
        assert time.monotonic() - resumed_at < 15, "resumed at once, not after lease_seconds"
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 1, doc
        assert sends(stack, [token])[token] == 2  # on the wire without an answer at the deadline: sent again
    finally:
        await serve.kill()


async def test_an_idle_replica_stops_without_waiting_out_its_kafka_poll(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll far longer than the assertion: stopping in time means the wait for records was ended, not run out.
    monkeypatch.setattr(kafka_ingest, "POLL_SECONDS", 30.0)
    service = await stack.start()
    await stack.register(ios_tokens("f1", 1)[0], "ios", user_id="idle-1")
    await stack.publish({"id": "before-stop", "app": "demo", "target": {"users": ["idle-1"]},
                         "message": {"title": "t", "body": "b"}})
    doc = await stack.wait_finished("before-stop", timeout=10)
    assert doc["state"] == "done", doc
    await asyncio.sleep(0.5)  # the consume loop is back waiting for records
    started = time.monotonic()
    await stack.stop(service)
    assert time.monotonic() - started < 5.0
    assert len(stack.apns.requests) == 1, stack.apns.requests
