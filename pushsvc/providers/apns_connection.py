"""APNs connections: aioapns's pool and TLS handling with our own HTTP/2 request handling.

aioapns provides the connection pool and TLS (client certificate); the provider token (JWT) is ours
(apns_token.py: one per key, shared by every connection, where aioapns signs one per connection). Its
request/response handling on a connection falls short in ways that bite in production, so ``ApnsConnection``
replaces that part and keeps the rest:

* it never acknowledges received DATA, so after 64 KiB of error bodies the connection window is spent and
  every later answer on that connection stalls;
* it matches answers by the echoed apns-id and parses each DATA frame as JSON on its own; a success leaks
  an entry per stream and an error without a JSON body never resolves;
* response headers (Retry-After) are not exposed;
* apns-expiration is computed as now + ttl, so neither Apple's "0" nor our absolute expiry can be sent;
* after a GOAWAY the connection stays in the pool (the next send fails with an h2 ProtocolError) and
  streams the server did not process wait forever;
* there is no per-request timeout, and an abandoned stream is never reset, holding a stream slot forever;
* ``pool.send_notification`` silently re-sends on another connection after a connection loss (a possible
  duplicate push), while our contract is exactly one attempt per ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from aioapns.connection import APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from hpack import NeverIndexedHeaderTuple

from pushsvc.logs import get_logger
from pushsvc.providers.transport import BoundedH2Connection, set_or_done

log = get_logger(__name__)

APNS_HOSTS = {"production": "api.push.apple.com", "sandbox": "api.sandbox.push.apple.com"}
APNS_PORT = 443


class ApnsStreamReset(ConnectionClosed):
    """The server reset one stream (e.g. REFUSED_STREAM); the connection itself is fine."""


@dataclass
class ApnsResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stream:
    future: asyncio.Future[ApnsResponse]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class ApnsConnection(APNsTLSClientProtocol):
    """One HTTP/2 connection. Subclassed per provider to set APNS_SERVER/APNS_PORT (aioapns reads them)."""

    APNS_SERVER: ClassVar[str] = APNS_HOSTS["production"]
    APNS_PORT: ClassVar[int] = APNS_PORT
    # Every open connection of the provider, including retired ones still finishing streams (for close()).
    live: ClassVar[set[ApnsConnection]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = BoundedH2Connection(self.conn.config)  # before any use (connection_made initiates it)
        # Our own, known-good request headers (the token is percent-quoted): skipping h2's per-header
        # validation saves ~15% of a send's CPU.
        self.conn.config.validate_outbound_headers = False
        # Nor are they normalized: the names are lower case already, and the values are ours or checked at intake
        # (options.collapse_key: no control characters, no surrounding space). Normalizing also sent the
        # authorization header as a never-indexed literal (h2 does that to every "authorization"), ~200 bytes on
        # every request where the indexed token costs one (send_push); together ~8 µs of a send's CPU.
        self.conn.config.normalize_outbound_headers = False
        # Apple's answers are not checked header by header either (as for FCM, h2client.py): ~3% of a send's CPU.
        self.conn.config.validate_inbound_headers = False
        # Two values are new on every request (:path with the token, apns-id): Huffman-coding them and adding
        # them to the HPACK table (evicting the entries that do repeat) cost ~18% of a send's CPU. They go
        # as never-indexed literals, and Huffman coding is off for this connection (RFC 7541 allows both).
        encoder = self.conn.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]
        self._flush_pending = False
        self._streams: dict[int, _Stream] = {}
        self._window_changed = asyncio.Event()
        self.retired = False  # out of the pool: no new streams
        self.last_received = 0.0  # loop time of the last bytes from the server
        self.closed: asyncio.Future[None] = self.loop.create_future()
        # aioapns's key pool gives every connection its own JWT signer (its own token, wall clock, 30-minute
        # lifetime): with it, N connections would present N tokens, each a "token update" to Apple. Dropped, so
        # nothing on this connection signs: every request carries the provider's shared token (apns_token.py),
        # handed to send_push.
        self.auth_provider = None

    @property
    def is_busy(self) -> bool:
        # The pool hands out any connection that is not busy; a retired one must never be picked again.
        return self.retired or super().is_busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.live.add(self)

    async def send_push(
        self, token: str, headers: list[tuple[str, str]], payload: bytes, authorization: str | None = None
    ) -> ApnsResponse:
        """One request, awaiting its answer; raises ConnectionClosed or H2Error on transport trouble.

        ``authorization``: the provider token's header value (token auth), None with certificate auth.
        """
        if self.retired:
            raise ConnectionClosed("connection retired")
        stream_id = await self.free_channels.acquire()
        request_headers = [
            (":method", "POST"),
            (":scheme", "https"),
            NeverIndexedHeaderTuple(":path", f"/3/device/{quote(token, safe='')}"),
            ("host", self.APNS_SERVER),
            *headers,
        ]
        if authorization is not None:
            # Indexed (unlike :path and apns-id): the same value for the token's 50 minutes, so after the first
            # request on a connection it costs one byte instead of ~200.
            request_headers.append(("authorization", authorization))
        try:
            self.conn.send_headers(stream_id, request_headers)
        except H2Error:
            self.free_channels.release()
            raise
        stream = _Stream(self.loop.create_future())
        self._streams[stream_id] = stream
        try:
            # Headers went out at once (stream ids must be used in order); the body may have to wait for
            # the server to open its flow-control window, which aioapns answered with FlowControlError.
            await self._wait_for_window(stream_id, len(payload), stream.future)
            if not stream.future.done():
                self.conn.send_data(stream_id, payload, end_stream=True)
                self._flush_soon()
            return await stream.future
        finally:
            if stream_id in self._streams:
                # Cancelled (timeout) or failed while sending: cancel the stream at the server too, so
                # it stops holding one of the connection's concurrent-stream slots.
                self._abandon(stream_id)

    async def _wait_for_window(self, stream_id: int, size: int, answered: asyncio.Future[ApnsResponse]) -> None:
        while not answered.done() and self.conn.local_flow_control_window(stream_id) < size:
            self._flush_soon()  # the headers, at least, go now: the server may answer without the body
            await set_or_done(self._window_changed, answered)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:  # the server broke the protocol (or spoke after GOAWAY): connection unusable
            log.warning("apns_protocol_error", app_host=self.APNS_SERVER, error=str(exc))
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self._streams.get(event.stream_id or 0)
                if stream is not None:
                    # Bytes (the connection sets no header_encoding), decoded as they are, not copied first.
                    stream.headers = {k.decode(): v.decode() for k, v in event.headers or ()}  # type: ignore[union-attr]
            elif isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.body += event.data or b""
                # The fix for the stall: hand the bytes back to the server's send window.
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
            elif isinstance(event, StreamEnded):
                self._finish(event.stream_id or 0)
            elif isinstance(event, StreamReset):
                reset = ApnsStreamReset(f"stream reset by server ({event.error_code!r})")
                self._fail(event.stream_id or 0, reset)
            elif isinstance(event, WindowUpdated):
                self._window_changed.set()
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)  # MAX_CONCURRENT_STREAMS
                self._window_changed.set()  # INITIAL_WINDOW_SIZE may have grown
            elif isinstance(event, ConnectionTerminated):
                self._on_goaway(event)
                return
        self.flush()

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        # h2 accepts no frame after GOAWAY, so nothing still open can be answered: fail it all now (the
        # caller gets connection_error and the dispatcher retries) instead of waiting for the timeout.
        log.info(
            "apns_goaway",
            host=self.APNS_SERVER,
            error_code=str(event.error_code),
            last_stream_id=event.last_stream_id,
            debug=(event.additional_data or b"")[:200].decode(errors="replace"),
        )
        self._fail_all(ConnectionClosed("GOAWAY"))
        self.close()

    def _finish(self, stream_id: int) -> None:
        self.conn.done_with(stream_id)  # before the slot is released below
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.free_channels.release()
        if not stream.future.done():
            status = int(stream.headers.get(":status", "0"))
            stream.future.set_result(ApnsResponse(status, stream.headers, bytes(stream.body)))
        if self.retired and not self._streams:
            self.close()

    def _fail(self, stream_id: int, exc: Exception) -> None:
        self.conn.forget_closed(stream_id)
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.free_channels.release()
        if not stream.future.done():
            stream.future.set_exception(exc)

    def _fail_all(self, exc: Exception) -> None:
        for stream_id in list(self._streams):
            self._fail(stream_id, exc)

    def _abandon(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self.free_channels.release()
        self.conn.done_with(stream_id)
        self.flush()
        if self.retired and not self._streams:
            self.close()

    def retire(self) -> None:
        """Graceful: out of the pool now, so no new send picks it; streams already open may finish first."""
        self._leave_pool()
        if not self._streams:
            self.close()

    def close(self) -> None:
        self._leave_pool()
        super().close()

    def _leave_pool(self) -> None:
        # Done at once rather than when the socket finally closes, which is what aioapns waits for.
        self.retired = True
        discard, self.on_connection_lost = self.on_connection_lost, None
        if discard is not None:
            with contextlib.suppress(ValueError):  # already gone from the pool
                discard(self)

    def _flush_soon(self) -> None:
        """Coalesced flush: every request started in this loop iteration leaves in one write (one timer reset)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush_coalesced)

    def _flush_coalesced(self) -> None:
        self._flush_pending = False
        self.flush()

    def flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # nothing can go out any more; don't re-arm aioapns's inactivity timer either
        data = self.conn.data_to_send()
        self.refresh_inactivity_timer()
        if data:
            self.transport.write(data)

    def refresh_inactivity_timer(self) -> None:
        # aioapns closes a connection INACTIVITY_TIME (10 s) after our last write even while answers are
        # awaited: an answer slower than that (APNs under load) failed as connection_error and the push was
        # sent again. Idle means no stream open: the timer re-arms while any is.
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        self.inactivity_timer = self.loop.call_later(self.INACTIVITY_TIME, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self._streams:
            self.refresh_inactivity_timer()
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_pool()
        super().connection_lost(exc)  # cancels the inactivity timer, fails waiters for a stream slot
        self._fail_all(ConnectionClosed(str(exc) if exc else "connection closed"))
        self.live.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
