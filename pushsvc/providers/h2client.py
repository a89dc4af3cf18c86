"""A small HTTP/2 client on the ``h2`` state machine over asyncio: a pool of multiplexed TLS connections.

Built for one job, many small POSTs to one origin (FCM v1), where httpx's per-request overhead (its pool
scan, request/response models, per-stream locks) cost more CPU than the push itself. It keeps what matters
for correctness:

* streams are multiplexed up to the server's SETTINGS_MAX_CONCURRENT_STREAMS per connection; more
  connections are opened (up to ``max_connections``) only when every open one is full, and callers wait
  for a free stream beyond that;
* request bodies honour the peer's flow-control windows (connection and stream), and received DATA is
  acknowledged at once, so answers never stall on a spent window;
* GOAWAY retires the connection: nothing new is started on it and every stream still open fails with
  ``connection_error`` (h2 accepts no frame after GOAWAY); a reset stream fails only that request;
* writes are coalesced: everything queued during one loop iteration leaves in one ``transport.write``.

Errors are ``TransportFailure("timeout" | "connection_error", detail)``, the FcmTransport contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from h2.config import H2Configuration
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from pushsvc.providers.transport import BoundedH2Connection, HttpReply, TransportFailure, set_or_done

# Our receive window: large, so answers flow without waiting for our WINDOW_UPDATEs.
_RECEIVE_WINDOW = 16 * 1024 * 1024
_DEFAULT_MAX_STREAMS = 100  # until the server's SETTINGS arrive (RFC 9113 recommends at least 100)
# h2 counts open streams by walking all of them on every new stream (O(n) per request): past a few hundred
# streams per connection that walk dominates, so more connections with fewer streams each are cheaper.
_MAX_STREAMS_PER_CONNECTION = 128


@dataclass(slots=True)
class _Stream:
    future: asyncio.Future[HttpReply]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: H2Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        # Outbound headers are ours and known-good: h2's per-header validation was ~15% of a send's CPU. Of
        # the answers we read only :status, a few named headers and the body, so inbound header checks
        # (another ~7%) are skipped too; framing, HPACK and flow control are still enforced by h2. Answer
        # headers come as bytes (header_encoding None) and are decoded here, in one pass without h2's
        # HeaderTuple per header, and never raising: a header that is not UTF-8 cannot fail the connection.
        config = H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        )
        self.conn = BoundedH2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.usable = False  # connected and neither closing nor after GOAWAY
        self._stream_limit = self._read_stream_limit()  # kept, not read from h2's settings on every request
        self._flush_scheduled = False
        self._window_open = asyncio.Event()

    # ---------------------------------------------------------------------------------------- state

    @property
    def capacity(self) -> int:
        """How many more streams this connection may open now."""
        if not self.usable:
            return 0
        return self._stream_limit - len(self.streams)

    def _read_stream_limit(self) -> int:
        limit = self.conn.remote_settings.max_concurrent_streams or _DEFAULT_MAX_STREAMS
        return min(limit, _MAX_STREAMS_PER_CONNECTION)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.conn.update_settings(
            {SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: _RECEIVE_WINDOW}
        )
        self.conn.increment_flow_control_window(_RECEIVE_WINDOW - 65_535)
        self.usable = True
        self._flush_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed")
        self._window_open.set()
        self._pool._forget(self)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # ---------------------------------------------------------------------------------------- sending

    async def request(self, headers: list[tuple[str, str] | tuple[bytes, bytes]], body: bytes) -> HttpReply:
        conn = self.conn
        try:
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers, end_stream=not body)
        except H2Error as exc:
            self.usable = False
            raise TransportFailure("connection_error", f"{type(exc).__name__}: {exc}") from exc
        stream = _Stream(self._loop.create_future())
        self.streams[stream_id] = stream
        try:
            view = memoryview(body)
            while view:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if window <= 0:
                    self._flush()
                    await set_or_done(self._window_open, stream.future)
                    if stream.future.done():
                        break
                    continue
                chunk, view = view[:window], view[window:]
                conn.send_data(stream_id, chunk.tobytes(), end_stream=not view)
            self._flush()
            return await stream.future
        except H2Error as exc:
            raise TransportFailure("connection_error", f"{type(exc).__name__}: {exc}") from exc
        finally:
            # Abandoned (timeout, cancellation) or failed while sending: free the server's stream slot. (One
            # answered before all of its body went was reset as the answer was read.)
            if self.streams.pop(stream_id, None) is not None:
                conn.done_with(stream_id)
                self._flush()
            self._pool._stream_freed()

    def _flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -------------------------------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            self._fail_all(f"protocol error: {exc}")
            self.close()
            return
        streams = self.streams
        for event in events:
            if isinstance(event, DataReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                # Hand the bytes back at once (the stream may be gone; the connection window still counts).
                with contextlib.suppress(H2Error):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ResponseReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            stream.status = int(value)
                        else:
                            stream.headers[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
            elif isinstance(event, StreamEnded):
                self.conn.done_with(event.stream_id)
                stream = streams.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_result(HttpReply(stream.status, stream.headers, bytes(stream.body)))
            elif isinstance(event, StreamReset):
                self.conn.forget_closed(event.stream_id)
                stream = streams.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_exception(
                        TransportFailure("connection_error", f"stream reset by server ({event.error_code!r})")
                    )
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._window_open.set()
                if isinstance(event, RemoteSettingsChanged):
                    self._stream_limit = self._read_stream_limit()
                    self._pool._stream_freed()  # MAX_CONCURRENT_STREAMS may have grown
            elif isinstance(event, ConnectionTerminated):
                self.usable = False
                self._fail_all(f"GOAWAY ({event.error_code!r})")
                self._flush_now()
                self.close()
                return
            elif isinstance(event, TrailersReceived):
                pass
        self._flush()

    def _fail_all(self, detail: str) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(TransportFailure("connection_error", detail))


class H2Pool:
    """Connections to one origin (scheme https, host, port)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, max_connections: int) -> None:
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._max = max(1, max_connections)
        self._connections: list[_Connection] = []
        self._connecting: asyncio.Task[_Connection] | None = None
        self._freed = asyncio.Event()
        self._closed = False

    def ready(self) -> _Connection | None:
        """The open connection with the most free stream slots; None if none has one (or the pool is closed)."""
        best: _Connection | None = None
        best_capacity = 0
        for connection in self._connections:
            capacity = connection.capacity
            if capacity > best_capacity:
                best, best_capacity = connection, capacity
        return best

    async def connection(self) -> _Connection:
        """A connection with a free stream slot, opening one if all are full (or waiting for a slot)."""
        while True:
            if self._closed:
                raise TransportFailure("connection_error", "client closed")
            best = self.ready()
            if best is not None:
                return best
            if len(self._connections) < self._max or self._connecting is not None:
                if self._connecting is None:
                    self._connecting = asyncio.ensure_future(self._open())
                connecting = self._connecting
                try:
                    await asyncio.shield(connecting)
                finally:
                    if connecting.done() and self._connecting is connecting:
                        self._connecting = None
                continue
            self._freed.clear()
            await self._freed.wait()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: _Connection(self), self._host, self._port, ssl=self._ssl, server_hostname=self._host
            )
        except (OSError, ssl.SSLError) as exc:
            raise TransportFailure("connection_error", f"{type(exc).__name__}: {exc}") from exc
        transport = protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            protocol.close()
            raise TransportFailure("connection_error", "server did not negotiate HTTP/2 (ALPN h2)")
        self._connections.append(protocol)
        return protocol

    def _forget(self, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        self._freed.set()

    def _stream_freed(self) -> None:
        self._freed.set()

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        self._freed.set()


class H2Transport:
    """FcmTransport over ``H2Pool``: ``post`` returns an HttpReply or raises TransportFailure."""

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int, timeout: float | None) -> None:
        ssl_context.set_alpn_protocols(["h2"])
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._timeout = timeout
        self._pools: dict[tuple[str, int], H2Pool] = {}
        self._targets: dict[str, tuple[H2Pool, list[tuple[bytes, bytes]]]] = {}

    def _target(self, url: str) -> tuple[H2Pool, list[tuple[bytes, bytes]]]:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError(f"https URL expected, got {url!r}")
            port = parts.port or 443
            pool = self._pools.get((parts.hostname, port))
            if pool is None:
                pool = self._pools[(parts.hostname, port)] = H2Pool(
                    parts.hostname, port, self._ssl, self._max_connections
                )
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            authority = parts.netloc.rsplit("@", 1)[-1]
            # As bytes, encoded once: h2 encodes every str header of every request.
            pseudo = [
                (b":method", b"POST"), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", path.encode()),
            ]
            target = self._targets[url] = (pool, pseudo)
        return target

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        pool, pseudo = self._target(url)
        request_headers: list[tuple[str, str] | tuple[bytes, bytes]] = [
            *pseudo, *headers.items(), ("content-length", str(len(body)))
        ]
        if self._timeout is None:  # the caller bounds the time (one timer less per request)
            connection = pool.ready() or await pool.connection()  # a free slot taken without a coroutine
            return await connection.request(request_headers, body)
        try:
            async with asyncio.timeout(self._timeout):
                connection = await pool.connection()
                return await connection.request(request_headers, body)
        except TimeoutError as exc:
            raise TransportFailure("timeout", "no answer within the timeout") from exc

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
        self._targets.clear()
