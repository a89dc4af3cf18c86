"""Turning raw request bytes or objects into recorded notifications; shared by Kafka and the HTTP API.

``decode`` and ``validate`` never raise: whatever one message does to the parser (a contract error, or an
exception nobody foresaw) becomes a Rejection of that message alone. On Kafka an exception escaping here
would crash the consume loop with its neighbours in hand; over HTTP it would be a 500 for bad input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from pushsvc import metrics
from pushsvc.ingest.idempotency import REQUEST_HASH, differing_field, request_hash
from pushsvc.ingest.payload_limits import check_payload_size
from pushsvc.logs import get_logger
from pushsvc.model import PushRequest, RequestError, parse_request, stamp_live_activity
from pushsvc.scheduling.due import initial_due_at
from pushsvc.scheduling.lanes import lane_for
from pushsvc.store.campaigns import CAMPAIGN_PREFIX
from pushsvc.store.notifications import LANE_BATCH, NotificationStore, new_document, notification_key
from pushsvc.store.records import NotificationRecord
from pushsvc.tracing import TRACE_FIELD, TraceContext

if TYPE_CHECKING:
    from pushsvc.scheduling.scheduler import Scheduler

log = get_logger(__name__)


@dataclass(frozen=True)
class Rejection:
    reason: str  # invalid_json | invalid_request | too_large | store_rejected | conflict
    detail: str
    field: str | None = None


@dataclass(frozen=True)
class RecordAs:
    """How a request that is more than a producer's request is recorded: a campaign (ingest/campaigns.py
    `campaign_intake`). The same insert, repeat check and wake-up as any request; only these differ."""

    lane: str  # not lane_for's choice: a campaign keeps per-chunk progress whatever its size
    fields: Mapping[str, Any]  # added to its document (a campaign's kind, name, pacing, audience estimate)
    # What the caller sent, in their own terms (a campaign body, not the request made of it): what is hashed
    # and what a repeat of the id is compared with.
    sent: Mapping[str, Any]
    # A stored document in those same terms, to name the first field a repeat changes.
    form_of: Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class Accepted:
    request: PushRequest
    raw: dict[str, Any]
    recorded_as: RecordAs | None = None  # None: a request, in the lane lane_for picks
    # The W3C context of its intake span (or the producer's, tracing off): stored with the notification so the
    # spans of whoever sends it join the trace (pushsvc/tracing.py). Not part of the request: never hashed.
    trace: TraceContext | None = None

    @property
    def lane(self) -> str:
        return self.recorded_as.lane if self.recorded_as is not None else lane_for(self.request)

    @property
    def sent(self) -> Mapping[str, Any]:
        """What the caller sent (unstamped), in their terms: what its `request_hash` is taken over."""
        return self.recorded_as.sent if self.recorded_as is not None else self.raw


@dataclass(frozen=True)
class Conflict:
    """A request id recorded before in its app with another body: the first request stands."""

    field: str  # the first field that differs, dotted (`message.title`)
    detail: str


@dataclass(frozen=True)
class Recorded:
    inserted: list[str]
    # Repeats of a recorded request (same id, same body): answered with the original, never sent again.
    duplicates: list[str]
    # Requests MongoDB refuses to store for good (e.g. a document over its size limit), with the reason:
    # Kafka dead-letters them (reason "store_rejected"), the API answers 400. Never retried.
    rejected: list[tuple[Accepted, str]]
    # The documents inserted, by key: what the API answers with, without reading them back.
    documents: Mapping[str, dict] = field(default_factory=dict)
    # Repeated ids with a different body (not in `duplicates`): Kafka dead-letters them (reason "conflict"),
    # the API answers 409. The request recorded first is kept as it is.
    conflicts: list[tuple[Accepted, Conflict]] = field(default_factory=list)
    # The recorded documents the repeats were compared with, by key: what the API answers a repeat with.
    existing: Mapping[str, dict] = field(default_factory=dict)
    # The request each inserted document holds, by key, as stamped: the API's previews render it (not parsed
    # again from the document).
    requests: Mapping[str, PushRequest] = field(default_factory=dict)


# Per app, the providers it configures (config.configured_providers): whose payload limits its requests meet.
AppProviders = Mapping[str, Collection[str]]


def decode(
    value: bytes | None, max_bytes: int, known_apps: frozenset[str], providers: AppProviders | None = None
) -> Accepted | Rejection:
    """Raw Kafka value -> Accepted, or the Rejection that dead-letters it; never raises."""
    if value is None:
        return Rejection("invalid_json", "empty message (null value)")
    if len(value) > max_bytes:
        return Rejection("too_large", f"message is {len(value)} bytes, limit {max_bytes}")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"not valid JSON: {exc}")
    except Exception as exc:  # orjson raises only JSONDecodeError; anything else must not crash the loop
        return _unforeseen(exc)
    return validate(raw, known_apps, providers)


def validate(raw: Any, known_apps: frozenset[str], providers: AppProviders | None = None) -> Accepted | Rejection:
    """A decoded JSON request -> Accepted, or a Rejection naming the field; never raises.

    The contract (model.parse_request) plus what the providers would refuse for every device: the payload
    size (payload_limits.check_payload_size).
    """
    try:
        request = parse_request(raw, known_apps)
        # A campaign's notification is request "campaign:<id>" of its app: producers can't use the prefix.
        if request.id.startswith(CAMPAIGN_PREFIX):
            raise RequestError("id", f"the prefix {CAMPAIGN_PREFIX!r} is reserved for campaigns")
        check_payload_size(request, None if providers is None else providers.get(request.app, ()))
        return Accepted(request, raw)
    except RequestError as exc:
        return Rejection("invalid_request", str(exc), exc.field)
    except RecursionError:
        return Rejection("invalid_request", "nesting too deep")
    except Exception as exc:
        return _unforeseen(exc)


def key(item: Accepted) -> str:
    """The notification a request becomes: ids are unique per app."""
    return notification_key(item.request.app, item.request.id)


def _unforeseen(exc: Exception) -> Rejection:
    """A parser bug met by this input: reject the one message (the class names the bug in the dead letter)."""
    detail = f"{type(exc).__name__}: {exc}"[:500]
    log.error("request_validation_crashed", error=detail, exc_info=True)
    return Rejection("invalid_request", detail)


class Intake:
    """The one way a request becomes a notification, for Kafka and the HTTP API alike.

    A due-now request of the batch lane (a few tokens or users) is recorded already held by this replica and
    sent at once (`Scheduler.reserve` / `dispatch`: the claim is part of the insert); everything else is
    recorded unclaimed, and the scheduler is told when it is due (`Scheduler.wake`).
    """

    def __init__(
        self,
        notifications: NotificationStore,
        scheduler: Scheduler | None,
        clock: Callable[[], float] = time.time,
    ):
        self._notifications = notifications
        self._scheduler = scheduler
        self._clock = clock

    async def record(self, accepted: Sequence[Accepted], source: str) -> Recorded:
        """Record validated requests (one round trip, as a rule); a request id seen before in its app is a
        duplicate if its body is the same, a conflict if not (ingest/idempotency.py). The lists returned hold
        notification keys (store.notifications.notification_key).

        Within one batch the first occurrence of an id wins and later ones are duplicates (or conflicts), like
        redeliveries; but if MongoDB refuses the first one for good, the next copy gets its own try instead.
        """
        now = self._clock()
        inserted: list[str] = []
        repeats: list[Accepted] = []
        rejected: list[tuple[Accepted, str]] = []
        documents: dict[str, dict] = {}
        requests: dict[str, PushRequest] = {}
        pending = list(accepted)
        while pending:
            unique: dict[str, Accepted] = {}
            later: list[Accepted] = []
            for item in pending:
                if key(item) in unique:
                    later.append(item)
                else:
                    unique[key(item)] = item
            stored = await self._record_once(list(unique.values()), source, now)
            inserted += stored.inserted
            repeats += [unique[k] for k in stored.duplicates]
            rejected += stored.rejected
            documents.update(stored.documents)
            requests.update(stored.requests)
            refused = {key(item) for item, _ in stored.rejected}
            pending = [item for item in later if key(item) in refused]
            repeats += [item for item in later if key(item) not in refused]
        duplicates, conflicts, existing = await self._compare_repeats(repeats, documents)
        counted = {"accepted": len(inserted), "duplicate": len(duplicates), "conflict": len(conflicts)}
        for outcome, count in counted.items():
            if count:
                metrics.child(metrics.REQUESTS_INGESTED, source, outcome).inc(count)
        for item, error in rejected:
            log.warning("request_rejected_by_store", notification_id=key(item)[:200], error=error)
        for item, conflict in conflicts:
            log.info("request_id_conflict", notification_id=key(item)[:200], field=conflict.field, source=source)
        return Recorded(inserted, duplicates, rejected, documents, conflicts, existing, requests)

    async def _compare_repeats(
        self, repeats: list[Accepted], inserted: Mapping[str, dict]
    ) -> tuple[list[str], list[tuple[Accepted, Conflict]], dict[str, dict]]:
        """Tell repeats (same id and body) from conflicts (same id, another body) by the stored request hash.

        One read, only when there are repeats: a copy recorded earlier in this batch is compared with the
        document just inserted. A repeat whose record is gone (retention deleted it meanwhile) stays a repeat.
        """
        if not repeats:
            return [], [], {}
        wanted = {(item.request.app, item.request.id) for item in repeats if key(item) not in inserted}
        existing = await self._notifications.find_many(wanted) if wanted else {}
        duplicates: list[str] = []
        conflicts: list[tuple[Accepted, Conflict]] = []
        for item in repeats:
            doc = inserted.get(key(item)) or existing.get(key(item))
            differs = None if doc is None else _differs(doc, item)
            if differs is None:
                duplicates.append(key(item))
                continue
            request = item.request
            detail = (
                f"request id {request.id[:200]!r} was recorded before in app {request.app!r} with a different "
                f"body ({differs} differs); the first request stands: use a new id for a new notification"
            )
            conflicts.append((item, Conflict(differs, detail)))
        return duplicates, conflicts, existing

    async def _record_once(self, items: list[Accepted], source: str, now: float) -> Recorded:
        """One insert of requests with distinct keys; the due-now batch-lane ones held by this replica if the
        lane has room, and handed to the batch runner once inserted."""
        due = [initial_due_at(item.request.options, now) for item in items]
        lanes = [item.lane for item in items]
        direct = [n for n in range(len(items)) if due[n] <= now and lanes[n] == LANE_BATCH]
        reservation = self._scheduler.reserve(len(direct)) if direct and self._scheduler is not None else None
        held = set(direct[: reservation.room]) if reservation is not None else set()
        # What is stored and sent: a Live Activity's default timestamp filled in (`items` stay the caller's
        # objects: Kafka ingest tells the ones refused apart by identity).
        stamped = [stamp_live_activity(item.request, item.raw, now) for item in items]
        try:
            documents = [
                # The hash of what the caller sent (unstamped, in their terms): a repeat is compared with it.
                new_document(request, raw, source, due[n], now, reservation.claim if n in held else None, lane=lanes[n])
                | (items[n].recorded_as.fields if items[n].recorded_as is not None else {})
                | {REQUEST_HASH: request_hash(items[n].sent)}
                | ({TRACE_FIELD: items[n].trace.document()} if items[n].trace is not None else {})
                for n, (request, raw) in enumerate(stamped)
            ]
            result = await self._notifications.record(documents)
        except BaseException:
            if reservation is not None and self._scheduler is not None:
                self._scheduler.abandon(reservation, [key(items[n]) for n in sorted(held)])
            raise
        stored = set(result.inserted)
        if reservation is not None and self._scheduler is not None:
            recorded = [NotificationRecord.from_document(documents[n], stamped[n][0]) for n in sorted(held)]
            await self._scheduler.dispatch(reservation, [item for item in recorded if item.id in stored])
        if self._scheduler is not None:
            waiting = {d["due_at"] for n, d in enumerate(documents) if n not in held and d["_id"] in stored}
            if any(at <= now for at in waiting):
                self._scheduler.wake()  # due now, recorded unclaimed (a full lane, or the fan-out lane)
            for at in sorted(at for at in waiting if at > now):
                self._scheduler.wake(at)
        by_key = {key(item): item for item in items}
        return Recorded(
            result.inserted,
            result.duplicates,
            [(by_key[k], error) for k, error in result.rejected.items()],
            {d["_id"]: d for d in documents if d["_id"] in stored},
            requests={d["_id"]: stamped[n][0] for n, d in enumerate(documents) if d["_id"] in stored},
        )


def _differs(doc: Mapping[str, Any], item: Accepted) -> str | None:
    """The first field in which `item` differs from what was recorded as `doc`, in the caller's terms (a
    campaign's body for a campaign); None for a true repeat."""
    sent = item.sent
    if doc.get(REQUEST_HASH) == request_hash(sent):
        return None  # the usual repeat (a redelivery, a retry): no need to read the stored request
    try:
        stored = orjson.loads(doc["request"])
        if item.recorded_as is not None:
            stored = item.recorded_as.form_of({**doc, "request": stored})
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return None  # nothing readable to compare with (never written so): taken as a repeat, as before
    return differing_field(stored, doc.get(REQUEST_HASH), sent)
