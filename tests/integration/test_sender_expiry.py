"""No retry starts past a delivery's expiry, even when the backoff's sleep wakes late (a busy event loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pushsvc.config import DispatchSettings
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.model import Message, Options, Recipient
from pushsvc.providers.apns import ApnsProvider
from pushsvc.providers.base import Delivery
from pushsvc.simulators.apns import ApnsPeer

pytest_plugins = ("tests.peers.fixtures_apns",)
pytestmark = pytest.mark.integration

TOKEN = "e7" * 32


async def test_a_backoff_that_wakes_past_the_expiry_ends_the_delivery_expired(
    apns_demo_provider: ApnsProvider, apns_fresh_peer: ApnsPeer
) -> None:
    apns_fresh_peer.script(TOKEN, status=503, reason="ServiceUnavailable")

    async def wakes_late(seconds: float) -> None:
        await asyncio.sleep(seconds + 1.0)

    settings = DispatchSettings(max_attempts=10, backoff_base_seconds=0.1, backoff_max_seconds=0.1)
    sender = DeliverySender({("demo", "apns"): apns_demo_provider}, settings, sleep=wakes_late)
    device = Recipient(app="demo", token=TOKEN, platform="ios", kind="apns")
    # Expires 0.5 s from now: the first backoff (at most 0.1 s) is planned well within it, and wakes after it.
    delivery = Delivery("demo:short", device, Message(title="t", body="b"), Options(ttl_seconds=1),
                        expires_at=time.time() + 0.5)
    result = await sender.deliver(delivery, time.time())
    assert (result.outcome, result.reason, result.attempts) == ("failed", "expired", 1), result
    assert len(apns_fresh_peer.requests) == 1
