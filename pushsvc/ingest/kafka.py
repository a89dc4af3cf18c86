"""The `push.requests` consumer: validate, dead-letter bad input, record in MongoDB, then commit.

At-least-once: offsets are committed only after the batch's requests are recorded in MongoDB and its
dead letters acknowledged by the broker. MongoDB or broker outages hold the batch and retry it; a request
MongoDB refuses for good (a per-document write error that no retry can fix) is dead-lettered instead
(reason ``store_rejected``), so it cannot wedge its partition. A crash before the commit redelivers the
batch; the request id (the notification's _id) absorbs the duplicates. Input can never stop the consumer:
anything that is not a valid request goes to the DLQ with the reason, and so does a request reusing a recorded
id with a different body (reason ``conflict``, naming the field: the first request stands).

A crash of the loop (a bug; ``app._supervise`` restarts it) must not skip the batch it held: the fetch
position is already past that batch, so every (re)start first moves the assigned partitions back to their
committed offsets.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from pymongo.errors import BulkWriteError

from pushsvc import metrics, tracing
from pushsvc.config import KafkaSettings
from pushsvc.ingest.intake import Accepted, AppProviders, Intake, Rejection, decode
from pushsvc.kafka_options import client_options
from pushsvc.logs import get_logger
from pushsvc.tracing import TraceContext

log = get_logger(__name__)

# A dead letter keeps the original value so nothing is lost, except for oversize input, where we keep a
# prefix plus the source coordinates (the full value stays on the source topic for its retention).
DLQ_TOO_LARGE_PREFIX_BYTES = 64 * 1024
# The producer's request limit leaves this much beyond the largest accepted request for the envelope.
ENVELOPE_ROOM_BYTES = 16 * 1024
# Keys and headers are not bounded by kafka.max_message_bytes; a dead letter keeps this much of them.
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_HEADER_BYTES = 8 * 1024
LAG_REFRESH_SECONDS = 2.0
# How long a consumer whose fetching died is given to leave the group before a new one joins.
CONSUMER_STOP_SECONDS = 10.0
# How long one poll waits for records when there are none (records end it at once; stop() cancels it). It sets
# how often an idle loop checks the fetcher and the lag gauge; each idle round costs CPU for nothing.
POLL_SECONDS = 2.0
# aiokafka's background fetcher wakes this often with nothing to do (default 0.2 s); it is woken anyway by
# fetched data, consumed records and assignment changes, so a longer tick only saves idle wake-ups.
FETCHER_TICK_MS = 1000


def producer_request_limit(settings: KafkaSettings) -> int:
    """max_request_size for the producer: the largest accepted request plus room for its dead-letter envelope."""
    return max(1_048_576, settings.max_message_bytes + ENVELOPE_ROOM_BYTES)


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter(
    record: ConsumerRecord, rejection: Rejection, limit: int, trace: TraceContext | None = None
) -> DeadLetter:
    """The DLQ record for a rejected message, never larger than ``limit`` bytes, carrying `trace` (the context
    of its intake span) as its `traceparent`, in place of the producer's, even when other headers are dropped.

    A dead letter that cannot be sent holds its partition forever (sending is retried like an outage), and
    quoting a value in JSON can make it six times larger (control characters become \\u00XX): over the
    limit, the envelope keeps a prefix, as for oversize input. Oversized keys and headers are cut too.
    """
    key = record.key
    key_truncated = key is not None and len(key) > DLQ_MAX_KEY_BYTES
    if key is not None and key_truncated:
        key = key[:DLQ_MAX_KEY_BYTES]
    original_headers = list(record.headers or ())
    headers_dropped = sum(len(name) + len(value or b"") for name, value in original_headers) > DLQ_MAX_HEADER_BYTES
    kept = [] if headers_dropped else original_headers
    headers = [*tracing.with_context(kept, trace), ("pushsvc-dlq-reason", rejection.reason.encode())]
    budget = limit - (len(key or b"") + sum(len(n) + len(v or b"") for n, v in headers) + 1024)  # + record overhead
    value = record.value or b""
    encoded = _envelope(record, rejection, value, rejection.reason == "too_large", key, key_truncated, headers_dropped)
    if len(encoded) > budget:
        encoded = _envelope(record, rejection, value, True, key, key_truncated, headers_dropped)
    return DeadLetter(key, encoded, headers)


def _envelope(
    record: ConsumerRecord,
    rejection: Rejection,
    value: bytes,
    truncated: bool,
    key: bytes | None,
    key_truncated: bool,
    headers_dropped: bool,
) -> bytes:
    if truncated:
        value = value[:DLQ_TOO_LARGE_PREFIX_BYTES]
    envelope: dict[str, object] = {
        "reason": rejection.reason,
        "error": rejection.detail,
        "field": rejection.field,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
            "key": key.decode("utf-8", "replace") if key else None,
        },
        "value_truncated": truncated,
        "failed_at": time.time(),
    }
    if key_truncated:
        envelope["key_truncated"] = True
    if headers_dropped:
        envelope["headers_dropped"] = True
    try:
        envelope["value"] = value.decode("utf-8")
    except UnicodeDecodeError:
        envelope["value_base64"] = base64.b64encode(value).decode()
    return orjson.dumps(envelope)


def _intake_span(record: ConsumerRecord) -> tuple[Span, TraceContext | None]:
    """The intake span of one record (a child of its `traceparent` header, a new root without one) and the
    context its notification or dead letter carries on; tracing off: no span, the producer's context as is."""
    received = TraceContext.of_headers(record.headers)
    if not tracing.enabled():
        return INVALID_SPAN, received
    span = tracing.start("intake.record", received, SpanKind.CONSUMER, {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "pushsvc.source": "kafka",
    })
    return span, tracing.carried(span) or received  # not sampled: the producer's context, passed on


