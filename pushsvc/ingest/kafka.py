"""The `push.requests` consumer: validate, dead-letter bad input, record in MongoDB, then commit.

At-least-once: offsets are committed only after the batch's requests are recorded in MongoDB and its
dead letters acknowledged by the broker. A crash before the commit redelivers the batch; the request id
(the notification's _id) absorbs the duplicates. Input can never stop the consumer: anything that is
not a valid request goes to the DLQ with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from pushsvc import metrics
from pushsvc.config import KafkaSettings
from pushsvc.ingest.intake import Accepted, Intake, Rejection, decode
from pushsvc.logging import get_logger

log = get_logger(__name__)

# A dead letter keeps the original value so nothing is lost, except for oversize input, where we keep a
# prefix plus the source coordinates (the full value stays on the source topic for its retention).
DLQ_TOO_LARGE_PREFIX_BYTES = 64 * 1024
LAG_REFRESH_SECONDS = 2.0


def dead_letter(record: ConsumerRecord, rejection: Rejection) -> bytes:
    value: bytes = record.value or b""
    truncated = rejection.reason == "too_large"
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
            "key": record.key.decode("utf-8", "replace") if record.key else None,
        },
        "value_truncated": truncated,
        "failed_at": time.time(),
    }
    try:
        envelope["value"] = value.decode("utf-8")
    except UnicodeDecodeError:
        envelope["value_base64"] = base64.b64encode(value).decode()
    return orjson.dumps(envelope)


class KafkaIngest:
    def __init__(
        self,
        settings: KafkaSettings,
        intake: Intake,
        producer: AIOKafkaProducer,
        known_apps: frozenset[str],
    ) -> None:
        self._settings = settings
        self._intake = intake
        self._producer = producer
        self._known_apps = known_apps
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._lag_refreshed = 0.0

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self._settings.requests_topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.max_poll_records,
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
            # Fetch messages a bit over the accepted size so oversize ones reach the DLQ instead of stalling.
            max_partition_fetch_bytes=max(1_048_576, self._settings.max_message_bytes * 2),
        )
        await self._consumer.start()

    async def run(self) -> None:
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=self._settings.max_poll_records)
            if batch:
                if not await self._handle(batch):
                    break  # stopping before the batch was recorded: leave it uncommitted
                await self._commit(consumer, batch)
            await self._refresh_lag(consumer)

    async def stop(self) -> None:
        """Stop after the current batch is recorded and committed; then leave the group."""
        self._stopping.set()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def check(self) -> None:
        """Readiness: the broker answers a metadata request."""
        assert self._consumer is not None
        await self._consumer.topics()

    async def _handle(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> bool:
        accepted: list[Accepted] = []
        dead: list[tuple[ConsumerRecord, Rejection]] = []
        for records in batch.values():
            for record in records:
                outcome = decode(record.value, self._settings.max_message_bytes, self._known_apps)
                if isinstance(outcome, Rejection):
                    dead.append((record, outcome))
                else:
                    accepted.append(outcome)
        delay = 0.2
        while True:
            try:
                await self._send_dead_letters(dead)
                dead = []  # sent: a retry of the MongoDB step must not send them twice
                await self._intake.record(accepted, source="kafka")
                return True
            except Exception as exc:  # MongoDB or broker outage: hold the batch, retry, never skip it
                if self._stopping.is_set():
                    return False
                log.warning("ingest_retry", error=str(exc), retry_in=round(delay, 2))
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return False
                except TimeoutError:
                    delay = min(delay * 2, 5.0)

    async def _send_dead_letters(self, dead: list[tuple[ConsumerRecord, Rejection]]) -> None:
        if not dead:
            return
        futures = []
        for record, rejection in dead:
            headers = [*list(record.headers or ()), ("pushsvc-dlq-reason", rejection.reason.encode())]
            futures.append(
                await self._producer.send(
                    self._settings.dlq_topic, dead_letter(record, rejection), key=record.key, headers=headers
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
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            metrics.KAFKA_CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
