"""The Web Push simulator as a process for ``pushsvc dev``: checks and delivers, one JSON line per push with its
decrypted payload on stdout.

    python -m pushsvc.simulators.webpush --port 8446 --cert server.pem --key server.key \
        [--write-subscription web-subscription.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

from pushsvc.simulators.webpush.peer import WebPushPeer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Web Push simulator: decrypts, checks VAPID and logs every push")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8446)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument(
        "--write-subscription",
        metavar="PATH",
        help="create a subscription and write its PushSubscription JSON here (before the port opens)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    peer = WebPushPeer(ssl_context=context, host=args.host, port=args.port, log_json=True)
    if args.write_subscription:
        if not args.port:
            raise SystemExit("--write-subscription needs a fixed --port (the endpoint names it)")
        _write_json(Path(args.write_subscription), peer.subscribe().as_json())
        print(json.dumps({"event": "webpush_subscription_written", "file": args.write_subscription}), flush=True)
    async with peer:
        print(json.dumps({"event": "webpush_peer_listening", "endpoint": peer.base_url}), flush=True)
        await asyncio.Event().wait()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))
