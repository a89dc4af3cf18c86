"""Command line: `pushsvc serve | dev | send | topics create | devices import | hash-key | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any

from pushsvc.config import ConfigError, Settings, load_settings


def _load(path: str | None) -> Settings:
    path = path or os.environ.get("PUSHSVC_CONFIG")
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"pushsvc: {len(exc.problems)} configuration error(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from exc


def _run(coro: object) -> None:
    try:
        import uvloop  # faster event loop where available; asyncio's own otherwise

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from pushsvc.app import serve
    from pushsvc.logging import configure_logging

    configure_logging(settings.log_level)
    _run(serve(settings))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    print(f"ok: {len(settings.apps)} app(s): {', '.join(sorted(settings.apps))}")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    """Idempotent: prints topic -> created | exists as JSON."""
    import json

    from pushsvc.topics import TopicPlan, create_topics

    settings = _load(args.config)
    for name in ("partitions", "replication_factor", "dlq_retention_days", "outcomes_retention_days"):
        if getattr(args, name) < 1:
            print(f"pushsvc topics create: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    plan = TopicPlan(args.partitions, args.replication_factor, args.dlq_retention_days, args.outcomes_retention_days)
    print(json.dumps(asyncio.run(create_topics(settings.kafka, plan))))
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    from pushsvc.api.auth import hash_api_key

    key = args.key or secrets.token_urlsafe(32)
    if not args.key:
        print(f"api key (give this to the client, it is not stored): {key}")
    print(f"hash (put this in config api_keys[].hash): {hash_api_key(key)}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """Publish one test request to the requests topic, exactly as a producing service would."""
    import json
    import uuid

    import orjson
    from aiokafka import AIOKafkaProducer

    from pushsvc.kafka_options import client_options
    from pushsvc.model import RequestError, parse_request

    settings = _load(args.config)
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
        print(f"pushsvc send: {exc}", file=sys.stderr)
        return 2

    async def publish() -> None:
        producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.kafka.requests_topic, orjson.dumps(request),
                                         key=request["id"].encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    print(json.dumps({"published": request["id"], "topic": settings.kafka.requests_topic}))
    return 0


CSV_LIST_SEPARATOR = ";"
CSV_LIST_FIELDS = ("tags", "opt_out")
# A web device's subscription in CSV: three flat columns (JSONL carries the `subscription` object as it is).
CSV_SUBSCRIPTION_COLUMNS = {"endpoint": ("endpoint",), "p256dh": ("keys", "p256dh"), "auth": ("keys", "auth")}


def read_device_rows(path: str, fmt: str | None) -> Iterator[tuple[int, Any]]:
    """(line number, record) per row; a row that cannot be read is an ImportRowError, never skipped or fatal.

    Bytes that are not UTF-8 cost their row only: the file is decoded with surrogateescape and a row holding
    any is reported (MongoDB could not store it either). JSONL lines go through orjson: strict JSON (no NaN,
    no lone surrogate escapes) with bounded nesting, where json.loads raised RecursionError on deep input.
    A CSV line the csv module cannot read (e.g. a field over its size limit) is a row error too.
    """
    import csv

    import orjson

    fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
        if fmt == "jsonl":
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                if not _is_utf8(line):
                    yield number, ImportRowError("line", "not valid UTF-8")
                    continue
                try:
                    yield number, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield number, ImportRowError("line", f"not valid JSON: {exc}")
            return
        reader = csv.DictReader(file)
        failed_at = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if reader.line_num == failed_at:  # no progress: the reader is stuck, the rest is unreadable
                    yield reader.line_num, ImportRowError("line", f"not readable as CSV from here on: {exc}")
                    return
                failed_at = reader.line_num
                yield reader.line_num, ImportRowError("line", f"not readable as CSV: {exc}")
                continue
            if None in row:
                yield reader.line_num, ImportRowError("line", "more cells than header columns")
                continue
            if not all(_is_utf8(key) and (value is None or _is_utf8(value)) for key, value in row.items()):
                yield reader.line_num, ImportRowError("line", "not valid UTF-8")
                continue
            record: dict[str, Any] = {}
            for key, value in row.items():
                if not value:
                    continue
                if key in CSV_LIST_FIELDS:
                    record[key] = [v.strip() for v in value.split(CSV_LIST_SEPARATOR) if v.strip()]
                elif key in CSV_SUBSCRIPTION_COLUMNS:
                    *parents, name = CSV_SUBSCRIPTION_COLUMNS[key]
                    place = record.setdefault("subscription", {})
                    for parent in parents:
                        place = place.setdefault(parent, {})
                    place[name] = value
                else:
                    record[key] = value
            yield reader.line_num, record


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes under surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ImportRowError:
    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


def _progress(done: int, total: int, rows: int, errors: int) -> None:
    """A progress bar on stderr (stdout carries the JSON summary)."""
    width = 30
    share = min(1.0, done / total) if total else 1.0
    bar = "#" * int(share * width)
    print(f"\r[{bar:<{width}}] {share:6.1%}  {rows} rows  {errors} errors", end="", file=sys.stderr, flush=True)


def cmd_devices_import(args: argparse.Namespace) -> int:
    """Validate each row like POST /v1/devices and upsert in batches straight into MongoDB."""
    import json

    from pushsvc.api.devices import parse_device
    from pushsvc.config import web_allowed_hosts
    from pushsvc.model import RequestError
    from pushsvc.scheduling.clock import ServerClock
    from pushsvc.store.database import Database
    from pushsvc.store.devices import DeviceRecord, DeviceStore

    settings = _load(args.config)
    known_apps = frozenset(settings.apps)
    web_hosts = web_allowed_hosts(settings)
    if not os.path.isfile(args.file):
        print(f"pushsvc devices import: no such file: {args.file}", file=sys.stderr)
        return 2
    with open(args.file, "rb") as counting:
        total_lines = sum(1 for _ in counting)

    async def run() -> dict[str, Any]:
        database = Database.connect(settings.mongodb)
        # registered_at on the database's clock, like registrations through the API of any replica.
        clock = ServerClock(database.server_time)
        await clock.sync()
        store = DeviceStore(database, clock.now)
        await database.ensure_indexes()
        summary: dict[str, Any] = {"rows": 0, "imported": 0, "inserted": 0, "updated": 0, "errors": []}
        batch: list[DeviceRecord] = []

        async def flush() -> None:
            if batch:
                inserted, updated = await store.upsert_many(batch)
                summary["inserted"] += inserted
                summary["updated"] += updated
                summary["imported"] += len(batch)
                batch.clear()

        try:
            for number, row in read_device_rows(args.file, args.format):
                summary["rows"] += 1
                if isinstance(row, ImportRowError):
                    summary["errors"].append({"line": number, "field": row.field, "error": row.reason})
                else:
                    try:
                        batch.append(parse_device(row, known_apps, web_hosts))
                    except RequestError as exc:
                        summary["errors"].append({"line": number, "field": exc.field, "error": exc.reason})
                if len(batch) >= args.batch_size:
                    await flush()
                if summary["rows"] % 100 == 0:
                    _progress(number, total_lines, summary["rows"], len(summary["errors"]))
            await flush()
            _progress(total_lines, total_lines, summary["rows"], len(summary["errors"]))
            print(file=sys.stderr)
        finally:
            await database.close()
        return summary

    summary = asyncio.run(run())
    for error in summary["errors"]:
        print(f"line {error['line']}: {error['field']}: {error['error']}", file=sys.stderr)
    print(json.dumps({**summary, "errors": len(summary["errors"])}))
    return 1 if summary["errors"] else 0


def cmd_dev(args: argparse.Namespace) -> int:
    from pushsvc.dev.stack import run_dev_stack

    return run_dev_stack(args.dir, args.http_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushsvc", description="Push-notification delivery service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (Kafka consumer, scheduler, dispatch, HTTP API)")
    serve.add_argument("--config", help="YAML config file (default: $PUSHSVC_CONFIG)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", help="YAML config file (default: $PUSHSVC_CONFIG)")
    check.set_defaults(func=cmd_check_config)
    hash_key = sub.add_parser("hash-key", help="make an API key and the hash to put in config")
    hash_key.add_argument("--key", help="hash this key instead of generating one")
    hash_key.set_defaults(func=cmd_hash_key)
    send = sub.add_parser("send", help="publish a test notification request to Kafka")
    send.add_argument("--config", help="YAML config file (default: $PUSHSVC_CONFIG)")
    send.add_argument("--app", required=True)
    send.add_argument("--token", action="append", help="device token (repeatable)")
    send.add_argument("--user", action="append", help="user id (repeatable)")
    send.add_argument("--tag", action="append", help="segment tag, any of (repeatable)")
    send.add_argument("--title", default="Hello from pushsvc")
    send.add_argument("--body", default="It works.")
    send.add_argument("--id", help="request id (default: a new UUID)")
    send.add_argument("--dry-run", action="store_true", help="build and check every device's push, deliver nothing")
    send.set_defaults(func=cmd_send)
    topics = sub.add_parser("topics", help="Kafka topic tools")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    creator = topics_sub.add_parser("create", help="create the requests, DLQ and outcomes topics if missing")
    creator.add_argument("--config", help="YAML config file (default: $PUSHSVC_CONFIG)")
    creator.add_argument("--partitions", type=int, default=12, help="of the requests topic (DLQ: 1/4, outcomes: 1/2)")
    creator.add_argument("--replication-factor", type=int, default=3)
    creator.add_argument("--dlq-retention-days", type=int, default=14)
    creator.add_argument("--outcomes-retention-days", type=int, default=7)
    creator.set_defaults(func=cmd_topics_create)
    devices = sub.add_parser("devices", help="device registry tools")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    importer = devices_sub.add_parser(
        "import", help="validate and upsert devices from CSV or JSONL straight into MongoDB"
    )
    importer.add_argument("file", help="CSV (header row; tags and opt_out separated by ';') or JSONL")
    importer.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file extension")
    importer.add_argument("--batch-size", type=int, default=500, help="rows per bulk_write")
    importer.add_argument("--config", help="YAML config file (default: $PUSHSVC_CONFIG)")
    importer.set_defaults(func=cmd_devices_import)
    dev = sub.add_parser(
        "dev", help="run a local stack: broker, MongoDB wire server, provider simulators, pushsvc"
    )
    dev.add_argument("--dir", default=".dev", help="where the stack keeps its files")
    dev.add_argument("--http-port", type=int, default=8080)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
