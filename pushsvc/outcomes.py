"""Events on Kafka `push.outcomes`, keyed by the notification's key (`<app>:<id>`): the outcome event, one per
notification that reached a final state, and the receipt event, one per new receipt (`"type": "receipt"`;
outcome events carry no `type`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from pushsvc import tracing
from pushsvc.logs import get_logger
from pushsvc.store.counts import counted_by_platform, split_counts
from pushsvc.store.events import EventStore
from pushsvc.store.records import NotificationRecord
from pushsvc.tracing import TraceContext

log = get_logger(__name__)

# How long an acknowledged event's `event_pending` mark waits for a finish write to carry it (Announcer).
ACKNOWLEDGED_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class OutcomeEvent:
    notification_id: str  # the notification's key (`_id`): also the Kafka message key
    request_id: str  # the producer's id, unique within `app`
    app: str
    state: str
    counts: Mapping[str, int]
    error: str | None
    finished_at: float  # as stored on the notification (the database's clock): the same on every resend
    dry_run: bool = False
    # The context it is published under (its `outcome.publish` span's parent; tracing off, the `traceparent`
    # header as is): the finish's span, or the notification's stored context (the sweep's resend).
    trace: TraceContext | None = None

    @classmethod
    def of(
        cls,
        record: NotificationRecord,
        state: str,
        counts: Mapping[str, int],
        error: str | None,
        finished_at: float,
        trace: TraceContext | None = None,
    ) -> OutcomeEvent:
        """`trace`: the finish span's context; by default the span current here (a finish's), else the stored."""
        # A dry run is marked on its document; its per-platform counts say so too (a document read without
        # the mark, e.g. by an older projection).
        dry_run = record.dry_run or counted_by_platform(counts)
        trace = trace or tracing.current() or record.trace
        return cls(record.id, record.request_id, record.app, state, counts, error, finished_at, dry_run, trace)

    def encode(self) -> bytes:
        # Every counter, also for a notification recorded before one was added (the contract requires them).
        split = split_counts(self.counts)
        event: dict[str, Any] = {
            "id": self.request_id,
            "app": self.app,
            "state": self.state,
            "counts": split.plain,
            "error": self.error,
            "finished_at": self.finished_at,
        }
        if self.dry_run:
            event["dry_run"] = {"by_platform": split.by_platform}
        if split.by_variant:
            event["variants"] = split.by_variant
        return orjson.dumps(event)


@dataclass(frozen=True)
class ReceiptEvent:
    """A new receipt (store/receipts.py), published once when it is recorded: best effort (a broker failure is
    logged and the receipt stays counted; a repeat of it is a duplicate, never published again)."""

    notification_id: str  # the notification's key (`_id`): the Kafka key, as for its outcome event
    request_id: str
    app: str
    event: str  # received | opened
    at: float  # when the device says it happened (epoch seconds)
    recorded_at: float
    dimensions: Mapping[str, str]  # platform, locale (and what else the funnel is broken down by)
    implied: bool  # a "received" recorded because the device reported "opened"
    # Receipts come from apps' backends after the push's trace has ended: published under no trace.
    trace: TraceContext | None = None

    def encode(self) -> bytes:
        return orjson.dumps({
            "type": "receipt",
            "id": self.request_id,
            "app": self.app,
            "event": self.event,
            "at": self.at,
            "recorded_at": self.recorded_at,
            "platform": self.dimensions.get("platform"),
            "locale": self.dimensions.get("locale"),
            **({"variant": self.dimensions["variant"]} if "variant" in self.dimensions else {}),
            "implied": self.implied,
        })


class Event(Protocol):
    """What goes on `push.outcomes`: keyed by the notification's key."""

    @property
    def notification_id(self) -> str: ...

    @property
    def trace(self) -> TraceContext | None: ...

    @property
    def app(self) -> str: ...

    def encode(self) -> bytes: ...


