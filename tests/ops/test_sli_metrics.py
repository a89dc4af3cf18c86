"""The SLIs of docs/slo.md measure what the document says, on a running pushsvc.

Campaign start: `pushsvc_fanout_start_delay_seconds` is the scheduling clock at the first chunk's send minus the
campaign's due time, observed once per campaign however many chunks it has (a fake scheduling clock makes the
delay exact). Transactional latency: `pushsvc_end_to_end_latency_seconds{lane="batch"}` counts the pushes of the
batch lane and only them; a campaign's deliveries are `lane="fanout"`.
"""

from __future__ import annotations

import asyncio

import pytest

from pushsvc import metrics
from tests.integration.stack import Stack
from tests.integration.test_campaigns import FakeClock, api, campaign, register_many, start_with_clock, token

pytestmark = pytest.mark.integration

START = "pushsvc_fanout_start_delay_seconds"
E2E = "pushsvc_end_to_end_latency_seconds"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def start_samples(app: str = "demo") -> tuple[float, float, float]:
    """(count, sum, observations <= 60 s) of the campaign-start histogram."""
    return (
        value(f"{START}_count", app=app),
        value(f"{START}_sum", app=app),
        value(f"{START}_bucket", app=app, le="60.0"),
    )


async def test_campaign_start_delay_is_due_time_to_first_chunk_once_per_campaign(stack: Stack) -> None:
    clock = FakeClock("2026-12-01T10:00:00+00:00")
    await start_with_clock(stack, clock, dispatch={"chunk_size": 2, "poll_interval_seconds": 0.2})
    await register_many(stack, [token(i, "s") for i in range(5)], tags=["promo"])
    count, total, within = start_samples()

    body = campaign("at-five", schedule={"at": "2026-12-01T10:05:00Z"})
    status, view = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 201, view
    await asyncio.sleep(1.0)
    assert start_samples() == (count, total, within), "not started yet: nothing observed"
    clock.set("2026-12-01T10:05:30+00:00")  # claimed 30 s after it was due
    done = await stack.wait_finished("campaign:at-five")
    assert done["counts"]["delivered"] == 5
    # Three chunks of at most two devices, one observation: the first chunk's, 30 s after due.
    assert start_samples() == (count + 1, total + 30.0, within + 1)

    status, view = await api(stack, "POST", "/v1/campaigns", campaign("late", schedule={"at": "2026-12-01T10:10:00Z"}))
    assert status == 201, view
    clock.set("2026-12-01T10:11:30+00:00")  # 90 s late: a bad event of the SLI (over 60 s)
    await stack.wait_finished("campaign:late")
    assert start_samples() == (count + 2, total + 120.0, within + 1)


async def test_only_the_batch_lane_feeds_the_transactional_latency_sli(stack: Stack) -> None:
    await stack.start()
    await stack.register(token(1, "t"), "ios", user_id="bob")
    await register_many(stack, [token(i, "p") for i in range(3)], tags=["promo"])
    batch = value(f"{E2E}_count", provider="apns", lane="batch")
    fanout = value(f"{E2E}_count", provider="apns", lane="fanout")
    starts = value(f"{START}_count", app="demo")

    push = {"id": "sli-one", "app": "demo", "target": {"users": ["bob"]}, "message": {"title": "Code", "body": "1234"}}
    await stack.publish(push)
    assert (await stack.wait_finished("sli-one"))["counts"]["delivered"] == 1
    assert value(f"{E2E}_count", provider="apns", lane="batch") == batch + 1
    assert value(f"{START}_count", app="demo") == starts, "a transactional push is no fan-out start"

    status, view = await api(stack, "POST", "/v1/campaigns", campaign("now"))
    assert status == 201, view
    assert (await stack.wait_finished("campaign:now"))["counts"]["delivered"] == 3
    assert value(f"{E2E}_count", provider="apns", lane="fanout") == fanout + 3
    assert value(f"{E2E}_count", provider="apns", lane="batch") == batch + 1
    assert value(f"{START}_count", app="demo") == starts + 1
