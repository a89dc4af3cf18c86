"""The shared quota limiter's arithmetic (dispatch/quota.py): slices, budgets, grants, blocks, holds; its settings.

The limiter itself runs here against an in-memory counter (the QuotaCounter protocol, one `$inc` per call, as
store/quotas.py does in MongoDB); the integration test runs it against nx-27017 and the FCM peer's quota.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pushsvc.config import ConfigError, FcmSettings, load_settings
from pushsvc.config import checks as config_checks
from pushsvc.dispatch import quota as quota_module
from pushsvc.dispatch.quota import (
    BLOCK_MAX,
    HOLD_MAX_SECONDS,
    MIN_LIMIT,
    SLICES,
    QuotaGate,
    QuotaSlices,
    SharedLimiter,
    granted,
    hold_seconds,
    merge_quotas,
)
from pushsvc.providers.base import ProviderQuota
from tests.unit.credential_files import service_account


def test_fcm_per_minute_quota_in_slices() -> None:
    fcm = QuotaSlices(600_000, 60.0)
    assert fcm.slice_seconds == 3.0
    assert fcm.budget == 600_000 // 22 == 27_272
    # Two slices of slack in every window: the most any window can hold is at most the limit.
    assert fcm.budget * (SLICES + 2) <= 600_000
    assert fcm.slice_of(2.999) == 0 and fcm.slice_of(3.0) == 1 and fcm.slice_end(1) == 6.0
    scaled = QuotaSlices(200, 2.0)
    assert scaled.budget == 9 and scaled.slice_seconds == pytest.approx(0.1)
    # The smallest limit still grants a permit per slice.
    assert QuotaSlices(MIN_LIMIT, 60.0).budget == 1
    assert QuotaSlices(MIN_LIMIT - 1, 60.0).budget == 0


@pytest.mark.parametrize(("limit", "window"), [(200, 2.0), (60_000, 60.0), (MIN_LIMIT, 1.0), (1_000, 7.0)])
def test_no_window_at_any_alignment_sees_more_than_the_limit(limit: int, window: float) -> None:
    """Every slice's whole budget, each request arriving anywhere from its slice's start to its end plus a trip of
    up to one slice: a sliding window of `window` seconds, at any offset, never holds more than `limit`."""
    slices = QuotaSlices(limit, window)
    rng = random.Random(limit)
    trip = slices.slice_seconds * 0.999
    arrivals = sorted(
        (index + rng.random()) * slices.slice_seconds + rng.random() * trip
        for index in range(max(3 * SLICES, 100_000 // slices.budget))  # a few windows, at most ~100,000 arrivals
        for _ in range(slices.budget)
    )
    # The densest window starts at an arrival: a two-pointer sweep over them.
    most, end = 0, 0
    for start, t in enumerate(arrivals):
        while end < len(arrivals) and arrivals[end] < t + window:
            end += 1
        most = max(most, end - start)
    assert most <= limit
    # The usable rate: 20 of 22 slices' worth per window, less the rounding down.
    assert slices.budget * SLICES >= limit * SLICES / (SLICES + 2) - SLICES


def test_grants_of_concurrent_blocks_add_up_to_the_budget_at_most() -> None:
    budget = 9
    counter = 0
    grants = []
    for asked in (4, 3, 5, 2, 1):  # the order $inc applied them in
        counter += asked
        grants.append(granted(counter, asked, budget))
    assert grants == [4, 3, 2, 0, 0]
    assert sum(grants) == budget
    assert granted(100, 10, budget) == 0  # far past the budget
    assert granted(9, 9, budget) == 9


def test_block_size_follows_demand_within_a_quarter_of_the_budget() -> None:
    scaled = QuotaSlices(200, 2.0)  # budget 9: blocks of at most 3
    assert [scaled.block_size(n) for n in (0, 1, 2, 3, 50)] == [1, 1, 2, 3, 3]
    fcm = QuotaSlices(600_000, 60.0)  # budget 27,272: a quarter is above BLOCK_MAX
    assert fcm.block_size(200) == 200 and fcm.block_size(5_000) == BLOCK_MAX


def test_a_quota_answer_holds_at_least_the_minimum_and_honours_a_longer_retry_after() -> None:
    assert hold_seconds(None, 60.0) == 60.0
    assert hold_seconds(5.0, 60.0) == 60.0
    assert hold_seconds(90.0, 60.0) == 90.0
    assert hold_seconds(86_400.0, 60.0) == HOLD_MAX_SECONDS


def quota(scope: str = "fcm:p", limit: int | None = None, window: float = 60.0, backoff: float = 60.0) -> ProviderQuota:
    return ProviderQuota(scope, limit, window, backoff, frozenset({"QUOTA_EXCEEDED"}))


def test_apps_of_one_project_share_its_strictest_settings() -> None:
    merged = merge_quotas([quota(limit=None, backoff=90.0), quota(limit=1_000, window=1.0), quota(limit=30_000)])
    assert (merged.limit, merged.window_seconds, merged.backoff_seconds) == (30_000, 60.0, 90.0)
    assert merge_quotas([quota(), quota(backoff=61.0)]).limit is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_hold_stops_every_send_until_it_ends_and_is_never_shortened() -> None:
    clock = FakeClock()
    gate = QuotaGate(quota(backoff=60.0), None, clock, clock.sleep)
    gate.hold(None)
    assert gate.held_until == 1_060.0
    gate.hold(10.0)  # a later answer with a short Retry-After: still 60 s from the first
    assert gate.held_until == 1_060.0
    clock.now = 1_030.0
    gate.hold(None)  # a later answer extends it: 60 s from then
    assert gate.held_until == 1_090.0
    gate.hold(75.0)  # a Retry-After longer than the minimum is honoured
    assert gate.held_until == 1_105.0
    await gate.admit()
    assert clock.now >= 1_105.0


class MemoryCounter:
    """The QuotaCounter protocol in memory: one atomic `$inc` per call, as store/quotas.py in MongoDB."""

    def __init__(self) -> None:
        self.taken: Counter[tuple[str, int]] = Counter()
        self.calls = 0

    async def take(self, scope: str, slice_index: int, slice_start: float, count: int, expire_at: float) -> int:
        self.calls += 1
        await asyncio.sleep(0.001)  # a round trip: others interleave
        self.taken[(scope, slice_index)] += count
        return self.taken[(scope, slice_index)]


async def test_three_replicas_never_use_more_than_a_slices_budget_and_only_inside_it() -> None:
    counter = MemoryCounter()
    slices = QuotaSlices(MIN_LIMIT * 10, 1.0)  # budget 10 per 0.05 s slice
    limiters = [SharedLimiter("fcm:p", slices, counter, time.time) for _ in range(3)]
    used: Counter[int] = Counter()

    async def send(limiter: SharedLimiter) -> None:
        await limiter.acquire()
        now = time.time()
        used[slices.slice_of(now)] += 1  # used at once, in the slice it was granted for

    await asyncio.gather(*(send(limiters[i % 3]) for i in range(150)))
    assert sum(used.values()) == 150
    assert max(used.values()) <= slices.budget
    # Blocks, not one round trip per permit.
    assert counter.calls < 150


async def test_an_unreachable_counter_grants_nothing_and_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota_module, "STORE_RETRY_SECONDS", 0.01)
    failures = iter([True, True, False])

    class Flaky(MemoryCounter):
        async def take(self, scope: str, slice_index: int, slice_start: float, count: int, expire_at: float) -> int:
            if next(failures):
                raise ConnectionError("no server")
            return await super().take(scope, slice_index, slice_start, count, expire_at)

    counter = Flaky()
    limiter = SharedLimiter("fcm:p", QuotaSlices(1_000, 60.0), counter, time.time)
    await limiter.acquire()
    assert counter.calls == 1  # the two failed calls raised before counting


def test_config_constants_match_the_limiter() -> None:
    assert config_checks.MIN_QUOTA == MIN_LIMIT
    assert config_checks.HOLD_MAX_SECONDS == HOLD_MAX_SECONDS


def test_defaults_no_shared_limiter_and_a_60_second_hold() -> None:
    fcm = FcmSettings(service_account_file="sa.json")
    assert fcm.quota_per_window is None and fcm.quota_window_seconds == 60.0 and fcm.quota_backoff_seconds == 60.0


@pytest.mark.parametrize(
    ("fcm", "message"),
    [
        ({"quota_per_window": 21}, "apps.demo.fcm.quota_per_window: must be at least 22"),
        ({"quota_per_window": 600_000, "quota_window_seconds": 0.5}, "apps.demo.fcm.quota_window_seconds: must be"),
        ({"quota_backoff_seconds": 0}, "apps.demo.fcm.quota_backoff_seconds: must be greater than 0"),
        ({"quota_backoff_seconds": 3600}, "apps.demo.fcm.quota_backoff_seconds: must be greater than 0 and at most"),
    ],
)
def test_quota_settings_errors_name_the_key(tmp_path: Path, fcm: dict, message: str) -> None:
    config = {
        "kafka": {"bootstrap_servers": "k:9092"},
        "mongodb": {"uri": "mongodb://m"},
        "apps": {"demo": {"fcm": {"service_account_file": str(service_account(tmp_path / "sa.json")), **fcm}}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_settings(path, {})


def test_quota_settings_load(tmp_path: Path) -> None:
    config = {
        "kafka": {"bootstrap_servers": "k:9092"},
        "mongodb": {"uri": "mongodb://m"},
        "apps": {"demo": {"fcm": {"service_account_file": str(service_account(tmp_path / "sa.json")),
                                  "quota_per_window": 500_000, "quota_backoff_seconds": 120}}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    fcm = load_settings(path, {}).apps["demo"].fcm
    assert fcm is not None and (fcm.quota_per_window, fcm.quota_backoff_seconds) == (500_000, 120.0)
