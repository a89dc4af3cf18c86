"""ServerClock: the database's time carried on the monotonic clock; precise readings kept, steps followed."""

from __future__ import annotations

import pytest

from pushsvc.scheduling.clock import RESOLUTION_SECONDS, ClockNotSynced, ServerClock


class Fake:
    """A database clock and a local monotonic clock, both set by the test; a read takes `rtt` seconds."""

    def __init__(self) -> None:
        self.server = 1_800_000_000.0
        self.local = 100.0
        self.rtt = 0.002

    def monotonic(self) -> float:
        return self.local

    async def read(self) -> float:
        # The server reads its clock at the middle of the round trip.
        self.local += self.rtt / 2
        self.server += self.rtt / 2
        reading = self.server
        self.local += self.rtt / 2
        self.server += self.rtt / 2
        return reading

    def advance(self, seconds: float) -> None:
        self.local += seconds
        self.server += seconds


async def test_no_time_before_the_first_reading_then_the_servers_time_on_the_local_clock() -> None:
    fake = Fake()
    clock = ServerClock(fake.read, monotonic=fake.monotonic)
    with pytest.raises(ClockNotSynced):
        clock.now()
    await clock.sync()
    assert abs(clock.now() - fake.server) <= clock.error() + 1e-9
    fake.advance(3600.0)  # an hour later, no new reading: still within the drift allowance
    assert abs(clock.now() - fake.server) <= clock.error()
    assert clock.error() < 0.5


async def test_a_less_precise_reading_is_not_taken_but_a_step_of_the_servers_clock_is() -> None:
    fake = Fake()
    clock = ServerClock(fake.read, monotonic=fake.monotonic)
    await clock.sync()
    precise = clock.error()
    fake.rtt = 2.0  # a slow round trip: up to 1 s of doubt about when the server read its clock
    fake.server += 0.3  # within that doubt: not a step
    await clock.sync()
    assert clock.error() < precise + 0.01, "the imprecise reading replaced the precise one"
    fake.server += 30.0  # the database host's clock was stepped (NTP): beyond both error bounds
    await clock.sync()
    assert abs(clock.now() - fake.server) <= clock.error()


async def test_replicas_with_different_local_clocks_agree_on_now() -> None:
    """Two replicas whose local clocks differ by hours read the same database and agree on now."""
    fake = Fake()
    first = ServerClock(fake.read, monotonic=fake.monotonic)
    second = ServerClock(fake.read, monotonic=lambda: fake.local + 9000.0)
    await first.sync()
    fake.advance(5.0)
    await second.sync()
    fake.advance(20.0)
    assert abs(first.now() - second.now()) <= first.error() + second.error() + RESOLUTION_SECONDS
    assert abs(first.now() - fake.server) <= first.error()
