"""The APNs simulator as a process for ``pushsvc dev``: delivers everything, one JSON line per notification.

    python -m pushsvc.simulators.apns --port 8443 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl

from pushsvc.simulators.apns.peer import ApnsPeer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="APNs simulator: accepts and logs every notification")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2"])
    peer = ApnsPeer(ssl_context=context, host=args.host, port=args.port, auth="none", log_json=True)
    async with peer:
        print(json.dumps({"event": "apns_peer_listening", "endpoint": peer.endpoint}), flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))
