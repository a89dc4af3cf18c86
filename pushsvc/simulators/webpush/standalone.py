"""The Web Push simulator as a process for ``pushsvc dev``: checks and delivers, one JSON line per push with its
decrypted payload on stdout.

    python -m pushsvc.simulators.webpush --port 8446 --cert server.pem --key server.key \
        [--write-subscription web-subscription.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pushsvc.simulators.lifecycle import command_line, run, say, serve, server_context
from pushsvc.simulators.webpush.peer import WebPushPeer


def main(argv: list[str] | None = None) -> None:
    parser = command_line("Web Push simulator: decrypts, checks VAPID and logs every push", default_port=8446)
    parser.add_argument(
        "--write-subscription",
        metavar="PATH",
        help="create a subscription and write its PushSubscription JSON here (before the port opens)",
    )
    run(parser, _serve, argv)


async def _serve(args: argparse.Namespace) -> None:
    peer = WebPushPeer(ssl_context=server_context(args, ["http/1.1"]), host=args.host, port=args.port, log_json=True)
    if args.write_subscription:
        if not args.port:
            raise SystemExit("--write-subscription needs a fixed --port (the endpoint names it)")
        _write_json(Path(args.write_subscription), peer.subscribe().as_json())
        say("webpush_subscription_written", file=args.write_subscription)
    await serve(peer, lambda: say("webpush_peer_listening", endpoint=peer.base_url))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