class OutcomePublisher:
    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Send all events at once (the producer batches them); returns the notification keys the broker
        acknowledged."""
        if self._producer is None or not events:
            return []
        spans = [self._span(event) for event in events]
        try:
            futures = [
                await self._producer.send(
                    self._topic, event.encode(), key=event.notification_id.encode(),
                    headers=_headers(tracing.carried(span) or event.trace),
                )
                for event, span in zip(events, spans, strict=True)
            ]
        except Exception as exc:  # not even queued (producer closed): all stay pending for the sweep
            log.warning("outcome_events_not_published", count=len(events), error=str(exc))
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            return []
        acknowledged: list[str] = []
        results = await asyncio.gather(*futures, return_exceptions=True)
        for event, result, span in zip(events, results, spans, strict=True):
            if isinstance(result, BaseException):
                span.set_status(Status(StatusCode.ERROR, type(result).__name__))
            span.end()
            if isinstance(result, BaseException):
                # MongoDB keeps event_pending set, so the outcome sweep publishes it later.
                log.warning("outcome_event_not_published", notification_id=event.notification_id, error=str(result))
            else:
                acknowledged.append(event.notification_id)
        return acknowledged

    def _span(self, event: Event) -> Span:
        """An outcome event's `outcome.publish` span (its context is the record's `traceparent`)."""
        if not tracing.enabled():  # no attributes built for a span that is not made (every event, tracing off)
            return INVALID_SPAN
        attributes = {
            "messaging.system": "kafka", "messaging.operation.type": "send", "messaging.destination.name": self._topic,
            "pushsvc.app": event.app, "pushsvc.notification.id": event.notification_id[:200],
        }
        if isinstance(event, OutcomeEvent):
            return tracing.start("outcome.publish", event.trace, SpanKind.PRODUCER,
                                 {**attributes, "pushsvc.state": event.state})
        # A receipt comes after its push's trace has ended: no span, rather than a new root trace per receipt.
        return INVALID_SPAN


def _headers(trace: TraceContext | None) -> list[tuple[str, bytes]] | None:
    return None if trace is None else trace.kafka_headers()


class Announcer:
    """Publishes outcome events, and clears `event_pending` on the notifications whose event the broker
    acknowledged.

    The clearing is deferred and batched: the batch lane's next finish carries it in its own bulk write
    (`take`; one write per batch for both), and `flush` (every ACKNOWLEDGED_FLUSH_SECONDS, and at shutdown)
    writes what no finish took. Best effort throughout: the notifications are final already, and one whose
    mark is lost keeps `event_pending`, so the sweep of some replica publishes its event again
    (at-least-once). Acknowledged marks wait far less than the sweep's grace, so a live replica's events are
    not repeated.
    """

    def __init__(self, publisher: OutcomePublisher, events: EventStore) -> None:
        self._publisher = publisher
        self._events = events
        self._acknowledged: list[str] = []

    async def announce(self, events: Sequence[OutcomeEvent]) -> int:
        """Publish events; never raises (a failure must not stop the work that announces: a batch would
        otherwise cancel its other sends). Returns how many the broker acknowledged."""
        if not events:
            return 0
        try:
            published = await self._publisher.publish_many(events)
        except Exception as exc:
            log.warning("outcome_events_deferred", count=len(events), error=f"{type(exc).__name__}: {exc}"[:200])
            return 0
        self._acknowledged.extend(published)
        return len(published)

    def take(self) -> list[str]:
        """The acknowledged notifications not marked yet, for a write that marks them (see `give_back`)."""
        taken, self._acknowledged = self._acknowledged, []
        return taken

    def give_back(self, ids: Sequence[str]) -> None:
        """Marks a write took and did not make: the next write or flush makes them."""
        self._acknowledged.extend(ids)

    async def flush(self) -> None:
        """Mark what no finish took; a failure leaves them to the sweep."""
        ids = self.take()
        if not ids:
            return
        try:
            await self._events.mark_published(ids)
        except Exception as exc:
            log.warning("outcome_marks_deferred", count=len(ids), error=f"{type(exc).__name__}: {exc}"[:200])
        except BaseException:  # cancelled (shutdown): the final flush makes them
            self.give_back(ids)
            raise


class OutcomeSweeper:
    """Publishes outcome events a replica did not get to (killed between "done" and the Kafka send).

    At-least-once: a consumer may see an event twice (e.g. the sweep and a slow runner both send it) and
    should key on the notification id.
    """

    def __init__(
        self,
        events: EventStore,
        announcer: Announcer,
        grace_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._announcer = announcer
        # The runner announces right after finishing; only events older than this are the sweep's.
        self._grace = grace_seconds
        self._clock = clock

    async def sweep_once(self, limit: int = 500) -> int:
        documents = await self._events.pending(self._clock() - self._grace, limit)
        # Read as records, like every notification an event is made of, so there is one way to name one, read
        # its counts and tell a dry run; the projection leaves the request out: an event needs who it is and
        # how it ended, not what it sent.
        records = [NotificationRecord.from_document(doc) for doc in documents]
        events = [OutcomeEvent.of(r, r.state, r.counts, r.error, r.finished_at) for r in records]
        published = await self._announcer.announce(events)
        await self._announcer.flush()
        if published:
            log.info("outcome_events_swept", published=published)
        return published
