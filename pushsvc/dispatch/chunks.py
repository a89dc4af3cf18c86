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
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pushsvc import metrics
from pushsvc.dispatch import traces
from pushsvc.dispatch.pace import Pace
from pushsvc.dispatch.sender import DeliverySender, FinalResult, SendingStopped
from pushsvc.logs import get_logger
from pushsvc.model import PushRequest, PushType
from pushsvc.model.timezones import DEFAULT_TIMEZONE
from pushsvc.model.variants import CONTROL, DEFAULT_VARIANT, Split, Variant
from pushsvc.providers.base import Delivery
from pushsvc.scheduling.lease import Hold
from pushsvc.store.audience import AudienceCursor, audience_cursor_after, by_token, takes
from pushsvc.store.caps import CapsContended, FrequencyCaps, identity
from pushsvc.store.counts import platform_key, variant_key
from pushsvc.store.database import is_transient
from pushsvc.store.device_documents import to_recipient
from pushsvc.store.devices import Deactivation, DeviceStore
from pushsvc.store.notifications import LANE_BATCH
from pushsvc.token_kinds import provider_for, receives

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


@dataclass
class Settled:
    counts: Counter[str]
    deactivations: list[Deactivation]


def settle(
    app: str,
    route: str,
    results: Iterable[FinalResult],
    misconfig_tripped: Callable[[str], bool],
    dry_run: bool = False,
) -> Settled:
    """Count the final outcomes of delivered results (and their metrics) and pick the tokens to deactivate.

    An invalid-token answer deactivates its device unless
    - its reason is one a wrong app-wide setting gives for every token (BadDeviceToken,
      DeviceTokenNotForTopic, SENDER_ID_MISMATCH) and that provider's misconfiguration guard was tripped at
      any time while the chunk was sent (`misconfig_tripped(provider)`, from DeliverySender.misconfig_watch):
      then it is a configuration problem, counted auth_error, and the device is kept;
    - the device's token kind does not take this push type: the answer was about a route the token is not
      for (APNs: DeviceTokenNotForTopic for a regular token on the VoIP topic), not about the token; it is
      counted invalid_token and the device is kept (targeting sends no such push; this is the last check).
    The store spares, in addition, a device registered again after the answer (Deactivation.registered_by).
    A dry run deactivates nothing (it must change nothing but its own counts) and counts each outcome per
    device platform too (store.counts.platform_key).
    """
    counts: Counter[str] = Counter()
    deactivations: list[Deactivation] = []
    for result in results:
        device = result.delivery.device
        provider = provider_for(device.kind) or "none"
        outcome = result.outcome
        if outcome == "invalid_token":
            if result.misconfiguration and misconfig_tripped(provider):
                outcome = "auth_error"
            elif receives(device.kind, route) and not dry_run:
                deactivations.append(Deactivation(device.token, result.reason, result.invalid_as_of))
                metrics.INVALID_TOKENS.labels(app, provider).inc()
        counts[outcome] += 1
        if result.delivery.variant is not None:
            counts[variant_key(outcome, result.delivery.variant)] += 1
            counts[variant_key("targeted", result.delivery.variant)] += 1
        if dry_run:
            counts[platform_key(outcome, device.platform)] += 1
            metrics.DRY_RUN_OUTCOMES.labels(app, provider, outcome).inc()
        else:
            metrics.DELIVERIES.labels(app, provider, outcome).inc()
    return Settled(counts, deactivations)


