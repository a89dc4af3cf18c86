"""The dispatch queue gauge counts the deliveries that wait for a provider slot, and only those: one that finds
a slot free is sent without being counted (it never yields while queued), and none is left counted after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from pushsvc import metrics
from pushsvc.config import DispatchSettings
from pushsvc.dispatch.sender import DeliverySender
from pushsvc.model import Message, Options, Outcome, Recipient
from pushsvc.providers.base import Delivery, Provider, Rendered, SendResult


class GatedProvider(Provider):
    """Answers each send once `release` is set; counts the sends under way."""

    name = "apns"

    def __init__(self) -> None:
        super().__init__("demo")
        self.release = asyncio.Event()
        self.in_flight = 0

    async def send(self, delivery: Delivery) -> SendResult:
        self.in_flight += 1
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return SendResult(Outcome.DELIVERED, status=200)

    def render(self, delivery: Delivery) -> Rendered:
        return Rendered({}, {})


def _delivery(n: int) -> Delivery:
    device = Recipient(app="demo", token=f"{n:02x}" * 32, platform="ios", kind="apns")
    return Delivery(f"demo:n{n}", device, Message(title="t", body="b"), Options())


def _queued() -> float:
    return metrics.QUEUE_DEPTH.labels("apns")._value.get()


def _timed() -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "pushsvc_provider_request_duration_seconds_count", {"provider": "apns", "outcome": "delivered"}
    )
    return sample or 0.0


class CountingGauge:
    """The slot's gauge child, with every change it is given recorded."""

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self.increments = 0

    def inc(self) -> None:
        self.increments += 1
        self._gauge.inc()

    def dec(self) -> None:
        self._gauge.dec()


def test_only_deliveries_waiting_for_a_slot_are_counted_queued() -> None:
    async def main() -> None:
        provider = GatedProvider()
        settings = DispatchSettings(max_attempts=1, concurrency_per_provider=2)
        sender = DeliverySender({("demo", "apns"): provider}, settings)
        slot = sender._slots[("demo", "apns")]
        slot.queue_depth = counting = CountingGauge(slot.queue_depth)
        before = _queued()
        timed_before = _timed()
        tasks = [asyncio.ensure_future(sender.deliver(_delivery(n), time.time())) for n in range(5)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert provider.in_flight == 2
        assert _queued() - before == 3  # the other three wait
        provider.release.set()
        results = await asyncio.gather(*tasks)
        assert [r.outcome for r in results] == ["delivered"] * 5
        assert _queued() == before
        assert counting.increments == 3  # the two that found a slot free were never counted
        assert _timed() - timed_before == 5  # every answer's round trip observed, under its outcome

        # A delivery cancelled while it waits for a slot leaves the count too.
        provider.release.clear()
        held = [asyncio.ensure_future(sender.deliver(_delivery(n), time.time())) for n in range(3)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert _queued() - before == 1
        held[2].cancel()
        await asyncio.gather(held[2], return_exceptions=True)
        assert _queued() == before
        provider.release.set()
        await asyncio.gather(*held[:2])

    uvloop.run(main())
