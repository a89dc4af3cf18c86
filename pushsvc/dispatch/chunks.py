"""One chunk of a notification: resolve the next devices, deliver to them, count the outcomes.

Shared by the fan-out runner (one notification, many chunks, progress saved per chunk) and the batch
lane (many single-chunk notifications, progress saved once for the whole batch).

A chunk can be stopped part-way (its lease lapsed or was lost, or the drain deadline came): sending stops,
and the outcome says which of its devices already have a final answer. Those are saved with the cursor of
the chunk's start (`chunk_done`), so whoever resumes the notification reads the same chunk again and skips
them: a stop repeats only the requests that were on the wire without an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pushsvc import metrics
from pushsvc.dispatch import traces
from pushsvc.dispatch.admission import Admission
from pushsvc.dispatch.pace import Pace
from pushsvc.dispatch.sender import DeliverySender, FinalResult, SendingStopped
from pushsvc.dispatch.settle import settle
from pushsvc.logs import get_logger
from pushsvc.model import PushRequest, PushType
from pushsvc.model.timezones import DEFAULT_TIMEZONE
from pushsvc.model.variants import Split
from pushsvc.scheduling.best_time import BestTime, best_hour
from pushsvc.scheduling.lease import Hold, Signal
from pushsvc.store.audience import AudienceCursor, audience_cursor_after, by_token, takes
from pushsvc.store.caps import CapsContended, FrequencyCaps
from pushsvc.store.database import is_transient
from pushsvc.store.devices import DeviceStore
from pushsvc.store.notifications import LANE_BATCH
from pushsvc.store.open_hours import OpenHours, person_as_of
from pushsvc.timeouts import Cut

log = get_logger(__name__)

T = TypeVar("T")

@dataclass
class Chunk:
    devices: list[dict]
    # Tokens of a tokens target that no active device has (counted targeted + unknown_token).
    unknown_tokens: list[str]
    next_cursor: Any
    exhausted: bool
    # How a device of this chunk is named in `chunk_done`: its token for a tokens target (the request
    # holds them anyway, and an unknown token has no document), its _id for an audience query.
    by_token: bool = False

    def key(self, doc: dict) -> str:
        return str(doc["token"]) if self.by_token else str(doc["_id"])


@dataclass
class ChunkOutcome:
    counts: Counter[str]
    # Keys (Chunk.key) of the devices with a final outcome, including those done before (`skip`).
    done: list[str] = field(default_factory=list)
    # Every device of the chunk has a final outcome; otherwise the chunk was stopped part-way.
    complete: bool = True


@dataclass(frozen=True)
class Terms:
    """How one run sends its chunks, beyond the request: the lane (a label of the end-to-end latency), a
    throttled run's `pace`, whether it began too late to send (`lapsed`: scheduling/due.py ttl_lapsed; its
    devices are counted expired), and a campaign's A/B `split` (model/variants.py)."""

    lane: str = "fanout"
    pace: Pace | None = None
    lapsed: bool = False
    split: Split | None = None