class ChunkWorker:
    def __init__(
        self,
        devices: DeviceStore,
        sender: DeliverySender,
        answer_seconds: float,
        read_retry_seconds: float = 30.0,
        caps: FrequencyCaps | None = None,
    ) -> None:
        self._devices = devices
        self._sender = sender
        self._caps = caps
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
    ) -> Chunk:
        """The chunk starting at `cursor` (and, for a range of an audience, ending at token `upto`); transient
        database errors are retried while `retry_while()` holds (the lease is still good: nothing was sent
        for this chunk yet, so waiting costs only time)."""
        read = lambda: self._read(request, cursor, wave, count_unknown, size, upto)  # noqa: E731
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
    ) -> Chunk:
        push_type = request.route
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
        deliveries = self._deliveries(request, chunk, skip, counts, newly, self._sender.now(), terms.split)
        if terms.lapsed and deliveries:
            for key, delivery in deliveries:
                _count_final(counts, "expired", delivery.variant, delivery.device.platform, dry_run)
                newly.append(key)
            outcomes = metrics.DRY_RUN_OUTCOMES if dry_run else metrics.DELIVERIES
            outcomes.labels(request.app, "none", "expired").inc(len(deliveries))
            deliveries = []
        if deliveries and self._caps is not None and self._caps.applies(request):
            deliveries = await self._within_caps(request, deliveries, counts, newly, hold)
        may_send = hold.may_send if hold is not None else None
        misconfig_tripped = self._sender.misconfig_watch(request.app)
        lane, pace = terms.lane, terms.pace
        # The batch lane's few devices get a span each; a fan-out's chunk is one span (fanout.py, dispatch/traces.py).
        send = traces.per_device(self._sender.deliver) if lane == LANE_BATCH else self._sender.deliver
        tasks = [asyncio.ensure_future(send(d, due_at, may_send, lane=lane, pace=pace)) for _, d in deliveries]
        complete = await self._wait_all(tasks, hold)
        results: list[FinalResult] = []
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
            metrics.DEVICES_TARGETED.labels(request.app).inc(len(newly))
        return ChunkOutcome(counts, finished + newly, complete)

    @staticmethod
    def _deliveries(
        request: PushRequest, chunk: Chunk, skip: Collection[str], counts: Counter[str], newly: list[str], now: float,
        split: Split | None,
    ) -> list[tuple[str, Delivery]]:
        """A delivery (with its device key) for each device of the chunk not in `skip`; a device opted out of
        the message's category gets none: counted `opted_out` and added to `newly`, final already; so does one
        in a campaign's control group (`split`): counted `control`. A device of a variant gets its message.

        The TTL counts from `now`, the send (the sender's clock, which a provider's expiry is on): a wave or a
        scheduled push going out later than it was due still gets its whole TTL at the provider. How late it
        may go at all is the caller's `lapsed`."""
        ttl = request.options.ttl_seconds
        expires_at = None if ttl is None else now + ttl
        deliveries: list[tuple[str, Delivery]] = []
        category = request.message.category
        for doc in chunk.devices:
            key = chunk.key(doc)
            if key in skip:
                continue
            if category and category in (doc.get("opt_out") or ()):
                counts["opted_out"] += 1
                if request.options.dry_run:
                    counts[platform_key("opted_out", str(doc.get("platform")))] += 1
                newly.append(key)
                continue
            message, variant = request.message, None
            if split is not None:
                assigned = split.assign(str(doc.get("user_id") or doc["token"]))
                if assigned == CONTROL:
                    _count_final(counts, "control", CONTROL, str(doc.get("platform")), request.options.dry_run)
                    newly.append(key)
                    continue
                if isinstance(assigned, Variant):
                    message, variant = assigned.message, assigned.name
                else:  # a control group and no variants: the others get the campaign's message, as "default"
                    variant = DEFAULT_VARIANT
            delivery = Delivery(request.id, to_recipient(doc), message, request.options, expires_at, variant)
            deliveries.append((key, delivery))
        return deliveries

    async def _within_caps(
        self, request: PushRequest, deliveries: list[tuple[str, Delivery]], counts: Counter[str], newly: list[str],
        hold: Hold | None,
    ) -> list[tuple[str, Delivery]]:
        """The deliveries whose user has room under the app's frequency caps (store/caps.py); the others are
        counted `capped` (per variant too) and final. Retried like a read while the lease holds: nothing of the
        chunk was sent yet."""
        assert self._caps is not None
        caps, now = self._caps, self._sender.now()
        users = {identity(d.device) for _, d in deliveries}
        capped = await _retrying(
            lambda: caps.admit(request.app, request.id, users, now),
            hold.may_send if hold is not None else None, self._read_retry_seconds, notification_id=request.id,
        )
        if not capped:
            return deliveries
        kept = []
        for key, delivery in deliveries:
            if identity(delivery.device) not in capped:
                kept.append((key, delivery))
                continue
            _count_final(counts, "capped", delivery.variant, delivery.device.platform, False)  # dry runs: uncapped
            newly.append(key)
        metrics.DELIVERIES.labels(request.app, "none", "capped").inc(len(deliveries) - len(kept))
        return kept

    async def _wait_all(self, tasks: list[asyncio.Future[FinalResult]], hold: Hold | None) -> bool:
        """Wait for every delivery, or until the hold says stop; True if none was cut short."""
        if not tasks:
            return hold is None or not hold.stop.is_set()
        everything = asyncio.gather(*tasks, return_exceptions=True)
        try:
            if hold is None:
                await everything
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


def _count_final(counts: Counter[str], outcome: str, variant: str | None, platform: str, dry_run: bool) -> None:
    """A device's final count that no provider answered (expired, control, capped): the counter, its variant's
    (with `targeted`, as `settle` counts an answered one) and a dry run's per-platform one."""
    counts[outcome] += 1
    if variant is not None:
        counts[variant_key(outcome, variant)] += 1
        counts[variant_key("targeted", variant)] += 1
    if dry_run:
        counts[platform_key(outcome, platform)] += 1


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


async def _first(work: asyncio.Future[Any], signal: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait for `work`, or until `signal` is set (or `timeout`); True if `work` is done."""
    waiter = asyncio.ensure_future(signal.wait())
    try:
        await asyncio.wait({work, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return work.done()


__all__ = ["Chunk", "ChunkOutcome", "ChunkWorker", "SendingStopped"]
