"""The FCM simulator as a process for ``pushsvc dev``: accepts every bearer token and JWT, logs one JSON line
per message.

    python -m pushsvc.simulators.fcm --port 8443 --cert server.pem --key server.key \
        [--write-service-account sa.json --project demo-project]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from pushsvc.simulators.fcm.peer import FcmPeer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FCM HTTP v1 simulator for pushsvc development")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument(
        "--write-service-account",
        metavar="PATH",
        help="also write a service-account JSON whose token_uri points here",
    )
    parser.add_argument("--project", default="demo-project")
    args = parser.parse_args(argv)
    peer = FcmPeer(
        cert_file=args.cert,
        key_file=args.key,
        host=args.host,
        port=args.port,
        accept_any_auth=True,
        log_messages=True,
    )
    if args.write_service_account:
        path = peer.write_service_account(args.write_service_account, project_id=args.project)
        sys.stderr.write(f"service account written to {path}\n")
    sys.stderr.write(f"FCM peer listening on {peer.base_url} (h2 + http/1.1)\n")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(peer.serve_forever())
