"""How fast one throttled run may reach the provider (`Pace`): a campaign's `throttle_per_second`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Pace:
    """At most `rate` of one run's provider requests reach the provider in any one-second window, the first
    second included (a campaign's `throttle_per_second`; only the lease holder sends, so per run is enough).

    Each request holds one of `rate` permits from before it is sent until one second after its answer (or
    its failure): two requests on one permit arrive at least a second apart, however long the first took to
    go out (a connection being opened) or the second waited, so no one-second window holds more than `rate`
    arrivals. Pacing chunk starts from the run's start instead let the first two bursts land 0.84-0.95 s apart
    (the first chunk's read and connection setup used up part of its second). Retries take a permit too: they
    reach the provider as well. A fractional rate (a range's share of its campaign's) is rounded down: never
    faster than asked.
    """

    WINDOW_SECONDS = 1.0

    def __init__(self, rate: float) -> None:
        self._permits = asyncio.Semaphore(max(1, int(rate)))

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        await self._permits.acquire()
        try:
            yield
        finally:
            asyncio.get_running_loop().call_later(self.WINDOW_SECONDS, self._permits.release)
