"""`pushsvc send` and `pushsvc topics create`: the commands that talk to Kafka, each bounded by
CLI_KAFKA_DEADLINE_SECONDS in all and CLI_NETWORK_TIMEOUT_MS per request; a failure of Kafka is one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from pushsvc.cli.configuration import load, setting_source
from pushsvc.cli.failures import CLI_KAFKA_DEADLINE_SECONDS, CLI_NETWORK_TIMEOUT_MS, CliFailure, kafka_failure
from pushsvc.config import KafkaSettings

T = TypeVar("T")


class _HeldRecords(logging.Handler):
    """What a library logs while a command runs, held back: aiokafka logs why each bootstrap server failed
    (the reason our one line gives) and would otherwise print it on stderr as second and third lines."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[BaseException]:
        """The exceptions the held records were about, oldest first."""
        return [arg for record in self.records if isinstance(record.args, tuple)
                for arg in record.args if isinstance(arg, BaseException)]


@contextlib.contextmanager
def _held_logs(name: str) -> Iterator[_HeldRecords]:
    """Hold logger `name`'s records; on success pass them on as if never held, on failure drop them."""
    logger = logging.getLogger(name)
    held, propagate = _HeldRecords(), logger.propagate
    logger.addHandler(held)
    logger.propagate = False
    failed = False
    try:
        yield held
    except BaseException:
        failed = True
        raise
    finally:
        logger.removeHandler(held)
        logger.propagate = propagate
        for record in () if failed else held.records:
            logging.getLogger(record.name).handle(record)


def _kafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The service's client options (TLS, SASL) with the CLI's request timeout (connects included)."""
    from pushsvc.kafka_options import client_options

    return {**client_options(kafka), "request_timeout_ms": CLI_NETWORK_TIMEOUT_MS}


def _run_kafka(work: Callable[[], Awaitable[T]], kafka: KafkaSettings, source: str) -> T:
    """Run one command's Kafka work within CLI_KAFKA_DEADLINE_SECONDS; a failure of Kafka is a CliFailure."""
    from aiokafka.errors import KafkaError

    async def bounded() -> T:
        async with asyncio.timeout(CLI_KAFKA_DEADLINE_SECONDS):
            return await work()

    with _held_logs("aiokafka") as held:
        try:
            return asyncio.run(bounded())
        except (KafkaError, OSError) as exc:  # OSError: TimeoutError (the deadline), TLS, unreadable SASL file
            raise CliFailure(kafka_failure(exc, held.errors(), kafka, source)) from exc


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Idempotent: prints topic -> created | exists as JSON."""
    import json

    from pushsvc.topics import TopicPlan, create_topics

    settings = load(args.config)
    for name in ("partitions", "replication_factor", "dlq_retention_days", "outcomes_retention_days"):
        if getattr(args, name) < 1:
            raise CliFailure(f"--{name.replace('_', '-')} must be at least 1")
    plan = TopicPlan(args.partitions, args.replication_factor, args.dlq_retention_days, args.outcomes_retention_days)
    source = setting_source("kafka.bootstrap_servers", args.config)
    created = _run_kafka(lambda: create_topics(settings.kafka, plan, request_timeout_ms=CLI_NETWORK_TIMEOUT_MS),
                         settings.kafka, source)
    print(json.dumps(created))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Publish one test request to the requests topic, exactly as a producing service would."""
    import json
    import secrets
    import uuid

    from pushsvc.model import RequestError, parse_request

    settings = load(args.config)
    target = {"tokens": args.token} if args.token else {"users": args.user} if args.user else None
    if target is None and args.tag:
        target = {"segment": {"tags_any": args.tag}}
    request = {
        "id": args.id or f"cli-{uuid.uuid4()}",
        "app": args.app,
        "target": target,
        "message": {"title": args.title, "body": args.body},
        **({"options": {"dry_run": True}} if args.dry_run else {}),
    }
    try:
        parse_request(request, frozenset(settings.apps))
    except RequestError as exc:
        raise CliFailure(str(exc)) from None
    # A new trace, sampled: the replicas record every push whose parent is sampled (pushsvc/tracing.py).
    trace_id = secrets.token_hex(16) if args.trace else None
    headers = [("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01".encode())] if trace_id else []
    source = setting_source("kafka.bootstrap_servers", args.config)
    _run_kafka(lambda: _publish(settings.kafka, request, headers), settings.kafka, source)
    print(json.dumps({"published": request["id"], "topic": settings.kafka.requests_topic,
                      **({"trace_id": trace_id} if trace_id else {})}))
    return 0


async def _publish(kafka: KafkaSettings, request: dict[str, Any], headers: list[tuple[str, bytes]]) -> None:
    import orjson
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**_kafka_options(kafka), acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(
            kafka.requests_topic, orjson.dumps(request), key=request["id"].encode(), headers=headers
        )
    finally:
        # After a failed start too: a producer never stopped prints "Unclosed AIOKafkaProducer" at exit.
        await producer.stop()
