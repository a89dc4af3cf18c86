"""The lease protocol: how one replica holds notifications, keeps them, and lets them go.

Both lanes use it (a fan-out run holds one notification, a batch holds up to hundreds under one claim):

* **Claim** (store/claims.py `claim_due`): a conditional update takes due notifications whose lease
  has expired and writes a fresh claim token and `lease_until`. Expiry is judged on the database's clock
  (scheduling/clock.py), so a replica with a skewed wall clock never takes work still in flight.
* **Fencing**: every later write about a held notification (progress, finish, hand-back, renewal) matches
  on the claim token. A replica whose lease lapsed can therefore never overwrite the new holder's state.
  Writes are idempotent under retry: progress carries a sequence number, and a write that gives the
  notification up records `released_claim`, so "applied before the connection dropped" is told from "not".
* **Heartbeat** (`Lease.keep`): renews every lease_seconds/3. A transient database error is retried; the
  work goes on while the lease is still valid. Work stops only when
  - the renewal matched nothing for a notification: another replica holds it (**lost**; no further writes), or
  - the lease ran out without a successful renewal (**lapsed**): sending stops, and what was already answered
    is handed back with a fenced write, which succeeds only if nobody took the notification meanwhile.
  A drain deadline (SIGTERM) **aborts** the same way as a lapse.
* **Sending** is the one side effect fencing cannot undo, so a send starts only while the lease is valid
  (`may_send`), with a safety margin for the clock estimate and event-loop delays.

A crash (kill -9) leaves the lease to expire: the next holder resumes at the last saved progress and
repeats at most what was in flight.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING, TypeVar

from pushsvc.logs import get_logger
from pushsvc.scheduling.clock import ServerClock
from pushsvc.store.database import is_transient

if TYPE_CHECKING:
    from pushsvc.store.claims import ClaimStore

log = get_logger(__name__)

T = TypeVar("T")

# Transient-error retries of one write or renewal: first pause, growth, longest pause.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 1.0
# A fenced write is retried this many lease periods past the lease's end (see Lease.write).
WRITE_PATIENCE_LEASES = 5
# Notification ids per line of a lease event (`log_lease_event`).
LOG_IDS_PER_LINE = 50


class LeaseLost(Exception):
    """This replica no longer holds the notification (another replica took it, or it could not be reached)."""


class Interruption(enum.StrEnum):
    LOST = "lost"  # the renewal matched nothing: another replica holds it; write nothing more
    LAPSED = "lapsed"  # no successful renewal in time: stop sending, hand back what was answered
    ABORTED = "aborted"  # the drain deadline: stop sending, hand back what was answered


def safety_margin(lease_seconds: float) -> float:
    """How long before its end a lease stops being good for sending.

    Covers the clock estimate's error (milliseconds), a renewal's round trip and event-loop delays between
    the check and the bytes leaving: a tenth of the lease, at least half a second.
    """
    return max(0.5, lease_seconds / 10)


def attempt_seconds(lease_seconds: float) -> float:
    """The longest one attempt of a renewal or fenced write is awaited before it is abandoned and retried.

    A quarter of the lease: a connection that hangs (blackholed, a half-open TCP connection) costs one
    attempt, and the retry on another connection still comes while the lease is good. An abandoned attempt
    that applies later is harmless: renewals and fenced writes are idempotent.
    """
    return lease_seconds / 4


class Signal:
    """A flag set once, that work can wait for beside other futures as a plain future.

    asyncio.Event's wait is a coroutine, so waiting for one beside other work (asyncio.wait) costs a task per
    wait; a chunk of many devices waits beside its sends (dispatch/chunks.py `_first`), and a one-device chunk
    arms its cut from the stop's future (`_send_one`): that task was ~3% of a one-device push's CPU."""

    __slots__ = ("_fired", "_set")

    def __init__(self) -> None:
        self._set = False
        self._fired: asyncio.Future[None] | None = None  # made on first use, inside the running loop

    def set(self) -> None:
        self._set = True
        if self._fired is not None and not self._fired.done():
            self._fired.set_result(None)

    def is_set(self) -> bool:
        return self._set

    def fired(self) -> asyncio.Future[None]:
        """Done once set. For asyncio.wait, which never cancels what it waits for; never await it directly (a
        cancelled waiter would cancel it for everyone): that is `wait`."""
        if self._fired is None:
            self._fired = asyncio.get_running_loop().create_future()
            if self._set:
                self._fired.set_result(None)
        return self._fired

    async def wait(self) -> None:
        if not self._set:
            await asyncio.shield(self.fired())


class Hold:
    """One notification of a lease, as the work sending it sees it: may it send, must it stop, and how long
    its requests already on the wire may still be awaited."""

    def __init__(self, lease: Lease, notification_id: str) -> None:
        self._lease = lease
        self.notification_id = notification_id
        self.stop = lease.stop_signal(notification_id)
        # Set at the drain deadline: ends even a lapse's wait for answers on the wire.
        self.abort = lease.aborted

    def may_send(self) -> bool:
        return self._lease.may_send(self.notification_id)

    def in_flight_grace(self, answer_seconds: float) -> float:
        """After a stop: a lapse waits for the answers already on their way (recording them spares the next
        holder a resend); a drain deadline or a confirmed loss does not wait."""
        return answer_seconds if self._lease.interruption(self.notification_id) is Interruption.LAPSED else 0.0


class Lease:
    """One claim's hold on a set of notifications, kept by one heartbeat, fencing every write."""

    def __init__(
        self,
        store: ClaimStore,
        clock: ServerClock,
        token: str,
        ids: Iterable[str],
        until: float,
        lease_seconds: float,
    ) -> None:
        self.token = token
        self._store = store
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._margin = safety_margin(lease_seconds)
        self._attempt_seconds = attempt_seconds(lease_seconds)
        self._until = until
        self._held = set(ids)
        self._stops = {notification_id: Signal() for notification_id in self._held}
        self._reasons: dict[str, Interruption] = {}
        # Notifications whose give-up write failed ambiguously: a renewal not matching them is no news.
        self._settling: set[str] = set()
        # Renewals and writes never overlap: a renewal then always knows exactly what is still held.
        self._lock = asyncio.Lock()
        self.aborted = Signal()

    # ------------------------------------------------------------------------------------------ state

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def valid(self) -> bool:
        """The lease is still ours for long enough that a send started now cannot outlive it, even if our
        estimate of the database's clock is behind by as much as it may be."""
        return self._clock.now() + self._clock.error() < self._until - self._margin

    def may_send(self, notification_id: str) -> bool:
        return notification_id not in self._reasons and self.valid()

    def hold(self, notification_id: str) -> Hold:
        return Hold(self, notification_id)

    def stop_signal(self, notification_id: str) -> Signal:
        """Set when work on the notification must stop (see `interruption`)."""
        return self._stops[notification_id]

    def interruption(self, notification_id: str) -> Interruption | None:
        return self._reasons.get(notification_id)

    def abort(self) -> None:
        """Drain deadline: stop sending everything held; runs hand back what was answered at once."""
        self.aborted.set()
        self._interrupt(self._held, Interruption.ABORTED)

    def drop(self, ids: Collection[str]) -> None:
        """These notifications are no longer held (given up by a successful write)."""
        self._held.difference_update(ids)
        self._settling.difference_update(ids)

    def _interrupt(self, ids: Iterable[str], reason: Interruption) -> None:
        for notification_id in list(ids):
            previous = self._reasons.get(notification_id)
            # A confirmed loss overrides a lapse or abort: after it, nothing may be written any more.
            if previous is None or (reason is Interruption.LOST and previous is not Interruption.LOST):
                self._reasons[notification_id] = reason
            self._stops[notification_id].set()

    # ------------------------------------------------------------------------------------- heartbeat

    async def keep(self) -> None:
        """Renew every lease_seconds/3 until cancelled; interrupt what is lost, or everything on a lapse."""
        retry = RETRY_FIRST_SECONDS
        while True:
            wait = self._until - self._lease_seconds * 2 / 3 - self._clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
            if not self._held - set(self._reasons):
                await asyncio.sleep(self._lease_seconds / 3)  # nothing left to renew; the run is ending
                continue
            started = self._clock.now()
            # A renewal that hangs (a blackholed connection) must not outlive the lease unnoticed, nor use up
            # what is left of it: an attempt is abandoned after a quarter of the lease and retried (on another
            # connection) while the lease is still good.
            budget = min(self._until - self._margin - started, self._attempt_seconds)
            try:
                async with asyncio.timeout(budget if budget > 0 else self._attempt_seconds):
                    async with self._lock:
                        ids = self._held - set(self._reasons)
                        still = await self._store.renew(self.token, ids, started + self._lease_seconds)
            except Exception as exc:  # renewing is idempotent: any failure is retried until the lease is gone
                log.warning("lease_renewal_retry", error=type(exc).__name__, claim=self.token)
                if not self.valid():
                    self._lapse()
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                continue
            retry = RETRY_FIRST_SECONDS
            self._until = started + self._lease_seconds
            lost = (ids & self._held) - still - self._settling
            if lost:
                log_lease_event("lease_lost", lost, claim=self.token)
                self._interrupt(lost, Interruption.LOST)
                self._held.difference_update(lost)

    def _lapse(self) -> None:
        fresh = [i for i in self._held if i not in self._reasons]
        if fresh:
            log_lease_event("lease_lapsed", fresh, claim=self.token)
            self._interrupt(fresh, Interruption.LAPSED)

    # ---------------------------------------------------------------------------------------- writes

    async def write(self, ids: Collection[str], op: Callable[[], Awaitable[T]]) -> T:
        """Run a fenced write about `ids`, retrying transient errors.

        Retrying is safe because every write is fenced by the claim token and idempotent (see the store's
        docstrings), so it goes on past the lease's end: during a database outage nobody can take the work
        over either, and the first write through when it returns saves what was sent, sparing the next holder
        a resend. After WRITE_PATIENCE_LEASES lease periods past the end it gives up with LeaseLost.
        """
        retry = RETRY_FIRST_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                # Bounded so a blackholed connection becomes a retry; an abandoned attempt that applies
                # later is harmless (idempotent), and the retry finds it applied.
                async with asyncio.timeout(self._attempt_seconds), self._lock:
                    result = await op()
                self._settling.difference_update(ids)
                return result
            except Exception as exc:
                if not _retryable(exc):
                    raise
                self._settling.update(i for i in ids if i in self._held)
                if self._clock.now() >= self._until + WRITE_PATIENCE_LEASES * self._lease_seconds:
                    raise LeaseLost(f"database unreachable for the whole lease ({type(exc).__name__})") from exc
                log.warning("lease_write_retry", error=type(exc).__name__, attempt=attempt, notifications=len(ids))
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)


def log_lease_event(event: str, ids: Collection[str], **fields: str) -> None:
    """A lease event naming every notification it concerns, LOG_IDS_PER_LINE ids per line.

    Every id is named, not a sample: a lapse is what allows the next holder to send a notification again,
    so the list is how an operator (or the fault checker) tells an explained repeat from a bug. Lines stay
    short for log pipelines; `part`/`parts` tie the lines of one event together.
    """
    ordered = sorted(ids)
    parts = max(1, -(-len(ordered) // LOG_IDS_PER_LINE))
    for part in range(parts):
        piece = ordered[part * LOG_IDS_PER_LINE : (part + 1) * LOG_IDS_PER_LINE]
        log.warning(event, notifications=len(ordered), part=part + 1, parts=parts, ids=piece, **fields)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or is_transient(exc)
