"""When the claim loop (scheduling/scheduler.py) makes its next pass, and what that pass looks at.

A pass looks at `accepted` notifications only (new requests: what a plain wake announces), or at every state:
a full claim, which also finds scheduled work coming due and expired leases. Between passes the loop sleeps
until woken, until the earliest due time it was told of, or until the safety poll (`poll_interval_seconds`),
which finds what nobody announced: another replica's expired lease, a due time recorded elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable

# Due times remembered to wake for (see `WakeUps.wake`); past this many, the safety poll finds the rest.
KNOWN_DUE_TIMES = 10_000


class WakeUps:
    def __init__(self, poll_interval_seconds: float, clock: Callable[[], float]) -> None:
        self._poll_interval = poll_interval_seconds
        self._clock = clock  # the scheduling clock, which due times are on
        self._woken = asyncio.Event()
        self._last_full_claim = -float("inf")  # time.monotonic()
        # Due times (scheduling clock) of work recorded through this replica, earliest first: `wake`.
        self._due_times: list[float] = []
        # Work this replica let go of outside a claim (an abandoned reservation) waits in a state only a full
        # claim looks at.
        self._full_claim_wanted = False

    def wake(self, due_at: float | None = None) -> None:
        """Claim now, not at the next safety poll: new requests (`due_at` None: a pass looking at `accepted`
        only), or work due at `due_at` on the scheduling clock (a pass looking at every state then: scheduled
        requests, a resumed campaign). Past KNOWN_DUE_TIMES remembered times the safety poll finds the rest."""
        if due_at is None:
            self._woken.set()
        elif len(self._due_times) < KNOWN_DUE_TIMES:
            heapq.heappush(self._due_times, due_at)
            if self._due_times[0] == due_at:
                self._woken.set()  # earlier than what the loop sleeps for: let it compute its wait again

    def want_full_claim(self) -> None:
        """A pass looking at every state, now."""
        self._full_claim_wanted = True
        self._woken.set()

    def pass_begins(self) -> None:
        """Cleared before claiming: a wake that arrives while the claim is in flight ends the wait at once."""
        self._woken.clear()

    async def wait(self, longest: float) -> None:
        """Until woken, or until the next full claim is due (the safety poll, or sooner the earliest due time
        known), `longest` at most."""
        until_poll = self._last_full_claim + self._poll_interval - time.monotonic()
        wait = min(longest, max(0.0, until_poll))
        if self._due_times:
            wait = min(wait, max(0.0, self._due_times[0] - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), wait)

    def full_claim(self, now: float) -> bool:
        """Whether this pass also looks for scheduled work coming due and expired leases (every state): the
        safety poll is due, a known due time came by `now` (scheduling clock), or one was wanted. If so, the
        safety poll counts from now."""
        due = time.monotonic() - self._last_full_claim >= self._poll_interval
        while self._due_times and self._due_times[0] <= now:
            heapq.heappop(self._due_times)
            due = True
        if self._full_claim_wanted:
            self._full_claim_wanted, due = False, True
        if due:
            self._last_full_claim = time.monotonic()
        return due