def _describe(span: Span, item: Accepted) -> None:
    """Who a request is, on its intake span (never its tokens or message)."""
    if span.is_recording():
        span.set_attributes({"pushsvc.app": item.request.app, "pushsvc.request_id": item.request.id[:200],
                             "pushsvc.lane": item.lane})


def _brief(exc: Exception) -> str:
    """An error for the log without the documents a BulkWriteError carries (they hold device tokens)."""
    if isinstance(exc, BulkWriteError):
        codes = sorted({e.get("code") for e in exc.details.get("writeErrors", [])} - {None})
        concern = " and write concern errors" if exc.details.get("writeConcernErrors") else ""
        return f"BulkWriteError: write error codes {codes}{concern}"
    return f"{type(exc).__name__}: {exc}"[:300]


def fetcher_failure(consumer: AIOKafkaConsumer) -> str | None:
    """Why the consumer's background fetching ended while the consumer runs, or None while it goes on.

    aiokafka (0.14) fetches in a background task; when that task dies (seen: uvloop's RuntimeError writing to a
    connection the broker had just closed, logged as "Unexpected error in fetcher routine"), nothing reports
    it: getmany returns nothing for ever while the member keeps heartbeating, so its partitions stall with no
    rebalance. The task is only reachable through a private attribute; if a release renames it, this check
    reports None (no worse than before) rather than failing the loop.
    """
    task = getattr(getattr(consumer, "_fetcher", None), "error_future", None)
    if not isinstance(task, asyncio.Future) or not task.done():
        return None
    error = None if task.cancelled() else task.exception()
    return _brief(error) if isinstance(error, Exception) else "cancelled"