class ChunkWorker:
    def __init__(
        self,
        devices: DeviceStore,
        sender: DeliverySender,
        answer_seconds: float,
        read_retry_seconds: float = 30.0,
        caps: FrequencyCaps | None = None,
        opens: OpenHours | None = None,
    ) -> None:
        self._devices = devices
        self._sender = sender
        self._caps = caps
        self._opens = opens  # users' recorded opens: best-time waves (None: nobody has a best hour)
        # The longest a provider answer can take (the send timeout): how long a lapsed lease awaits them.
        self._answer_seconds = answer_seconds
        # How long a device read keeps failing before the run ends with its error (the service: one lease's
        # length, a primary election's worth). Retrying for ever under a lease that renewals keep alive would
        # hold the notification with no progress and no end; ending the run lets the scheduler count it.
        self._read_retry_seconds = read_retry_seconds

    async def next_chunk(
        self,
        request: PushRequest,
        cursor: Any,
        wave: list[str] | None,
        count_unknown: bool,
        size: int,
        retry_while: Callable[[], bool] | None = None,
        upto: str | None = None,
        best: BestTime | None = None,
    ) -> Chunk:
        """The chunk starting at `cursor` (and, for a range of an audience, ending at token `upto`); transient
        database errors are retried while `retry_while()` holds (the lease is still good: nothing was sent
        for this chunk yet, so waiting costs only time). With `best`, `wave` names best-time waves
        (scheduling/best_time.py) rather than zones."""
        read = lambda: self._read(request, cursor, wave, count_unknown, size, upto, best)  # noqa: E731
        with traces.lookup(request.id) as span:
            chunk = await _retrying(read, retry_while, self._read_retry_seconds, notification_id=request.id)
            traces.chunk_read(span, chunk)
            return chunk

    async def read_retried(
        self, read: Callable[[], Awaitable[T]], retry_while: Callable[[], bool], **about: object
    ) -> T:
        """Another read of the devices before sending (cutting an audience into ranges), retried like a
        chunk's: transient errors while `retry_while()` holds, for at most the read retry time."""
        return await _retrying(read, retry_while, self._read_retry_seconds, **about)

    async def first_chunks(
        self, requests: Sequence[PushRequest], size: int, retry_while: Callable[[], bool] | None = None
    ) -> list[Chunk]:
        """The first chunk of each of many small requests (a few tokens or users, no waves), read together:
        one lookup per app, push type and target field (DeviceStore.find_many) rather than one per request.
        The same chunks `next_chunk(request, None, None, True, size)` reads one by one; retried alike."""
        return await _retrying(
            lambda: self._read_first(requests, size), retry_while, self._read_retry_seconds, notifications=len(requests)
        )

    async def _read_first(self, requests: Sequence[PushRequest], size: int) -> list[Chunk]:
        wanted: dict[tuple[str, PushType, str], set[str]] = defaultdict(set)
        for request in requests:
            wanted[_lookup_key(request)].update(_lookup_values(request, size))
        groups = list(wanted.items())
        found = await asyncio.gather(
            *(self._devices.find_many(app, kind, name, sorted(values)) for (app, kind, name), values in groups)
        )
        by_value: dict[tuple[str, PushType, str], dict[str, list[dict]]] = {}
        for (group, _), docs in zip(groups, found, strict=True):
            index = by_value[group] = defaultdict(list)
            for doc in docs:
                index[str(doc[group[2]])].append(doc)
        chunks = []
        for request in requests:
            index = by_value[_lookup_key(request)]
            values = _lookup_values(request, size)
            docs = [doc for value in dict.fromkeys(values) for doc in index.get(value, ())]
            if request.target.tokens:
                chunks.append(_token_chunk(request, 0, values, docs, True, None))
            else:
                # One query serves requests of several categories, so the opt-out clause of a users audience
                # (store/audience.py `active_devices_filter`) is applied here, per request.
                category = request.message.category
                mine = sorted(
                    (d for d in docs if not category or category not in (d.get("opt_out") or ())), key=by_token
                )[:size]
                chunks.append(_audience_chunk(request, mine, None, size))
        return chunks

    async def _read(
        self,
        request: PushRequest,
        cursor: Any,
        wave: list[str] | None,
        count_unknown: bool,
        size: int,
        upto: str | None = None,
        best: BestTime | None = None,
    ) -> Chunk:
        push_type = request.route
        if best is not None and wave is not None:
            # A best-time wave pages the whole audience (its waves are hours, not zones) and keeps its own users.
            whole = await self._read(request, cursor, None, count_unknown, size, upto)
            return await self._in_best_wave(request, whole, wave, best)
        if request.target.tokens:
            # Explicit tokens are paged by position in the request.
            start = int(cursor or 0)
            tokens = request.target.tokens[start : start + size]
            found = await self._devices.find_by_tokens(request.app, tokens, push_type) if tokens else []
            return _token_chunk(request, start, tokens, found, count_unknown, wave)
        timezones: list[str | None] | None = None
        if wave is not None:
            timezones = [*wave, None] if DEFAULT_TIMEZONE in wave else list(wave)
        found = await self._devices.find_audience(
            request.app, request.target, request.message.category, timezones, cursor, size, push_type, upto,
            request.activity_id,
        )
        return _audience_chunk(request, found, cursor, size)

    async def _in_best_wave(self, request: PushRequest, chunk: Chunk, wave: list[str], best: BestTime) -> Chunk:
        """`chunk`, a page of the whole audience, keeping the devices whose user's best hour as of the campaign's
        time (their opens recorded by then) puts them in this best-time wave. The cursor and the end stay the
        page's. Every wave pages the same audience and decides by the same stored opens and each device's user
        at the campaign's time, so each device is sent in exactly one wave, whatever is recorded meanwhile."""
        person = {id(d): person_as_of(d, best.start) for d in chunk.devices}
        persons = set(person.values())
        opens = await self._opens.read(request.app, persons) if persons and self._opens is not None else {}
        waves = set(wave)
        chunk.devices = [
            d for d in chunk.devices if best.wave_of(best_hour(opens.get(person[id(d)], ()), best.start)) in waves
        ]
        return chunk

    async def deliver(
        self,
        request: PushRequest,
        chunk: Chunk,
        due_at: float,
        skip: Collection[str] = (),
        hold: Hold | None = None,
        terms: Terms = Terms(),
    ) -> ChunkOutcome:
        """Deliver to the chunk's devices not in `skip` (done before) until all are final or the lease's `hold`
        says stop, as the run's `terms` say. Nothing is sent once `hold` no longer may send."""
        counts: Counter[str] = Counter()
        keys = [*chunk.unknown_tokens, *map(chunk.key, chunk.devices)]
        finished = [key for key in keys if key in skip]  # answered before the chunk was last stopped
        newly: list[str] = [t for t in chunk.unknown_tokens if t not in skip]
        counts["unknown_token"] = len(newly)
        dry_run = request.options.dry_run
        if newly:
            outcomes = metrics.DRY_RUN_OUTCOMES if dry_run else metrics.DELIVERIES
            outcomes.labels(request.app, "none", "unknown_token").inc(len(newly))
        admission = Admission(request, counts, newly)
        deliveries = admission.deliveries(chunk.devices, chunk.key, skip, self._sender.now(), terms.split)
        if terms.lapsed:
            deliveries = admission.expire(deliveries)
        if deliveries and self._caps is not None and self._caps.applies(request):
            caps, now, retry_while = self._caps, self._sender.now(), hold.may_send if hold is not None else None

            async def admit(users: set[str]) -> set[str]:
                # Retried like a read while the lease holds (nothing of the chunk was sent yet), lost races too.
                return await _retrying(lambda: caps.admit(request.app, request.id, users, now), retry_while,
                                       self._read_retry_seconds, notification_id=request.id)

            deliveries = await admission.within_caps(deliveries, admit)
        may_send = hold.may_send if hold is not None else None
        misconfig_tripped = self._sender.misconfig_watch(request.app)
        lane, pace = terms.lane, terms.pace
        # The batch lane's few devices get a span each; a fan-out's chunk is one span (fanout.py, dispatch/traces.py).
        send = traces.per_device(self._sender.deliver) if lane == LANE_BATCH else self._sender.deliver
        results: list[FinalResult] = []
        if len(deliveries) == 1:
            # The batch lane's usual chunk: its one delivery is sent in this task (see _send_one).
            ((key, device),) = deliveries
            result = await self._send_one(send(device, due_at, may_send, lane=lane, pace=pace), hold)
            complete = result is not None
            if result is not None:
                results.append(result)
                newly.append(key)
        else:
            tasks = [asyncio.ensure_future(send(d, due_at, may_send, lane=lane, pace=pace)) for _, d in deliveries]
            complete = await self._wait_all(tasks, hold)
            for (key, _), task in zip(deliveries, tasks, strict=True):
                if task.done() and not task.cancelled() and task.exception() is None:
                    results.append(task.result())
                    newly.append(key)
                else:  # cut short, or refused to start (SendingStopped: the lease is no longer good)
                    complete = False
        counts.update(await self._settle(request, results, misconfig_tripped))
        # A device counts as targeted once it has a final outcome: a stopped chunk counts the rest on resume.
        counts["targeted"] = len(newly)
        if newly and not dry_run:
            metrics.child(metrics.DEVICES_TARGETED, request.app).inc(len(newly))
        return ChunkOutcome(counts, finished + newly, complete)

    async def _send_one(self, delivery: Awaitable[FinalResult], hold: Hold | None) -> FinalResult | None:
        """One delivery, awaited in the caller's task; None if the hold cut it short or it refused to start.

        The same stop as `_wait_all`'s, without a task for the delivery and a wait beside it: when the hold says
        stop, the delivery is cancelled at once (a loss, the drain deadline), or when the in-flight grace of a
        lapse ends or the drain deadline comes within it, unless its answer came first."""
        if hold is None:
            return await delivery
        loop = asyncio.get_running_loop()
        # Timed by the stop: a cancellation of the run itself still propagates, as the Cut tells them apart.
        cut = Cut()
        armed, watching_abort = True, False

        # Neither callback may act once the delivery is over or the cut is under way (a Cut that has fired
        # takes no new time): the stop's, or the abort's during a lapse's grace, can come just then.
        def on_abort(_: object) -> None:
            if armed and not cut.expired():
                cut.at(loop.time())

        def on_stop(_: object) -> None:
            nonlocal watching_abort
            if not armed or cut.expired():
                return
            grace = hold.in_flight_grace(self._answer_seconds)
            if grace > 0 and not hold.abort.is_set():
                cut.at(loop.time() + grace)
                watching_abort = True
                hold.abort.fired().add_done_callback(on_abort)
            else:
                cut.at(loop.time())

        stop = hold.stop.fired()
        try:
            with cut:
                stop.add_done_callback(on_stop)
                try:
                    return await delivery
                finally:
                    armed = False
                    stop.remove_done_callback(on_stop)
                    if watching_abort:
                        hold.abort.fired().remove_done_callback(on_abort)
        except SendingStopped:
            return None
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) and cut.expired()):
                # As in a chunk of many: a delivery that raised (a bug: the sender never does) is cut short, so the
                # run hands it back rather than failing whole.
                log.error("delivery_raised", notification_id=hold.notification_id, error=repr(exc)[:300])
            return None

    async def _wait_all(self, tasks: list[asyncio.Future[FinalResult]], hold: Hold | None) -> bool:
        """Wait for every delivery, or until the hold says stop; True if none was cut short."""
        if not tasks:
            return hold is None or not hold.stop.is_set()
        everything = asyncio.gather(*tasks, return_exceptions=True)
        try:
            if hold is None:
                await asyncio.wait(tasks)
                return True
            if not await _first(everything, hold.stop):
                # No new attempt starts now (the hold refuses); requests on the wire may still be answered,
                # unless the drain deadline wants the hand-back at once.
                grace = hold.in_flight_grace(self._answer_seconds)
                if grace > 0 and not hold.abort.is_set():
                    await _first(everything, hold.abort, timeout=grace)
        except asyncio.CancelledError:
            # The run itself is cancelled: no delivery of it may go on sending on its own.
            for task in tasks:
                task.cancel()
            raise
        if everything.done():
            return True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return False

    async def _settle(
        self, request: PushRequest, results: list[FinalResult], misconfig_tripped: Callable[[str], bool]
    ) -> Counter[str]:
        """Count the final outcomes and deactivate the tokens found dead (see `settle`)."""
        settled = settle(request.app, request.route, results, misconfig_tripped, request.options.dry_run)
        if settled.deactivations:
            # Deactivate before saving progress: if we crash in between, the retried chunk skips these. A
            # failure here must not cost the chunk (its sends are done): the tokens stay active for now and
            # the next push to them finds them dead again.
            try:
                await self._devices.deactivate(request.app, settled.deactivations)
            except Exception as exc:
                log.warning("deactivation_failed", app=request.app, tokens=len(settled.deactivations),
                            error=type(exc).__name__)
        return settled.counts


