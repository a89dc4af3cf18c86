"""The Huawei Push Kit simulator as a process for ``pushsvc dev``: any client credentials get a token; one JSON
line on stdout per request received, token requests included, secrets never printed.

    python -m pushsvc.simulators.hms --port 8443 --cert server.pem --key server.key [--app-id 100000001]
"""

from __future__ import annotations

import argparse
import sys

from pushsvc.simulators.hms.peer import DEFAULT_APP_ID, HmsPeer
from pushsvc.simulators.lifecycle import command_line, run, serve


def main(argv: list[str] | None = None) -> None:
    parser = command_line("Huawei Push Kit simulator for pushsvc development", default_port=8443)
    parser.add_argument("--app-id", default=DEFAULT_APP_ID, help="the app id of /v1/{app_id}/messages:send")
    run(parser, _serve, argv)


async def _serve(args: argparse.Namespace) -> None:
    peer = HmsPeer(cert_file=args.cert, key_file=args.key, host=args.host, port=args.port, app_id=args.app_id,
                   accept_any_auth=True, log_messages=True)

    def announce() -> None:
        sys.stderr.write(
            f"HMS peer listening on {peer.base_url} (h2 + http/1.1): token endpoint {peer.token_url}, "
            f"messages at {peer.base_url}/v1/{args.app_id}/messages:send\n"
        )

    await serve(peer, announce)
