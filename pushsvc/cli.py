"""Command line: `pushsvc serve | dev | hash-key | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys

from pushsvc.config import ConfigError, Settings, load_settings


def _load(path: str | None) -> Settings:
    path = path or os.environ.get("PUSHSVC_CONFIG")
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"pushsvc: configuration error: {exc}", file=sys.stderr)
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
    }
    try:
        parse_request(request, frozenset(settings.apps))
    except RequestError as exc:
        print(f"pushsvc send: {exc}", file=sys.stderr)
        return 2

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.kafka.requests_topic, orjson.dumps(request),
                                         key=request["id"].encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    print(json.dumps({"published": request["id"], "topic": settings.kafka.requests_topic}))
    return 0


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
    send.set_defaults(func=cmd_send)
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
