"""A notification whose runs keep ending without progress is failed with the reason, not claimed for ever.

Seen at a million devices: the audience read outlasted the driver's timeout, the run failed, the lease
lapsed, the campaign was claimed again and the same read started over, eleven times, with nothing sent, no
alert, and the notification `dispatching` at zero counts; lease renewals waited behind the long read. Here a
real `pushsvc serve` process reaches a dedicated nx-27017 through the fault proxy, which resets every audience
read of one campaign, or holds one read until the socket timeout while renewals must go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.integration.stack import Stack, wait_until
from tests.reliability.faultproxy import ProxiedServer
from tests.reliability.harness import metric_sum, outcome_ids, padded_tokens, proxied_replica, register_tagged

pytestmark = pytest.mark.integration


def audience_read_of(tag: bytes) -> Callable[[bytes], bool]:
    """The fault proxy's match for a devices query carrying `tag` (an audience read)."""
    return lambda data: b"find" in data and b"devices" in data and tag in data


@pytest.mark.timeout(120)
async def test_runs_that_never_progress_end_in_failed_with_the_reason_an_event_and_a_metric(
    stack: Stack, mongo: ProxiedServer
) -> None:
    # Each run retries its failing read for one lease (3 s), ends, and its lease lapses (3 s more).
    serve = proxied_replica(stack, mongo, lease_seconds=3.0, send_timeout_seconds=2.0, max_runs_without_progress=2)
    await serve.start()
    try:
        await register_tagged(serve, padded_tokens("s1", 3, "d"), "stalling")
        await register_tagged(serve, padded_tokens("s2", 3, "d"), "healthy")
        trap = mongo.proxy.trap(audience_read_of(b"stalling"), when="request", times=10_000)
        segment = {"segment": {"tags_any": ["stalling"]}}
        await stack.publish({"id": "stuck", "app": "demo", "target": segment, "message": {"title": "t"}})
        await stack.publish({"id": "fine", "app": "demo", "target": {"segment": {"tags_any": ["healthy"]}},
                             "message": {"title": "t"}})

        async def final() -> dict | None:
            doc = await stack.notification("stuck")
            return doc if doc and doc["state"] != "dispatching" and doc["state"] != "accepted" else None

        doc = await wait_until(final, timeout=80, interval=0.5)
        assert doc["state"] == "failed", doc
        assert doc["error"].startswith("stalled: 2 runs in a row ended without progress"), doc["error"]
        assert doc["counts"]["targeted"] == 0 and trap.sprung >= 2
        assert len(serve.events("notification_run_failed")) == 2, serve.tail()
        (stalled,) = serve.events("notification_stalled")
        assert stalled["runs"] == 2
        assert metric_sum(await serve.metrics(), "pushsvc_notifications_stalled_total", lane="fanout") == 1
        assert (await outcome_ids(stack))["stuck"] == 1
        # The other campaign of the same replica went on meanwhile.
        other = await stack.wait_finished("fine", timeout=10)
        assert other["state"] == "done" and other["counts"]["delivered"] == 3, other
        assert sorted(r.token[:6] for r in stack.apns.requests) == [f"s2000{n}" for n in range(3)]
    finally:
        mongo.proxy.heal()
        await serve.terminate()


@pytest.mark.timeout(120)
async def test_renewals_do_not_queue_behind_a_slow_audience_read(stack: Stack, mongo: ProxiedServer) -> None:
    # One connection in the main pool, and the campaign's first audience read hangs on it until the socket
    # timeout (8 s, well past the 3 s lease). Renewals go through the lease client's own pool: the lease holds,
    # the read is retried, and each device is sent once by the first run.
    serve = proxied_replica(
        stack, mongo, {"max_pool_size": 1, "socket_timeout_ms": 8000}, lease_seconds=3.0, send_timeout_seconds=2.0
    )
    await serve.start()
    try:
        tokens = padded_tokens("q1", 4, "d")
        await register_tagged(serve, tokens, "slowread")
        trap = mongo.proxy.trap(audience_read_of(b"slowread"), when="hang")
        await stack.publish({"id": "slow", "app": "demo", "target": {"segment": {"tags_any": ["slowread"]}},
                             "message": {"title": "t"}})
        published = time.monotonic()
        doc = await stack.wait_finished("slow", timeout=40)
        # Sent only after the hung read timed out (PyMongo retries a read once on a fresh connection).
        assert time.monotonic() - published >= 7.5
        assert trap.sprung == 1
        assert doc["state"] == "done" and doc["counts"]["delivered"] == 4, doc
        assert sorted(r.token for r in stack.apns.requests) == sorted(tokens)
        assert serve.events("lease_lapsed") == [] and serve.events("lease_lost") == [], serve.tail()
    finally:
        mongo.proxy.heal()
        await serve.terminate()
