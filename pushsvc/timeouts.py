"""Timeouts that all last the same time, sharing one event-loop timer (FixedTimeouts).

Every push is bounded twice: by its adapter (the provider's send timeout) and by the sender's guard against
an adapter that overruns it (dispatch/sender.py). asyncio.timeout() schedules a loop timer for each use and
cancels it on the way out, ~3.5 µs a use with uvloop (more as the timer heap grows): ~2% of a push's CPU for
timers that almost never fire. Here all bounds of one FixedTimeouts last the same `seconds`, so they expire
in the order they began: they are kept in that order, and a single timer, set for the oldest one still
running, expires what is due and sets itself for the next one (a few times per `seconds`, not per push).

The semantics are asyncio.timeout()'s: the expired task is cancelled and the block raises TimeoutError, while
a cancellation from elsewhere (also one racing the expiry) propagates as CancelledError.

`Cut` is the same scope with no length of its own: something else ends it (`at`), as asyncio.timeout(None) and
its reschedule, without the two coroutines an `async with` costs on every push that never needs it.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class _Scope:
    """A block in a task that a timer may end: the task is cancelled and the block raises TimeoutError, unless
    another cancellation was requested too (asyncio.timeout's rule)."""

    __slots__ = ("_cancelling", "_expired", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def _begin(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"a {type(self).__name__} is entered once")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError(f"a {type(self).__name__} is entered inside a task")
        self._task = task
        # The cancellations requested before: those are not this scope's to turn into a TimeoutError.
        self._cancelling = task.cancelling()

    def _fire(self) -> None:
        assert self._task is not None
        self._expired = True
        self._task.cancel()

    def _end(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if not self._expired:
            return
        assert self._task is not None
        # The cancellation is ours to answer only if no other was requested since.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expired(self) -> bool:
        """Whether the block was ended by this scope (not by a TimeoutError something inside raised)."""
        return self._expired


class Bound(_Scope):
    """One use of a FixedTimeouts: `with timeouts.bound() as bound:` in a task."""

    __slots__ = ("_deadline", "_owner")

    def __init__(self, owner: FixedTimeouts) -> None:
        super().__init__()
        self._owner = owner
        self._deadline = 0.0

    def __enter__(self) -> Bound:
        self._begin()
        self._owner._start(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._expired:
            self._owner._running.pop(self, None)
        self._end(exc_type, exc)


class Cut(_Scope):
    """`with cut:` in a task; `cut.at(when)` (loop time, now or later) ends the block then. Once it has fired,
    or the block is over, it takes no new time (asyncio.timeout refuses one too)."""

    __slots__ = ("_handle", "_over")

    def __init__(self) -> None:
        super().__init__()
        self._handle: asyncio.Handle | None = None
        self._over = False

    def __enter__(self) -> Cut:
        self._begin()
        return self

    def at(self, when: float) -> None:
        if self._task is None or self._over or self._expired:
            raise RuntimeError("a Cut takes a time only inside its block, before it has fired")
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(when, self._fire) if when > loop.time() else loop.call_soon(self._fire)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._over = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._end(exc_type, exc)


class FixedTimeouts:
    """Bounds of `seconds` each (see the module's docstring); used from one event loop at a time."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        self.seconds = seconds
        # The bounds running, oldest first (a dict as an ordered set: removal from anywhere is O(1)).
        self._running: dict[Bound, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bound(self) -> Bound:
        return Bound(self)

    def _start(self, bound: Bound) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # First use, or a new loop: a closed one's bounds never end, and its timer must not fire here.
            if self._timer is not None:
                self._timer.cancel()
            self._loop, self._running, self._timer = loop, {}, None
        bound._deadline = loop.time() + self.seconds
        self._running[bound] = None
        if self._timer is None:
            self._timer = loop.call_at(bound._deadline, self._expire, bound._deadline)

    def _expire(self, due: float) -> None:
        self._timer = None
        assert self._loop is not None
        # The loop runs a timer once it judges `due` reached, though its clock may read a hair less (its
        # milliseconds against our float deadline): a bound due then is due now, not one loop pass later,
        # where a cancellation or an answer arriving meanwhile would win over the expiry.
        now = max(self._loop.time(), due)
        running = self._running
        while running:
            oldest = next(iter(running))
            if oldest._deadline > now:
                self._timer = self._loop.call_at(oldest._deadline, self._expire, oldest._deadline)
                return
            del running[oldest]
            oldest._fire()
