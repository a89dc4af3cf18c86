"""The sender's guard: an adapter that overruns its own time bound (a bug) is cut off, and its attempt counts as
a timeout; a cancellation of the delivery itself still propagates."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from pushsvc.config import DispatchSettings
from pushsvc.dispatch.sender import GUARD_MARGIN_SECONDS, DeliverySender
from pushsvc.model import Message, Options, Outcome, Recipient
from pushsvc.providers.base import Delivery, Provider, Rendered, SendResult

SEND_TIMEOUT = 0.05
GUARD = SEND_TIMEOUT + GUARD_MARGIN_SECONDS


class HangingProvider(Provider):
    """An adapter with the bug the guard is for: its send never ends (it forgot its own timeout)."""

    name = "apns"

    def __init__(self) -> None:
        super().__init__("demo")
        self.started = 0
        self.unwound = 0

    async def send(self, delivery: Delivery) -> SendResult:
        self.started += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.unwound += 1
        return SendResult(Outcome.DELIVERED)

    def render(self, delivery: Delivery) -> Rendered:
        return Rendered({}, {})


def _delivery() -> Delivery:
    device = Recipient(app="demo", token="e7" * 32, platform="ios", kind="apns")
    return Delivery("demo:n1", device, Message(title="t", body="b"), Options())


def test_an_adapter_that_never_answers_is_cut_off_at_the_guard_as_a_timeout() -> None:
    async def main() -> None:
        provider = HangingProvider()
        settings = DispatchSettings(max_attempts=1, send_timeout_seconds=SEND_TIMEOUT)
        sender = DeliverySender({("demo", "apns"): provider}, settings)
        started = time.monotonic()
        result = await sender.deliver(_delivery(), time.time())
        took = time.monotonic() - started
        assert (result.outcome, result.reason, result.attempts) == ("failed", "timeout", 1), result
        assert provider.started == provider.unwound == 1  # the adapter's call was unwound before the answer
        assert GUARD - 0.01 <= took <= GUARD + 1.0

    uvloop.run(main())


def test_cancelling_a_delivery_in_flight_propagates_instead_of_counting_a_timeout() -> None:
    async def main() -> None:
        provider = HangingProvider()
        settings = DispatchSettings(max_attempts=1, send_timeout_seconds=SEND_TIMEOUT)
        sender = DeliverySender({("demo", "apns"): provider}, settings)
        task = asyncio.ensure_future(sender.deliver(_delivery(), time.time()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert provider.unwound == 1

    uvloop.run(main())
