"""The APNs simulator as a process for ``pushsvc dev``: delivers everything, one JSON line per notification.

    python -m pushsvc.simulators.apns --port 8443 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse

from pushsvc.simulators.apns.peer import ApnsPeer
from pushsvc.simulators.lifecycle import command_line, run, say, serve, server_context


def main(argv: list[str] | None = None) -> None:
    run(command_line("APNs simulator: accepts and logs every notification", default_port=8443), _serve, argv)


async def _serve(args: argparse.Namespace) -> None:
    context = server_context(args, ["h2"])
    peer = ApnsPeer(ssl_context=context, host=args.host, port=args.port, auth="none", log_json=True)
    await serve(peer, lambda: say("apns_peer_listening", endpoint=peer.endpoint))
