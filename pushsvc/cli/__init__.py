"""Command line: `pushsvc serve | dev | send | topics create | devices import | hash-key | check-config`.

Expected failures (no configuration, a bad config file, Kafka or MongoDB down or refusing) end a command with
one line on stderr saying what failed and what to check, and exit code 2; anything else is a bug and keeps
its traceback. Commands that talk to Kafka or MongoDB wait seconds for them, not the clients' default half
minute (CLI_NETWORK_TIMEOUT_MS, CLI_KAFKA_DEADLINE_SECONDS).

This module: the parser, main() and the small commands. Beside it: configuration.py (the settings a command
runs with), failures.py (CliFailure, the bounds and the one-line messages for Kafka and MongoDB),
kafka_commands.py (send, topics create) and devices_import.py (devices import).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable
from typing import Any

from pushsvc.cli.configuration import CONFIG_VARIABLE, load
from pushsvc.cli.devices_import import cmd_devices_import
from pushsvc.cli.failures import CliFailure
from pushsvc.cli.kafka_commands import cmd_send, cmd_topics_create


def _run(coro: object) -> None:
    try:
        import uvloop  # faster event loop where available; asyncio's own otherwise

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load(args.config)
    from pushsvc.logs import configure_logging
    from pushsvc.service import serve

    configure_logging(settings.log_level)
    _run(serve(settings))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load(args.config)
    print(f"ok: {len(settings.apps)} app(s): {', '.join(sorted(settings.apps))}")
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    from pushsvc.api.auth import hash_api_key

    key = args.key or secrets.token_urlsafe(32)
    if not args.key:
        print(f"api key (give this to the client, it is not stored): {key}")
    print(f"hash (put this in config api_keys[].hash): {hash_api_key(key)}")
    return 0


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
    _add_send(sub)
    _add_topics(sub)
    _add_devices(sub)
    dev = _command(sub, "dev", "run a local stack: broker, MongoDB wire server, provider simulators, pushsvc",
                   cmd_dev, config=False)
    dev.add_argument("--dir", default=".dev", help="where the stack keeps its files")
    dev.add_argument("--http-port", type=int, default=8080, help="port of pushsvc's HTTP API")
    return parser


def _add_send(sub: Any) -> None:
    send = _command(sub, "send", "publish a test notification request to Kafka", cmd_send)
    send.add_argument("--app", required=True, help="the app (tenant) the request is for")
    send.add_argument("--token", action="append", help="device token (repeatable)")
    send.add_argument("--user", action="append", help="user id (repeatable)")
    send.add_argument("--tag", action="append", help="segment tag, any of (repeatable)")
    send.add_argument("--title", default="Hello from pushsvc", help="the notification's title")
    send.add_argument("--body", default="It works.", help="the notification's body")
    send.add_argument("--id", help="request id (default: a new UUID)")
    send.add_argument("--dry-run", action="store_true", help="build and check every device's push, deliver nothing")
    send.add_argument("--trace", action="store_true",
                      help="send a sampled W3C traceparent (a new trace) and print its trace id: the push is traced "
                           "whatever tracing.sample_ratio says, if the replicas export traces")


def _add_topics(sub: Any) -> None:
    topics = sub.add_parser("topics", help="Kafka topic tools", formatter_class=_HelpFormatter)
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    creator = _command(topics_sub, "create", "create the requests, DLQ and outcomes topics if missing",
                       cmd_topics_create)
    creator.add_argument("--partitions", type=int, default=12, help="of the requests topic (DLQ: 1/4, outcomes: 1/2)")
    creator.add_argument("--replication-factor", type=int, default=3, help="copies of each partition")
    creator.add_argument("--dlq-retention-days", type=int, default=14, help="how long the DLQ keeps a request")
    creator.add_argument("--outcomes-retention-days", type=int, default=7, help="how long outcome events are kept")


def _add_devices(sub: Any) -> None:
    devices = sub.add_parser("devices", help="device registry tools", formatter_class=_HelpFormatter)
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    importer = _command(devices_sub, "import", "validate and upsert devices from CSV or JSONL straight into MongoDB",
                        cmd_devices_import)
    importer.add_argument("file", help="CSV (header row; tags and opt_out separated by ';') or JSONL")
    importer.add_argument("--format", choices=["csv", "jsonl"], help="(default: from the file extension)")
    importer.add_argument("--batch-size", type=int, default=500, help="rows per bulk_write")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliFailure as failure:
        words = (args.command, getattr(args, "topics_command", None), getattr(args, "devices_command", None))
        print(f"pushsvc {' '.join(word for word in words if word)}: {failure}", file=sys.stderr)
        return 2
