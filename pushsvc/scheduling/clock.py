"""The one clock every replica judges leases and due times by: the database's.

Replicas' own clocks disagree (a VM resumed from suspend, NTP not running, a container on a skewed host);
a replica whose clock runs 45 s ahead would think a 30 s lease held by another replica had expired and
take work still in flight. MongoDB's `hello` answer carries the server's `localTime`; every replica reads it
and carries it forward on its own monotonic clock, which no wall-clock step can move. Replicas then agree
on "now" to within a few milliseconds (half a round trip plus the millisecond resolution of BSON dates),
whatever their wall clocks say.

Between readings the estimate drifts only at the rate the local oscillator drifts (tens of ppm); it is read
again every `resync_seconds` and kept only when it is at least as precise as the current one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pushsvc.logs import get_logger

log = get_logger(__name__)

# A monotonic clock may drift from the server's by this much per second (generous: quartz is ~20-50 ppm).
DRIFT_PER_SECOND = 1e-4
# BSON dates have millisecond resolution: the server's reading is up to 1 ms behind its true time.
RESOLUTION_SECONDS = 0.001


class ClockNotSynced(RuntimeError):
    """The database's clock was not read yet: nothing that stamps or compares times can run (API: 503)."""


@dataclass(frozen=True)
class _Anchor:
    server: float  # the server's epoch seconds ...
    local: float  # ... at this reading of the local monotonic clock
    error: float  # half the round trip that produced it, plus the date resolution


class ServerClock:
    """Epoch seconds on the database server's clock, estimated locally."""

    def __init__(
        self,
        read_server_time: Callable[[], Awaitable[float]],
        resync_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read_server_time
        self._resync = resync_seconds
        self._monotonic = monotonic
        self._anchor: _Anchor | None = None

    @property
    def synced(self) -> bool:
        return self._anchor is not None

    def now(self) -> float:
        """The server's time now; before the first reading there is none (the service is still starting)."""
        anchor = self._anchor
        if anchor is None:
            raise ClockNotSynced("the database's clock has not been read yet")
        return anchor.server + (self._monotonic() - anchor.local)

    def error(self) -> float:
        """How far now() may be from the server's true time, in seconds."""
        anchor = self._anchor
        if anchor is None:
            return float("inf")
        return anchor.error + DRIFT_PER_SECOND * (self._monotonic() - anchor.local)

    async def sync(self) -> None:
        """Read the server's time once; raises when the database does not answer."""
        sent = self._monotonic()
        server = await self._read()
        received = self._monotonic()
        # The server read its clock somewhere inside the round trip (assume the middle), truncated to the ms.
        middle = (sent + received) / 2
        reading = _Anchor(server + RESOLUTION_SECONDS / 2, middle, (received - sent) / 2 + RESOLUTION_SECONDS)
        if self._anchor is None:
            self._anchor = reading
            return
        current_error = self.error()
        jump = reading.server - self.now_at(reading.local)
        # Keep the more precise reading; but a new one that disagrees by more than both error bounds means
        # the server's clock was stepped: follow it, whatever its precision.
        if reading.error <= current_error or abs(jump) > reading.error + current_error:
            if abs(jump) > 0.5:
                log.warning("server_clock_jump", seconds=round(jump, 3))
            self._anchor = reading

    def now_at(self, local: float) -> float:
        anchor = self._anchor
        assert anchor is not None
        return anchor.server + (local - anchor.local)

    async def keep_synced(self) -> None:
        """Re-read the server's time every resync_seconds (runs until cancelled); failures keep the last reading."""
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a stop a driver swallowed (see app.swallowed_cancel)
                raise asyncio.CancelledError
            await asyncio.sleep(self._resync)
            try:
                await self.sync()
            except Exception as exc:  # the database is unreachable: the monotonic estimate stays good
                log.warning("server_clock_sync_failed", error=f"{type(exc).__name__}: {exc}"[:200])
