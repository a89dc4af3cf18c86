"""The server side the FCM and Huawei Push Kit simulators share: one TLS port, HTTP/2 or HTTP/1.1 by ALPN.

Both providers take messages over HTTP/2 and OAuth tokens over HTTP/1.1 (google-auth's ``requests``, the HMS
adapter's token fetch), so one listener speaks both and hands every request, whichever protocol carried it, to
a ``Handler`` as ``(method, path, headers, body, version)``. The handler answers with a ``Reply``: a status,
body and headers, or an ``action`` ("hang": never answer, "close": drop the connection) for the faults tests
script. The APNs simulator has its own HTTP/2 server (it also scripts GOAWAY and checks client certificates);
the Web Push one runs on aiohttp. The HTTP/2 side is http_server_h2.py; HTTP/1.1 is below.

    server = TlsHttpServer(handler, cert_file, key_file)
    port = await server.start("127.0.0.1", 0)
    ...
    await server.stop()  # ends hung requests, in-flight handlers and open connections
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from pushsvc.simulators.http_server_h2 import serve_h2


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str | None = None  # "hang" | "close": no reply is written


class Handler(Protocol):
    """A simulator's routes: one call per request, from the server's event loop."""

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, version: str) -> Reply:
        """``headers``: lower-case names, pseudo-headers excluded; ``version``: "h2" or "http/1.1"."""
        ...


class TlsHttpServer:
    """One TLS listener on the running event loop; ALPN picks HTTP/2 (``h2``) or HTTP/1.1 per connection."""

    def __init__(self, handler: Handler, cert_file: str | Path, key_file: str | Path) -> None:
        self._handler = handler
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        self._conns = Connections()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port bound."""
        # Created here, not in __init__: hung requests wait on it from the loop that serves them.
        self._conns.stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connection, host, port, ssl=self._ssl)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, release hung requests, cancel handlers and abort every open connection."""
        if self._server is not None:
            self._server.close()
        if self._conns.stopping is not None:
            self._conns.stopping.set()
        for task in list(self._conns.tasks):
            task.cancel()
        for writer in list(self._conns.writers):
            writer.transport.abort()
        pending = [*self._conns.tasks, *self._conns.connections]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._conns.connections.add(task)
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
        serve: Callable[..., Any] = serve_h2 if protocol == "h2" else serve_http1
        try:
            await serve(self._handler, self._conns, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._conns.writers.discard(writer)
            if task is not None:
                self._conns.connections.discard(task)
            writer.transport.abort()


# ------------------------------------------------------------------------------------- connections, HTTP/1.1


class Connections:
    """Open connections and their in-flight handler tasks, so stop() and hang/close can end them."""

    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # per-stream handlers (h2), cancelled on stop
        self.connections: set[asyncio.Task[Any]] = set()  # connection loops, ended by aborting transports
        self.stopping: asyncio.Event | None = None  # created in the serving loop (start); hung requests wait on it

    async def hang(self) -> None:
        assert self.stopping is not None
        await self.stopping.wait()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


async def serve_http1(
    handler: Handler, conns: Connections, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        line = await reader.readline()
        if not line or not line.strip():
            if not line:
                return
            continue
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return
        headers = await _read_headers(reader)
        body = await _read_body(reader, headers)
        reply = await handler.handle(method, target, headers, body, "http/1.1")
        if reply.action == "hang":
            await conns.hang()
            return
        if reply.action == "close":
            writer.transport.abort()
            return
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        await _write_reply(writer, reply, keep_alive)
        if not keep_alive:
            return


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return await reader.readexactly(int(headers.get("content-length", "0") or 0))
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body.extend(await reader.readexactly(size))
        await reader.readline()


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> None:
    head = [
        f"HTTP/1.1 {reply.status} {_reason(reply.status)}",
        f"content-length: {len(reply.body)}",
        f"date: {email.utils.formatdate(usegmt=True)}",
        f"connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    head += [f"{k}: {v}" for k, v in reply.headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
    await writer.drain()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
