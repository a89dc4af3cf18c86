"""The batch lane: notifications of a few tokens or users, sent now, run together, one claim at a time.

Most traffic is small: a notification for one user's devices. Run one by one, each would cost its own
lease heartbeat, progress update, final update and outcome round trip — a fixed cost per notification
that dwarfs its one or two deliveries. Here every notification of a claim is resolved and delivered
concurrently, then all of them are finished in one bulk write and announced in one producer batch.

Guarantees are those of a single chunk: progress is saved once, at the end, so a crash repeats the
notification. The batch is held by one lease (scheduling/lease.py): its claim token fences every write, so a
replica never finishes what another one took over; a notification lost to another replica stops at once,
and one stopped by a lapse or the drain deadline is handed back with the devices already answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Span

from pushsvc import metrics, tracing
from pushsvc.config import DispatchSettings
from pushsvc.dispatch import traces
from pushsvc.dispatch.chunks import Chunk, ChunkWorker, Terms
from pushsvc.logs import get_logger
from pushsvc.model import NotificationState, PushRequest
from pushsvc.outcomes import Announcer, OutcomeEvent
from pushsvc.scheduling.due import ttl_lapsed
from pushsvc.scheduling.lanes import lane_for
from pushsvc.scheduling.lease import Interruption, Lease, LeaseLost, log_lease_event
from pushsvc.store.counts import added_counts
from pushsvc.store.leases import BatchRunEnd, HandBack, LeaseStore
from pushsvc.store.notifications import LANE_BATCH
from pushsvc.store.records import NotificationRecord

log = get_logger(__name__)

# How often a batch finishes the notifications that are done while others are still retrying.
FINISH_EVERY_SECONDS = 0.5


def runs_in_batch(record: NotificationRecord) -> bool:
    """Whether the batch lane can run the notification: a few tokens or users, sent now, no campaign pacing.

    Everything else (segments, long lists, local-time waves, quiet hours, throttled or resumable
    campaigns) needs per-chunk progress and goes to the fan-out runner. The lane was chosen when the
    request was recorded; this re-checks what the runner relies on.
    """
    # A cursor means an earlier run got past a first chunk: the fan-out runner resumes it chunk by chunk.
    if record.lane != LANE_BATCH or record.kind or record.cursor is not None:
        return False
    if record.quiet_hours or record.throttle_per_second:
        return False
    # An unreadable request goes to the fan-out runner, which finishes it as failed, saying why.
    return isinstance(record.request, PushRequest) and lane_for(record.request) == LANE_BATCH


def _request(item: NotificationRecord) -> PushRequest:
    """The request of a notification of the batch lane: readable, or `runs_in_batch` would have sent it to the
    fan-out runner (intake's direct dispatch gives the request it has just validated)."""
    if not isinstance(item.request, PushRequest):
        raise TypeError(f"{item.id}: an unreadable request reached the batch lane ({item.request.detail})")
    return item.request


@dataclass
class _Sent:
    """Where one notification of the batch ended: complete, or stopped inside the chunk at `cursor`."""

    counts: Counter[str]  # since the last saved progress (the document's counts are added on finish)
    complete: bool
    cursor: object = None
    done: list[str] | None = None  # devices of the chunk at `cursor` with a final outcome


class BatchRunner:
    def __init__(
        self,
        leases: LeaseStore,
        chunks: ChunkWorker,
        announcer: Announcer,
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._leases = leases
        self._chunks = chunks
        self._announcer = announcer
        self._settings = settings
        self._clock = clock

    async def run(
        self, batch: Sequence[NotificationRecord], lease: Lease, on_done: Callable[[int], None] = lambda n: None
    ) -> None:
        """Send and finish the batch held by `lease`; `on_done(n)` reports n more notifications off our hands."""
        heartbeat = asyncio.create_task(lease.keep(), name=f"lease:batch:{len(batch)}")
        sending: dict[asyncio.Future[_Sent], NotificationRecord] = {}
        # Each notification's run, in its own trace; ended when its sending ends.
        spans = {item.id: traces.dispatching(item, LANE_BATCH) for item in batch}
        try:
            firsts = await self._first_chunks(batch, lease, [spans[item.id] for item in batch])
            sending = {
                asyncio.ensure_future(tracing.within(spans[item.id], self._send(item, lease, first))): item
                for item, first in zip(batch, firsts, strict=True)
            }
            pending = set(sending)
            while pending:
                # Finish what is done every so often: one notification retrying against a slow provider
                # must not hold back the outcome of the rest of its batch.
                done, pending = await asyncio.wait(pending, timeout=FINISH_EVERY_SECONDS)
                complete: list[tuple[NotificationRecord, Counter[str]]] = []
                stopped: list[tuple[NotificationRecord, _Sent]] = []
                for task in done:
                    item = sending[task]
                    notification_id = item.id
                    spans[notification_id].end()
                    error = task.exception()
                    if error is not None:
                        # Only this one: it is no longer renewed, its lease expires and a later claim runs it.
                        log.error("notification_run_failed", notification_id=notification_id, error=repr(error))
                        lease.drop([notification_id])
                    elif task.result().complete:
                        complete.append((item, task.result().counts))
                    elif lease.interruption(notification_id) is Interruption.LOST:
                        lease.drop([notification_id])  # another replica holds it: write nothing
                    else:
                        stopped.append((item, task.result()))
                await self._contained(lease, [item for item, _ in complete], self._finish(lease, complete))
                await self._contained(lease, [item for item, _ in stopped], self._hand_back(lease, stopped))
                on_done(len(done))
        finally:
            heartbeat.cancel()
            for task in sending:
                task.cancel()
            for span in spans.values():
                span.end()  # those not ended above (a second end is ignored)
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _first_chunks(
        self, batch: Sequence[NotificationRecord], lease: Lease, spans: Sequence[Span]
    ) -> list[Chunk | None]:
        """Every notification's first chunk, read together (one lookup per app, push type and target field).
        If that read fails, each notification reads its own, so a failure concerns that one alone."""
        started_ns = time.time_ns()
        try:
            chunks: list[Chunk | None] = list(
                await self._chunks.first_chunks(
                    [_request(item) for item in batch], self._settings.chunk_size, retry_while=lease.valid
                )
            )
        except Exception as exc:
            log.warning("batch_read_failed", notifications=len(batch), error=type(exc).__name__)
            chunks = [None] * len(batch)
        traces.looked_up(spans, started_ns, chunks)  # one lookup span in each notification's trace
        return chunks

    @staticmethod
    async def _contained(lease: Lease, group: Sequence[NotificationRecord], work: Awaitable[None]) -> None:
        """Run a write about `group`; a failure concerns these notifications only (the others keep sending)."""
        try:
            await work
        except Exception as exc:
            ids = [item.id for item in group]
            log.error("batch_settle_failed", notifications=len(ids), error=repr(exc))
            lease.drop(ids)  # no longer renewed: their leases expire and a later claim resumes them

    async def _finish(self, lease: Lease, ready: Sequence[tuple[NotificationRecord, Counter[str]]]) -> None:
        """One bulk write for the final states, one producer batch for the outcome events."""
        if not ready:
            return
        token = lease.token
        # Counts saved by earlier runs (a run stopped mid-chunk hands back what it had answered) and this one's.
        ends = [
            BatchRunEnd(item.id, NotificationState.DONE, added_counts(item.counts, counts)) for item, counts in ready
        ]
        ids = [end.notification_id for end in ends]
        now = self._clock()
        finishing = traces.finish_spans([item for item, _ in ready], str(NotificationState.DONE))
        # The same bulk write marks the outcome events acknowledged since the last one (Announcer).
        announced = self._announcer.take()
        try:
            finished = set(
                await lease.write(ids, lambda: self._leases.finish_many(token, ends, now, announced))
            )
        except BaseException as exc:
            self._announcer.give_back(announced)
            for span in finishing:
                span.end()
            if not isinstance(exc, LeaseLost):
                raise
            # The database stayed out of reach for the whole lease: whoever claims them next sends them again.
            log.error("batch_finish_failed", notifications=len(ids), error=str(exc))
            lease.drop(ids)
            return
        lease.drop(ids)
        if len(finished) < len(ends):
            log_lease_event("lease_lost", set(ids) - finished, claim=token)
        events = []
        for (item, _), end, span in zip(ready, ends, finishing, strict=True):
            tracing.counted(span, end.counts)
            if end.notification_id not in finished:
                continue
            metrics.child(metrics.NOTIFICATIONS_FINISHED, item.app, str(end.state)).inc()
            log.info(
                "notification_finished",
                notification_id=end.notification_id,
                app=item.app,
                state=str(end.state),
                counts=end.counts,
            )
            events.append(OutcomeEvent.of(item, str(end.state), end.counts, None, now, trace=tracing.carried(span)))
        await self._announcer.announce(events)
        for span in finishing:
            span.end()

    async def _hand_back(self, lease: Lease, stopped: Sequence[tuple[NotificationRecord, _Sent]]) -> None:
        """Notifications stopped mid-chunk (drain deadline, lapsed lease): save what was answered, let go."""
        if not stopped:
            return
        token = lease.token
        items = [HandBack(item.id, sent.cursor, sent.counts, sent.done or ()) for item, sent in stopped]
        ids = [item.notification_id for item in items]
        try:
            saved = set(await lease.write(ids, lambda: self._leases.hand_back(token, items)))
        except LeaseLost as exc:
            log.error("hand_back_failed", notifications=len(ids), error=str(exc))
            saved = set()
        lease.drop(ids)
        for notification_id in ids:
            log.info(
                "notification_handed_back",
                notification_id=notification_id,
                reason=str(lease.interruption(notification_id) or Interruption.LAPSED),
                saved=notification_id in saved,
            )

    async def _send(self, item: NotificationRecord, lease: Lease, first: Chunk | None) -> _Sent:
        """All chunks of one notification (one, in practice; `first` if read already), counted since the last
        saved progress."""
        request, hold = _request(item), lease.hold(item.id)
        counts: Counter[str] = Counter()
        cursor = None
        skip = item.chunk_done
        # Claimed later than its TTL allows (a scheduled push after an outage): counted expired, not sent. One
        # that began (a run stopped part-way) goes on.
        lapsed = not skip and ttl_lapsed(request.options.ttl_seconds, item.due_at, self._clock())
        terms = Terms(lane=LANE_BATCH, lapsed=lapsed)
        while True:
            chunk, first = first, None
            if chunk is None:
                chunk = await self._chunks.next_chunk(
                    request, cursor, None, True, self._settings.chunk_size, retry_while=lease.valid
                )
            outcome = await self._chunks.deliver(request, chunk, item.due_at, skip, hold, terms)
            counts.update(outcome.counts)
            if not outcome.complete:
                return _Sent(counts, False, cursor, outcome.done)
            if chunk.exhausted:
                return _Sent(counts, True)
            cursor, skip = chunk.next_cursor, frozenset()

