"""The FCM simulator as a process for ``pushsvc dev``: accepts every bearer token and JWT, logs one JSON line
per message.

    python -m pushsvc.simulators.fcm --port 8443 --cert server.pem --key server.key \
        [--write-service-account sa.json --project demo-project]
"""

from __future__ import annotations

import argparse
import sys

from pushsvc.simulators.fcm.peer import FcmPeer
from pushsvc.simulators.lifecycle import command_line, run, serve


def main(argv: list[str] | None = None) -> None:
    parser = command_line("FCM HTTP v1 simulator for pushsvc development", default_port=8443)
    parser.add_argument(
        "--write-service-account",
        metavar="PATH",
        help="also write a service-account JSON whose token_uri points here",
    )
    parser.add_argument("--project", default="demo-project")
    run(parser, _serve, argv)


async def _serve(args: argparse.Namespace) -> None:
    peer = FcmPeer(cert_file=args.cert, key_file=args.key, host=args.host, port=args.port, accept_any_auth=True,
                   log_messages=True)
    if args.write_service_account:
        path = peer.write_service_account(args.write_service_account, project_id=args.project)
        sys.stderr.write(f"service account written to {path}\n")
    await serve(peer, lambda: sys.stderr.write(f"FCM peer listening on {peer.base_url} (h2 + http/1.1)\n"))
