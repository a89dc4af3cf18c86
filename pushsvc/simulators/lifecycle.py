"""How every simulator starts, serves and stops: in a test (``async with``) and as a process (``python -m``).

In a test, each peer is a ``Peer``: ``start`` listens (port 0: any free one, read back from ``peer.port``),
``stop`` ends every connection, and ``async with`` does both around the block.

As a process (``python -m pushsvc.simulators.<name>``, which `pushsvc dev` runs and waits for on its port), each
provider's standalone.py says only what is its own: its flags besides the common ones, files to write before
listening, and the line that says it is listening (``announce``: the tests and the dev stack's logs read it).

    def main(argv: list[str] | None = None) -> None:
        run(command_line("APNs simulator: ...", default_port=8443), _serve, argv)

    async def _serve(args: argparse.Namespace) -> None:
        peer = ApnsPeer(ssl_context=server_context(args, ["h2"]), host=args.host, port=args.port, ...)
        await serve(peer, lambda: say("apns_peer_listening", endpoint=peer.endpoint))

Ctrl-C stops the peer and exits quietly. SIGTERM (how `pushsvc dev` stops it) keeps Python's default, ending the
process at once: every line a peer logs is flushed as it is written, so nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, Self


class Peer(ABC):
    """A simulator's server, started and stopped the same way whatever it speaks."""

    @abstractmethod
    async def start(self) -> None:
        """Listen on the peer's host and port (0: any free port, which ``start`` stores in ``port``)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop listening and end every connection, hung requests included; nothing if not started."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def command_line(description: str, default_port: int) -> argparse.ArgumentParser:
    """The flags every simulator takes (--host, --port, --cert, --key); a simulator adds its own to it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    return parser


def server_context(args: argparse.Namespace, alpn: list[str]) -> ssl.SSLContext:
    """A TLS server context with --cert and --key, offering the ``alpn`` protocols."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(alpn)
    return context


async def serve(peer: Peer, announce: Callable[[], None]) -> None:
    """Listen, ``announce`` it (once the port is open, so a reader of the line can connect), serve until
    cancelled, and stop."""
    async with peer:
        announce()
        await asyncio.Event().wait()  # the peer serves from its own tasks; this only waits for Ctrl-C


def run(
    parser: argparse.ArgumentParser,
    serve_args: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
) -> None:
    """The process: parse ``argv`` (None: the command line), then ``serve_args`` until Ctrl-C."""
    args = parser.parse_args(argv)
    # Ctrl-C stops it even when started with SIGINT ignored, as a shell without job control starts background
    # commands (and CI runners their jobs): Python keeps an inherited SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # asyncio.run cancels the serve on Ctrl-C, so the peer stops, and then raises KeyboardInterrupt: no traceback.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_args(args))


def say(event: str, **fields: object) -> None:
    """One JSON line on stdout, ``{"event": event, **fields}``, flushed at once: a reader may be waiting for it."""
    print(json.dumps({"event": event, **fields}), flush=True)
