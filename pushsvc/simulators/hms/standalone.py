"""The Huawei Push Kit simulator as a process for ``pushsvc dev``: any client credentials get a token; one JSON
line on stdout per request received, token requests included, secrets never printed.

    python -m pushsvc.simulators.hms --port 8443 --cert server.pem --key server.key [--app-id 100000001]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from pushsvc.simulators.hms.peer import DEFAULT_APP_ID, HmsPeer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Huawei Push Kit simulator for pushsvc development")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID, help="the app id of /v1/{app_id}/messages:send")
    args = parser.parse_args(argv)
    peer = HmsPeer(cert_file=args.cert, key_file=args.key, host=args.host, port=args.port, app_id=args.app_id,
                   accept_any_auth=True, log_messages=True)
    sys.stderr.write(
        f"HMS peer listening on {peer.base_url} (h2 + http/1.1): token endpoint {peer.token_url}, "
        f"messages at {peer.base_url}/v1/{args.app_id}/messages:send\n"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(peer.serve_forever())