def _token_chunk(
    request: PushRequest,
    start: int,
    tokens: Sequence[str],
    found: Sequence[dict],
    count_unknown: bool,
    wave: list[str] | None,
) -> Chunk:
    """The chunk of a tokens target at position `start`, from the active devices found among its tokens."""
    found = [d for d in found if takes(d, request)]
    # A token of another kind (a regular APNs token named in a VoIP push) is unknown to this push.
    known = {d["token"] for d in found}
    unknown = [t for t in tokens if t not in known] if count_unknown else []
    if wave is not None:
        zones = set(wave)
        found = [d for d in found if (d.get("timezone") or DEFAULT_TIMEZONE) in zones]
    end = start + len(tokens)
    return Chunk(found, unknown, end, end >= len(request.target.tokens), by_token=True)


def _audience_chunk(request: PushRequest, found: Sequence[dict], cursor: AudienceCursor, size: int) -> Chunk:
    """The chunk of a users or segment audience from one page of it (`found`, in order after `cursor`)."""
    next_cursor = audience_cursor_after(found[-1], cursor) if found else cursor
    # Filtered after paging (the cursor and the end are those of what the query returned).
    devices = [d for d in found if takes(d, request)]
    return Chunk(devices, [], next_cursor, len(found) < size)


def _lookup_key(request: PushRequest) -> tuple[str, PushType, str]:
    """What a batched first-chunk lookup groups by: app, push type (its token kinds), target field."""
    return request.app, request.route, "token" if request.target.tokens else "user_id"


def _lookup_values(request: PushRequest, size: int) -> list[str]:
    return list(request.target.tokens[:size]) if request.target.tokens else list(request.target.users)


async def _retrying(
    read: Callable[[], Awaitable[T]], retry_while: Callable[[], bool] | None, for_seconds: float, **about: object
) -> T:
    """A device read, its transient errors retried while `retry_while()` holds, for at most `for_seconds` from
    the first failure (`about`: for the log)."""
    delay = 0.1
    give_up_at: float | None = None
    while True:
        try:
            return await read()
        except Exception as exc:
            if give_up_at is None:
                give_up_at = time.monotonic() + for_seconds
            retried = is_transient(exc) or isinstance(exc, CapsContended)  # a lost race is decided again
            if retry_while is None or not retried or not retry_while() or time.monotonic() >= give_up_at:
                raise
            log.warning("chunk_read_retry", error=type(exc).__name__, **about)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _first(work: asyncio.Future[Any], signal: Signal, timeout: float | None = None) -> bool:
    """Wait for `work`, or until `signal` is set (or `timeout`); True if `work` is done."""
    await asyncio.wait({work, signal.fired()}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return work.done()


__all__ = ["Chunk", "ChunkOutcome", "ChunkWorker", "SendingStopped"]