class KafkaIngest:
    def __init__(
        self,
        settings: KafkaSettings,
        intake: Intake,
        producer: AIOKafkaProducer,
        known_apps: frozenset[str],
        providers: AppProviders | None = None,
    ) -> None:
        self._settings = settings
        self._intake = intake
        self._producer = producer
        self._known_apps = known_apps
        self._providers = providers
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._lag_refreshed = 0.0
        self._poll: asyncio.Future[Mapping[TopicPartition, list[ConsumerRecord]]] | None = None
        self._traced: dict[int, tuple[Span, TraceContext | None]] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self._settings.requests_topic,
            **client_options(self._settings),
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.max_poll_records,
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
            consumer_timeout_ms=FETCHER_TICK_MS,
            # Fetch messages a bit over the accepted size so oversize ones reach the DLQ instead of stalling.
            max_partition_fetch_bytes=max(1_048_576, self._settings.max_message_bytes * 2),
        )
        await self._consumer.start()

    async def run(self) -> None:
        """Consume until stopped. Joins the group first if not a member yet: readiness does not wait for the
        join (a rejoin after a restart takes up to the session timeout while API and dispatch already serve)."""
        consumer = await self._joined()
        while not self._stopping.is_set():
            failure = fetcher_failure(consumer)
            if failure is not None:
                log.error("consumer_fetcher_stopped", error=failure)
                consumer = await self._replace_consumer()
                continue
            batch = await self._next_batch(consumer)
            if batch is None:
                break  # stopping, with no batch in hand
            if batch:
                if not await self._handle(batch):
                    break  # stopping before the batch was recorded: leave it uncommitted
                await self._commit(consumer, batch)
            await self._refresh_lag(consumer)

    async def _next_batch(
        self, consumer: AIOKafkaConsumer
    ) -> Mapping[TopicPartition, list[ConsumerRecord]] | None:
        """Records fetched (empty after POLL_SECONDS without any), or None when stop() ended the wait: the
        poll runs as its own task so that a stop does not wait out an idle poll."""
        poll = asyncio.ensure_future(
            consumer.getmany(timeout_ms=int(POLL_SECONDS * 1000), max_records=self._settings.max_poll_records)
        )
        self._poll = poll
        try:
            await asyncio.wait({poll})
        except asyncio.CancelledError:
            poll.cancel()
            raise
        finally:
            self._poll = None
        return None if poll.cancelled() else poll.result()

    async def _joined(self) -> AIOKafkaConsumer:
        """The consumer (started if there is none), moved back to the committed offsets."""
        if self._consumer is None:
            await self.start()
        assert self._consumer is not None
        await self._rewind_to_committed(self._consumer)
        return self._consumer

    async def _replace_consumer(self) -> AIOKafkaConsumer:
        """A new group member in place of one whose fetching died: its partitions go to a rebalance and are
        read again from the committed offsets (what was fetched but not committed repeats; request ids absorb
        it). A start that fails raises, and the supervisor's restart of the loop starts a consumer again."""
        old, self._consumer = self._consumer, None
        metrics.KAFKA_CONSUMER_RESTARTS.inc()
        if old is not None:
            try:
                await asyncio.wait_for(old.stop(), CONSUMER_STOP_SECONDS)
            except Exception as exc:  # a dead member that cannot leave cleanly is expired by the group
                log.warning("consumer_stop_failed", error=_brief(exc))
        return await self._joined()

    @staticmethod
    async def _rewind_to_committed(consumer: AIOKafkaConsumer) -> None:
        """Fetch again from the committed offsets: after a crash, records past them were fetched, not recorded.

        Not ``seek_to_committed``: it leaves a partition alone when nothing was committed yet (or 0 was),
        which would skip a first batch lost to a crash; such a partition starts over from its beginning,
        as ``auto_offset_reset="earliest"`` did. Before the first assignment there is nothing to move.
        """
        for tp in consumer.assignment():
            offset = await consumer.committed(tp)
            if offset is None or offset < 0:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)

    async def stop(self) -> None:
        """Stop after the current batch is recorded and committed; then leave the group."""
        self._stopping.set()
        if self._poll is not None:
            # Waiting for records, none in hand: end the wait. Records it fetched stay uncommitted; they are
            # read again by whoever takes the partition, as after any stop between batches.
            self._poll.cancel()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def membership(self) -> dict[str, object]:
        """What the consumer serves now, for /readyz (informational, not a readiness condition)."""
        if self._consumer is None:
            return {"state": "starting", "partitions": 0}
        partitions = len(self._consumer.assignment())
        return {"state": "assigned" if partitions else "joining_or_idle", "partitions": partitions}

    async def _handle(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> bool:
        accepted: list[Accepted] = []
        source: dict[int, ConsumerRecord] = {}  # id(accepted item) -> its record, to dead-letter store rejections
        dead: list[tuple[ConsumerRecord, Rejection]] = []
        # id(record) -> its intake span and the context its notification or dead letter carries on.
        self._traced = {}
        for records in batch.values():
            for record in records:
                span, trace = _intake_span(record)
                self._traced[id(record)] = (span, trace)
                outcome = decode(record.value, self._settings.max_message_bytes, self._known_apps, self._providers)
                if isinstance(outcome, Rejection):
                    dead.append((record, outcome))
                else:
                    if trace is not None:  # decode gives none; replace (~3 us: a new item) only to add one
                        outcome = replace(outcome, trace=trace)
                    _describe(span, outcome)
                    accepted.append(outcome)
                    source[id(outcome)] = record
        try:
            return await self._record(accepted, source, dead)
        finally:
            for span, _ in self._traced.values():
                span.end()
            self._traced = {}

    async def _record(
        self,
        accepted: list[Accepted],
        source: dict[int, ConsumerRecord],
        dead: list[tuple[ConsumerRecord, Rejection]],
    ) -> bool:
        recorded = False
        delay = 0.2
        while True:
            try:
                await self._send_dead_letters(dead)
                dead = []  # sent: a retry of the MongoDB step must not send them twice
                if not recorded:
                    result = await self._intake.record(accepted, source="kafka")
                    recorded = True
                    # Refused by MongoDB for good: retrying would hold the partition forever.
                    dead = [(source[id(item)], Rejection("store_rejected", error)) for item, error in result.rejected]
                    # A recorded id with another body: no caller to answer, so the new record is kept in the DLQ
                    # (the recorded one stands and is sent once).
                    dead += [
                        (source[id(item)], Rejection("conflict", conflict.detail, conflict.field))
                        for item, conflict in result.conflicts
                    ]
                    await self._send_dead_letters(dead)
                    dead = []
                return True
            except Exception as exc:  # MongoDB or broker outage: hold the batch, retry, never skip it
                if self._stopping.is_set():
                    return False
                log.warning("ingest_retry", error=_brief(exc), retry_in=round(delay, 2))
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return False
                except TimeoutError:
                    delay = min(delay * 2, 5.0)

    async def _send_dead_letters(self, dead: list[tuple[ConsumerRecord, Rejection]]) -> None:
        if not dead:
            return
        futures = []
        limit = producer_request_limit(self._settings)
        for record, rejection in dead:
            span, trace = self._traced.get(id(record), (INVALID_SPAN, None))
            if span.is_recording():
                span.set_attributes({"pushsvc.intake.result": "dead_letter", "pushsvc.dlq.reason": rejection.reason})
            letter = dead_letter(record, rejection, limit, trace)
            futures.append(
                await self._producer.send(
                    self._settings.dlq_topic, letter.value, key=letter.key, headers=letter.headers
                )
            )
        await asyncio.gather(*futures)
        for record, rejection in dead:
            metrics.DLQ_MESSAGES.labels(rejection.reason).inc()
            metrics.REQUESTS_INGESTED.labels("kafka", "invalid").inc()
            log.info(
                "request_dead_lettered",
                reason=rejection.reason,
                error=rejection.detail,
                partition=record.partition,
                offset=record.offset,
            )

    async def _commit(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[ConsumerRecord]]
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partition away: the new owner re-reads from the last commit and the
            # request ids absorb the repeat.
            log.warning("commit_failed", error=str(exc))

    async def _refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._lag_refreshed < LAG_REFRESH_SECONDS:
            return
        self._lag_refreshed = now
        for tp in consumer.assignment():
            # A rebalance during the awaits below can revoke a partition of this snapshot: highwater() then
            # fails an assertion and position() raises. A gauge must never crash the consume loop.
            try:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                position = await consumer.position(tp)
            except (KafkaError, AssertionError):
                continue
            metrics.KAFKA_CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
