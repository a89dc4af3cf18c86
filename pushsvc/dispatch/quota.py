"""A provider's rate quota shared by every replica (FCM: messages per minute per Firebase project), and the hold
that follows the provider saying it is exceeded.

Two mechanisms, both per quota *scope* (`ProviderQuota.scope`: apps sharing a Firebase project share one):

* **The hold** (always on): a QUOTA_EXCEEDED answer holds back every send of the scope on this replica for
  `backoff_seconds` at least (FCM asks for 60 s), or the answer's Retry-After if longer. The deliveries that got
  the answer are retried after it, without a backoff of their own.
* **The shared limiter** (`limit` set): permits counted in MongoDB (store/quotas.py), so that all replicas together
  stay under `limit` requests in *any* `window_seconds` at the provider, whatever its window's alignment.

How the limiter keeps that promise (the arithmetic is `QuotaSlices`, tested alone):

* The database's clock (every replica's `now`, scheduling/clock.py) is cut into slices of `window / SLICES`.
  Each slice has a budget of `limit // (SLICES + 2)` permits for all replicas together, counted by one document
  per (scope, slice): a replica takes a *block* of permits with one `$inc` and is granted the part of
  `[counter before, counter after)` below the budget (`granted`): `$inc` is atomic, so the replicas' intervals
  never overlap and the grants of a slice add up to its budget at most, however many replicas ask at once.
* A permit is only good in its slice: one not used by the slice's end lapses (a replica dying with a block
  loses nothing but those permits). So every request reaches the provider between its slice's start and its end
  plus the transit time (send latency and clock disagreement, assumed under one slice: 3 s for FCM's minute).
  Any span of `window_seconds` then sees requests of at most SLICES + 2 slices: never more than `limit`.
  The price is the two slices of slack: 20/22 of the quota is usable (91%).
* A block is as large as the number of deliveries waiting for a permit on this replica (at most a quarter of
  the slice's budget, and BLOCK_MAX): a busy replica pays one round trip for up to its whole concurrency, an idle
  one takes no more than it sends. Once a grant falls short, the slice is spent for everyone: the replica waits
  for the next slice without asking again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from pushsvc import metrics
from pushsvc.logs import get_logger
from pushsvc.providers.base import ProviderQuota

log = get_logger(__name__)

# Slices per quota window. More slices waste less of the quota (SLICES / (SLICES + 2) is usable) but leave less
# time for a request to travel (one slice: 3 s of FCM's minute) and cost more round trips at low rates.
SLICES = 20
# The smallest limit that grants every slice at least one permit.
MIN_LIMIT = SLICES + 2
# The most permits one round trip takes: beyond a few hundred the round trip's cost per delivery is negligible
# (about 1 ms / 1000), and a larger block would only be wasted when the slice ends.
BLOCK_MAX = 1000
# A Retry-After longer than this is taken as this: a broken header must not stop a project for hours.
HOLD_MAX_SECONDS = 600.0
# After a failed round trip to MongoDB: wait this long before the next (no permit, no send, meanwhile).
STORE_RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class QuotaSlices:
    """The limiter's arithmetic for `limit` requests per `window_seconds`."""

    limit: int
    window_seconds: float

    @property
    def slice_seconds(self) -> float:
        return self.window_seconds / SLICES

    @property
    def budget(self) -> int:
        """Permits per slice for every replica together: two slices of slack in every window (module docstring)."""
        return self.limit // (SLICES + 2)

    def slice_of(self, now: float) -> int:
        return math.floor(now / self.slice_seconds)

    def slice_end(self, index: int) -> float:
        return (index + 1) * self.slice_seconds

    def block_size(self, waiting: int) -> int:
        """Permits to ask for with `waiting` deliveries waiting: all of them, within a quarter of the budget (so a
        replica that asks first leaves room for the others) and BLOCK_MAX."""
        cap = max(1, min(BLOCK_MAX, -(-self.budget // 4)))
        return max(1, min(cap, waiting))


def granted(counter_after: int, asked: int, budget: int) -> int:
    """The permits a block grants: its part of [counter before, counter after) below the slice's budget."""
    return max(0, min(asked, budget - (counter_after - asked)))


def hold_seconds(retry_after: float | None, minimum: float) -> float:
    """How long a quota answer holds the scope back: the provider's Retry-After if longer than the minimum."""
    return max(minimum, min(retry_after or 0.0, HOLD_MAX_SECONDS))


def merge_quotas(quotas: Iterable[ProviderQuota]) -> ProviderQuota:
    """One quota for apps sharing a scope, each configured on its own: the strictest of each setting (the lowest
    rate, the longest hold), every quota reason."""
    items = list(quotas)
    limited = [q for q in items if q.limit is not None]
    base = min(limited, key=lambda q: (q.limit or 0) / q.window_seconds) if limited else items[0]
    return replace(
        base,
        backoff_seconds=max(q.backoff_seconds for q in items),
        reasons=frozenset().union(*(q.reasons for q in items)),
    )


class QuotaCounter(Protocol):
    """Where the slices' permits are counted for every replica (store/quotas.py)."""

    async def take(self, scope: str, slice_index: int, slice_start: float, count: int, expire_at: float) -> int:
        """Add `count` to the slice's counter; returns the counter after."""
        ...


class SharedLimiter:
    """This replica's side of one scope's limiter: the permits it holds for the current slice."""

    def __init__(
        self,
        scope: str,
        slices: QuotaSlices,
        counter: QuotaCounter,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.scope = scope
        self.slices = slices
        self._counter = counter
        self._clock = clock
        self._sleep = sleep
        self._slice = -1  # the slice the permits left are good in
        self._left = 0
        self._spent = -1  # the last slice whose budget this replica saw used up
        self._waiting = 0
        self._taking = asyncio.Lock()  # one round trip at a time; those waiting share its block
        self._waits = metrics.PROVIDER_QUOTA_WAITS.labels(scope, "limit")
        self._held = metrics.PROVIDER_QUOTA_HELD_SECONDS.labels(scope, "limit")
        self._blocks = metrics.PROVIDER_QUOTA_BLOCKS.labels(scope)
        self._permits = metrics.PROVIDER_QUOTA_PERMITS.labels(scope)

    async def acquire(self) -> None:
        """One permit, good until the end of the current slice: use it at once."""
        self._waiting += 1
        waited = False
        try:
            while True:
                index = self.slices.slice_of(self._clock())
                if index == self._slice and self._left > 0:
                    self._left -= 1
                    return
                if index == self._spent:
                    if not waited:
                        waited = True
                        self._waits.inc()
                    await self._sleep(max(0.001, self.slices.slice_end(index) - self._clock()))
                    continue
                async with self._taking:
                    # Another waiter's block may have come in meanwhile, or the slice may have passed.
                    index = self.slices.slice_of(self._clock())
                    if (index == self._slice and self._left > 0) or index == self._spent:
                        continue
                    await self._take(index)
        finally:
            self._waiting -= 1

    async def _take(self, index: int) -> None:
        asked = self.slices.block_size(self._waiting)
        start = index * self.slices.slice_seconds
        # Kept a window past the slice (for whoever looks), then removed by MongoDB's TTL monitor.
        expire_at = self.slices.slice_end(index) + self.slices.window_seconds
        try:
            after = await self._counter.take(self.scope, index, start, asked, expire_at)
        except Exception as exc:  # MongoDB unreachable: no permit, so no send; try again shortly
            log.warning("provider_quota_unavailable", scope=self.scope, error=f"{type(exc).__name__}: {exc}"[:300])
            await self._sleep(STORE_RETRY_SECONDS)
            return
        got = granted(after, asked, self.slices.budget)
        self._blocks.inc()
        self._permits.inc(got)
        if index != self._slice:
            self._slice, self._left = index, 0  # what was left of an earlier slice has lapsed
        self._left += got
        if got < asked:
            # The slice's budget is used up (by us or others): nobody gets more before the next slice.
            self._spent = index
            now = self._clock()
            self._held.inc(max(0.0, self.slices.slice_end(index) - now))


class QuotaGate:
    """What holds back this replica's sends counted against one quota scope: a hold after a quota answer, and the
    shared limiter's permits."""

    def __init__(
        self,
        quota: ProviderQuota,
        counter: QuotaCounter | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.quota = quota
        self._clock = clock
        self._sleep = sleep
        self.held_until = 0.0
        self.limiter: SharedLimiter | None = None
        if quota.limit is not None and counter is not None:
            self.limiter = SharedLimiter(
                quota.scope, QuotaSlices(quota.limit, quota.window_seconds), counter, clock, sleep
            )
        self._waits = metrics.PROVIDER_QUOTA_WAITS.labels(quota.scope, "quota_exceeded")
        self._held = metrics.PROVIDER_QUOTA_HELD_SECONDS.labels(quota.scope, "quota_exceeded")

    def is_quota_answer(self, reason: str) -> bool:
        return reason in self.quota.reasons

    def hold(self, retry_after: float | None) -> None:
        """The provider said the scope is over its quota: nothing of the scope goes out from this replica until
        the hold ends (a later answer may extend it, never shorten it)."""
        now = self._clock()
        until = now + hold_seconds(retry_after, self.quota.backoff_seconds)
        if until <= self.held_until:
            return
        if self.held_until <= now:
            log.warning(
                "provider_quota_exceeded",
                scope=self.quota.scope,
                seconds=round(until - now, 3),
                retry_after=retry_after,
            )
        self._held.inc(until - max(now, self.held_until))
        self.held_until = until

    def remaining(self) -> float:
        return max(0.0, self.held_until - self._clock())

    async def admit(self) -> None:
        """Wait until one request of the scope may go out now: no hold, and a permit of the current slice."""
        waited = False
        while True:
            while (remaining := self.held_until - self._clock()) > 0:
                if not waited:
                    waited = True
                    self._waits.inc()
                await self._sleep(min(remaining, 1.0))
            if self.limiter is not None:
                await self.limiter.acquire()
            if self.held_until <= self._clock():
                return
            # A hold began while this waited for a permit: the permit lapses, the request waits for the hold.
