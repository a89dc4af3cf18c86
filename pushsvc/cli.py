"""Command line: `pushsvc serve | dev | send | topics create | devices import | hash-key | check-config`.

Expected failures (no configuration, a bad config file, Kafka or MongoDB down or refusing) end a command with
one line on stderr saying what failed and what to check, and exit code 2; anything else is a bug and keeps
its traceback. Commands that talk to Kafka or MongoDB wait seconds for them, not the clients' default half
minute (CLI_NETWORK_TIMEOUT_MS, CLI_KAFKA_DEADLINE_SECONDS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import unquote

from pushsvc.config import ENV_PREFIX, ConfigError, KafkaSettings, MongoSettings, Settings, load_settings

if TYPE_CHECKING:
    from pymongo.errors import PyMongoError

    from pushsvc.device_contract import DeviceRecord
    from pushsvc.store.devices import DeviceStore

T = TypeVar("T")

CONFIG_VARIABLE = "PUSHSVC_CONFIG"
# The longest the CLI waits on Kafka or MongoDB for one connection or one request. The clients' defaults suit a
# long-running service that rides out a restart of its dependencies (aiokafka: 40 s per request; PyMongo: 30 s
# of server selection); a person at a terminal wants "it is down" within seconds. MongoDB's server selection
# and connect timeouts are capped at this (the config may set less); a bulk write of a large import batch keeps
# mongodb.socket_timeout_ms, as it may legitimately take longer once connected.
CLI_NETWORK_TIMEOUT_MS = 5000
# The most one Kafka command (send, topics create) may take in all: a few requests, and several bootstrap
# servers are tried one after the other. Also the bound for `topics create`, whose admin client
# (pushsvc/topics.py) keeps aiokafka's 40 s request timeout.
CLI_KAFKA_DEADLINE_SECONDS = 15.0


class CliFailure(Exception):
    """An expected failure of a command: main() prints its one line after "pushsvc <command>: " and exits 2."""


def _config_path(given: str | None) -> str | None:
    # An empty PUSHSVC_CONFIG (a template that left it blank) means unset, not the current directory.
    return given or os.environ.get(CONFIG_VARIABLE) or None


def _has_env_settings() -> bool:
    """Whether the environment sets any setting (PUSHSVC_A__B=value; empty values set nothing)."""
    return any(name.startswith(ENV_PREFIX) and name != CONFIG_VARIABLE and value for name, value in os.environ.items())


def _load(path: str | None) -> Settings:
    path = _config_path(path)
    if path is None and not _has_env_settings():
        # Without a file or a single PUSHSVC_* setting the first problem found would be "kafka: required",
        # which tells nothing of what is missing.
        print(f"pushsvc: no configuration: pass --config or set {CONFIG_VARIABLE}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_settings(path)
    except ConfigError as exc:
        # The form docs/runbook.md tells on-call to look for; several problems: all of them, one line each.
        if len(exc.problems) == 1:
            print(f"pushsvc: configuration error: {exc.problems[0]}", file=sys.stderr)
        else:
            print(f"pushsvc: {len(exc.problems)} configuration error(s):", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _source(key: str, config: str | None) -> str:
    """Where setting `key` came from, for a message that says what to check: the environment variable that
    overrides it, else the config file."""
    variable = ENV_PREFIX + key.upper().replace(".", "__")
    if os.environ.get(variable):
        return f"{key} from {variable}"
    path = _config_path(config)
    return f"{key} in {path}" if path else key


# What a client's error says happened -> (what the one line says, what to check); the first match wins. The
# texts are those of asyncio, socket and ssl errors (aiokafka passes them on) and of PyMongo's server
# selection. "{service}": "the broker" or "MongoDB"; "{tls}": the settings of its TLS; "{seconds}": the wait.
_NETWORK_REASONS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("Errno 111", "refused", "Connect call failed"), "connection refused", "is {service} running?"),
    (("Name or service not known", "nodename nor servname", "name resolution", "getaddrinfo", "No address"),
     "host name not found", "is the host name right?"),
    (("Errno 101", "Network is unreachable", "Errno 113", "No route to host"), "no route to the host",
     "is the address right?"),
    (("Authentication failed", "SASL", "auth failed"), "authentication failed", "check the user name and password"),
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"), "the server's TLS certificate is not trusted",
     "check {tls}"),
    (("SSL", "TLS", "wrong version number"), "TLS handshake failed", "does {service} speak TLS there? check {tls}"),
    (("timed out", "TimeoutError", "Timeout"), "no answer within {seconds:g} s",
     "is the address right and {service} healthy?"),
)


def _network_reason(text: str, service: str, tls: str, seconds: float) -> str:
    """"<what happened>; <what to check>" for a client's error text; the text itself (on one line) if unknown."""
    for needles, reason, hint in _NETWORK_REASONS:
        if any(needle in text for needle in needles):
            return f"{reason}; {hint}".format(service=service, tls=tls, seconds=seconds)
    return _one_line(text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _scrub(text: str, secrets_: list[str | None]) -> str:
    """`text` with every secret (as given and URL-decoded) replaced by ***: error texts may quote a URI.
    Whatever the secret's length: a message garbled by a one-letter password is better than one that shows it."""
    for secret in secrets_:
        for form in {secret, unquote(secret)} if secret else ():
            text = text.replace(form, "***")
    return text


def _run(coro: object) -> None:
    try:
        import uvloop  # faster event loop where available; asyncio's own otherwise

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


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
            raise CliFailure(_kafka_failure(exc, held.errors(), kafka, source)) from exc


def _kafka_failure(exc: BaseException, logged: list[BaseException], kafka: KafkaSettings, source: str) -> str:
    from aiokafka.errors import KafkaConnectionError

    # "Unable to bootstrap" says no more than that: why the last server failed is in what aiokafka logged.
    cause = logged[-1] if isinstance(exc, KafkaConnectionError) and logged else exc
    deadline = cause is exc and type(exc) is TimeoutError  # asyncio.timeout's, not a client's own
    seconds = CLI_KAFKA_DEADLINE_SECONDS if deadline else CLI_NETWORK_TIMEOUT_MS / 1000
    tls = "kafka.security_protocol and kafka.ssl_ca_file"
    reason = _network_reason(f"{type(cause).__name__}: {cause}", "the broker", tls, seconds)
    where = f"Kafka at {kafka.bootstrap_servers} ({source})"
    if isinstance(exc, KafkaConnectionError | OSError):
        return _scrub(f"cannot reach {where}: {reason}", [kafka.sasl_password])
    return _scrub(f"{where} did not complete the request: {reason}", [kafka.sasl_password])


def _cli_mongo(mongo: MongoSettings) -> MongoSettings:
    """`mongo` with its waits for a server capped at CLI_NETWORK_TIMEOUT_MS (the config may set less)."""
    return dataclasses.replace(
        mongo,
        server_selection_timeout_ms=min(mongo.server_selection_timeout_ms, CLI_NETWORK_TIMEOUT_MS),
        connect_timeout_ms=min(mongo.connect_timeout_ms, CLI_NETWORK_TIMEOUT_MS),
    )


def _mongo_address(uri: str) -> str:
    """The URI's scheme and hosts, for messages: the user and password masked, the path and options (which may
    carry credentials too, e.g. authMechanismProperties) left out."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return "(a mongodb.uri that is not a URI)"
    _, at, hosts = _mongo_netloc(rest).rpartition("@")
    return f"{scheme}://{'***@' if at else ''}{hosts}"


def _mongo_password(uri: str) -> str | None:
    userinfo, _, _ = _mongo_netloc(uri.partition("://")[2]).rpartition("@")
    return userinfo.partition(":")[2] or None


def _mongo_netloc(rest: str) -> str:
    """[user:password@]host[:port][,host...] of a URI without its scheme (urlsplit refuses several hosts)."""
    return re.split(r"[/?]", rest, maxsplit=1)[0]


def _mongo_failure(exc: PyMongoError, mongo: MongoSettings, source: str) -> str:
    from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, ServerSelectionTimeoutError

    where = f"MongoDB at {_mongo_address(mongo.uri)} ({source})"
    text = _scrub(str(exc), [mongo.uri, _mongo_password(mongo.uri)])
    if isinstance(exc, ConfigurationError):  # the URI itself, before any connection (InvalidURI, SRV lookup)
        return f"cannot use {source}: {_one_line(text)}"
    if isinstance(exc, OperationFailure):
        if exc.code == 18:  # AuthenticationFailed
            return f"{where} refused the login: authentication failed; check the user name and password"
        return f"{where} refused the operation: {_one_line(text)} (code {exc.code})"
    # Server selection says "<host>: <error> (configured timeouts: ...), Timeout: 5.0s, Topology Description: ..."
    reached = text.split(", Timeout: ")[0]
    reached = re.sub(r" \(configured timeouts: [^)]*\)", "", reached)
    tls = "the tls options of mongodb.uri"
    if isinstance(exc, ServerSelectionTimeoutError):
        reason = _network_reason(reached, "MongoDB", tls, mongo.server_selection_timeout_ms / 1000)
        return f"cannot reach {where}: {reason}"
    if isinstance(exc, ConnectionFailure):  # once connected: a read that outlasted mongodb.socket_timeout_ms
        reason = _network_reason(reached, "MongoDB", tls, mongo.socket_timeout_ms / 1000)
        return f"lost the connection to {where}: {reason}"
    return f"{where} failed: {type(exc).__name__}: {_one_line(text)}"


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
            raise CliFailure(f"--{name.replace('_', '-')} must be at least 1")
    plan = TopicPlan(args.partitions, args.replication_factor, args.dlq_retention_days, args.outcomes_retention_days)
    source = _source("kafka.bootstrap_servers", args.config)
    print(json.dumps(_run_kafka(lambda: create_topics(settings.kafka, plan), settings.kafka, source)))
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
        raise CliFailure(str(exc)) from None
    source = _source("kafka.bootstrap_servers", args.config)
    _run_kafka(lambda: _publish(settings.kafka, request), settings.kafka, source)
    print(json.dumps({"published": request["id"], "topic": settings.kafka.requests_topic}))
    return 0


async def _publish(kafka: KafkaSettings, request: dict[str, Any]) -> None:
    import orjson
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**_kafka_options(kafka), acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(kafka.requests_topic, orjson.dumps(request), key=request["id"].encode())
    finally:
        # After a failed start too: a producer never stopped prints "Unclosed AIOKafkaProducer" at exit.
        await producer.stop()


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


PROGRESS_EVERY_ROWS = 100


def _progress(done: int, total: int, rows: int, errors: int) -> None:
    """A progress bar on stderr (stdout carries the JSON summary)."""
    width = 30
    share = min(1.0, done / total) if total else 1.0
    bar = "#" * int(share * width)
    print(f"\r[{bar:<{width}}] {share:6.1%}  {rows} rows  {errors} errors", end="", file=sys.stderr, flush=True)


class RowFailure(NamedTuple):
    """A row of the import file that was not imported, and why."""

    line: int
    field: str
    reason: str


@dataclass
class ImportSummary:
    """What `devices import` did so far: the JSON summary at the end, and what a failure midway reports."""

    rows: int = 0
    imported: int = 0
    inserted: int = 0
    updated: int = 0
    failures: list[RowFailure] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        return {"rows": self.rows, "imported": self.imported, "inserted": self.inserted, "updated": self.updated,
                "errors": len(self.failures)}


def cmd_devices_import(args: argparse.Namespace) -> int:
    """Validate each row like POST /v1/devices and upsert in batches straight into MongoDB."""
    import json

    from pymongo.errors import PyMongoError

    settings = _load(args.config)
    if not os.path.isfile(args.file):
        raise CliFailure(f"no such file: {args.file}")
    with open(args.file, "rb") as counting:
        total_lines = sum(1 for _ in counting)
    mongo = _cli_mongo(settings.mongodb)
    summary = ImportSummary()
    try:
        asyncio.run(_import_devices(settings, mongo, args, total_lines, summary))
    except PyMongoError as exc:
        failure = _mongo_failure(exc, mongo, _source("mongodb.uri", args.config))
        if summary.imported:  # stored before the failure; each row is an upsert by token, so a rerun is safe
            failure += f" ({summary.imported} devices were imported before it; importing again is safe)"
        raise CliFailure(failure) from exc
    for row in summary.failures:
        print(f"line {row.line}: {row.field}: {row.reason}", file=sys.stderr)
    print(json.dumps(summary.as_json()))
    return 1 if summary.failures else 0


async def _import_devices(settings: Settings, mongo: MongoSettings, args: argparse.Namespace, total_lines: int,
                          summary: ImportSummary) -> None:
    """Connect, then import the file's rows into MongoDB, counting into `summary`."""
    from pushsvc.scheduling.clock import ServerClock
    from pushsvc.store.database import Database
    from pushsvc.store.devices import DeviceStore

    database = Database.connect(mongo)
    try:
        # registered_at on the database's clock, like registrations through the API of any replica.
        clock = ServerClock(database.server_time)
        await clock.sync()
        store = DeviceStore(database, clock.now)
        await database.ensure_indexes()
        await _import_rows(store, settings, args, total_lines, summary)
    finally:
        await database.close()


async def _import_rows(store: DeviceStore, settings: Settings, args: argparse.Namespace, total_lines: int,
                       summary: ImportSummary) -> None:
    """Every row validated; the valid ones upserted `args.batch_size` at a time."""
    from pushsvc.config import web_allowed_hosts

    known_apps, web_hosts = frozenset(settings.apps), web_allowed_hosts(settings)
    batch: list[DeviceRecord] = []
    try:
        for number, row in read_device_rows(args.file, args.format):
            summary.rows += 1
            device = _validate_row(number, row, known_apps, web_hosts)
            if isinstance(device, RowFailure):
                summary.failures.append(device)
            else:
                batch.append(device)
            if len(batch) >= args.batch_size:
                await _upsert(store, batch, summary)
            if summary.rows % PROGRESS_EVERY_ROWS == 0:
                _progress(number, total_lines, summary.rows, len(summary.failures))
        await _upsert(store, batch, summary)
    except BaseException:
        if summary.rows >= PROGRESS_EVERY_ROWS:
            print(file=sys.stderr)  # ends the progress bar: the failure's message gets a line of its own
        raise
    _progress(total_lines, total_lines, summary.rows, len(summary.failures))
    print(file=sys.stderr)


def _validate_row(number: int, row: Any, known_apps: frozenset[str],
                  web_hosts: dict[str, frozenset[str]]) -> DeviceRecord | RowFailure:
    # The registration contract itself, shared with POST /v1/devices (not the HTTP handler module).
    from pushsvc.device_contract import parse_device
    from pushsvc.model import RequestError

    if isinstance(row, ImportRowError):
        return RowFailure(number, row.field, row.reason)
    try:
        return parse_device(row, known_apps, web_hosts)
    except RequestError as exc:
        return RowFailure(number, exc.field, exc.reason)


async def _upsert(store: DeviceStore, batch: list[DeviceRecord], summary: ImportSummary) -> None:
    """One bulk write of the batch (emptied after)."""
    if batch:
        inserted, updated = await store.upsert_many(batch)
        summary.inserted += inserted
        summary.updated += updated
        summary.imported += len(batch)
        batch.clear()


def cmd_dev(args: argparse.Namespace) -> int:
    from pushsvc.dev.stack import run_dev_stack

    return run_dev_stack(args.dir, args.http_port)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none to show: None (the option is
    unset unless given; its help says what happens then) and a flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _command(sub: Any, name: str, help_: str, func: Callable[[argparse.Namespace], int],
             config: bool = True) -> argparse.ArgumentParser:
    """A subcommand parser that shows defaults in its help, with --config unless it needs no settings."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_,
                                                     formatter_class=_HelpFormatter)
    if config:
        parser.add_argument("--config", help=f"YAML config file (default: ${CONFIG_VARIABLE})")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushsvc", description="Push-notification delivery service",
                                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "serve", "run the service (Kafka consumer, scheduler, dispatch, HTTP API)", cmd_serve)
    _command(sub, "check-config", "validate a config file and exit", cmd_check_config)
    hash_key = _command(sub, "hash-key", "make an API key and the hash to put in config", cmd_hash_key, config=False)
    hash_key.add_argument("--key", help="hash this key instead of generating one")
    send = _command(sub, "send", "publish a test notification request to Kafka", cmd_send)
    send.add_argument("--app", required=True, help="the app (tenant) the request is for")
    send.add_argument("--token", action="append", help="device token (repeatable)")
    send.add_argument("--user", action="append", help="user id (repeatable)")
    send.add_argument("--tag", action="append", help="segment tag, any of (repeatable)")
    send.add_argument("--title", default="Hello from pushsvc", help="the notification's title")
    send.add_argument("--body", default="It works.", help="the notification's body")
    send.add_argument("--id", help="request id (default: a new UUID)")
    send.add_argument("--dry-run", action="store_true", help="build and check every device's push, deliver nothing")
    topics = sub.add_parser("topics", help="Kafka topic tools", formatter_class=_HelpFormatter)
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    creator = _command(topics_sub, "create", "create the requests, DLQ and outcomes topics if missing",
                       cmd_topics_create)
    creator.add_argument("--partitions", type=int, default=12, help="of the requests topic (DLQ: 1/4, outcomes: 1/2)")
    creator.add_argument("--replication-factor", type=int, default=3, help="copies of each partition")
    creator.add_argument("--dlq-retention-days", type=int, default=14, help="how long the DLQ keeps a request")
    creator.add_argument("--outcomes-retention-days", type=int, default=7, help="how long outcome events are kept")
    devices = sub.add_parser("devices", help="device registry tools", formatter_class=_HelpFormatter)
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    importer = _command(devices_sub, "import", "validate and upsert devices from CSV or JSONL straight into MongoDB",
                        cmd_devices_import)
    importer.add_argument("file", help="CSV (header row; tags and opt_out separated by ';') or JSONL")
    importer.add_argument("--format", choices=["csv", "jsonl"], help="(default: from the file extension)")
    importer.add_argument("--batch-size", type=int, default=500, help="rows per bulk_write")
    dev = _command(sub, "dev", "run a local stack: broker, MongoDB wire server, provider simulators, pushsvc",
                   cmd_dev, config=False)
    dev.add_argument("--dir", default=".dev", help="where the stack keeps its files")
    dev.add_argument("--http-port", type=int, default=8080, help="port of pushsvc's HTTP API")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliFailure as failure:
        words = (args.command, getattr(args, "topics_command", None), getattr(args, "devices_command", None))
        print(f"pushsvc {' '.join(word for word in words if word)}: {failure}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
