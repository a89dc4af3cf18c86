"""The APNs peer's HTTP/2 server side: one asyncio protocol per client connection.

It speaks real HTTP/2 (the ``h2`` library), assembles each stream's request and hands it to the peer, and
sends answers as far as the client's flow-control windows allow; it can also shed the connection the ways
Apple does (GOAWAY naming the last answered stream) or drop it without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from hpack import NeverIndexedHeaderTuple

if TYPE_CHECKING:
    from pushsvc.simulators.apns.peer import ApnsPeer


@dataclass
class Incoming:
    """A request whose stream has not ended yet."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    # Header names sent more than once (``headers`` keeps the last value): a second authorization header is
    # what a client library adding its own token to ours would send.
    repeated: frozenset[str] = frozenset()
    # Header names the client sent as HPACK never-indexed literals (RFC 7541 section 6.2.3): its choice of what
    # stays out of the connection's compression table.
    never_indexed: frozenset[str] = frozenset()


class PeerConnection(asyncio.Protocol):
    """One client connection: h2 state, request assembly, flow-controlled responses."""

    _ids = 0

    def __init__(self, peer: ApnsPeer) -> None:
        PeerConnection._ids += 1
        self.id = PeerConnection._ids
        self.peer = peer
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        # Like Apple: many concurrent streams per connection (set before the preface, so no race).
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: peer.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 8192,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.client_cert: dict[str, str] | None = None
        self._incoming: dict[int, Incoming] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Response bodies waiting for the client to open its flow-control window.
        self._outbox: dict[int, bytearray] = {}
        self._highest_answered = 0
        self._closed = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            cert = ssl_object.getpeercert()
            if cert:
                self.client_cert = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        self.h2.initiate_connection()
        self._flush()
        self.peer._opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.abort()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                names = [name for name, _ in event.headers]  # type: ignore[union-attr]
                repeated = frozenset(name for name in names if names.count(name) > 1)
                never_indexed = frozenset(h[0] for h in event.headers if isinstance(h, NeverIndexedHeaderTuple))  # type: ignore[union-attr]
                self._incoming[event.stream_id] = Incoming(
                    dict(event.headers), repeated=repeated, never_indexed=never_indexed  # type: ignore[arg-type]
                )
            elif isinstance(event, DataReceived):
                incoming = self._incoming.get(event.stream_id)
                if incoming is not None:
                    incoming.body += event.data
                # Give the window back, or a client sending many payloads stalls after 64 KiB.
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                incoming = self._incoming.pop(event.stream_id, None)
                if incoming is not None:
                    task = asyncio.create_task(self.peer._handle(self, event.stream_id, incoming))
                    self._tasks[event.stream_id] = task
                    task.add_done_callback(lambda _t, sid=event.stream_id: self._tasks.pop(sid, None))
            elif isinstance(event, StreamReset):
                self.peer.streams_reset_by_client += 1
                self._incoming.pop(event.stream_id, None)
                self._outbox.pop(event.stream_id, None)
                task = self._tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._drain()
            elif isinstance(event, ConnectionTerminated):
                self.abort()
                return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self.peer._closed(self)

    # actions used by the peer

    def respond(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self._closed:
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            return  # the client reset the stream (timeout) or the connection is going away
        if body:
            self._outbox[stream_id] = bytearray(body)
            self._drain()
        else:
            self._highest_answered = max(self._highest_answered, stream_id)
        self._flush()

    def goaway(self) -> None:
        """Apple's way of shedding a connection: GOAWAY naming the last answered stream, then close."""
        if self._closed:
            return
        with contextlib.suppress(H2Error):
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=b'{"reason":"Shutdown"}',
                last_stream_id=self._highest_answered,
            )
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without TLS close_notify or GOAWAY."""
        if self.transport is not None:
            self.transport.abort()

    # internals

    def _drain(self) -> None:
        """Send buffered response bodies as far as the client's flow-control windows allow."""
        for stream_id in list(self._outbox):
            buffer = self._outbox[stream_id]
            try:
                while buffer:
                    window = self.h2.local_flow_control_window(stream_id)
                    size = min(window, len(buffer), self.h2.max_outbound_frame_size)
                    if size <= 0:
                        break
                    chunk = bytes(buffer[:size])
                    del buffer[:size]
                    self.h2.send_data(stream_id, chunk, end_stream=not buffer)
            except H2Error:
                del self._outbox[stream_id]
                continue
            if not buffer:
                del self._outbox[stream_id]
                self._highest_answered = max(self._highest_answered, stream_id)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
