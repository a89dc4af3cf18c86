"""The HTTP/2 side of the simulators' shared TLS server (http_server.py): one session per connection.

Each stream's request goes to the ``Handler`` in a task of its own (so a hung or slow answer holds up only its
stream), and each answer's body is sent as the client's flow-control windows open.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

if TYPE_CHECKING:
    from pushsvc.simulators.http_server import Connections, Handler


async def serve_h2(
    handler: Handler, conns: Connections, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    session = _H2Session(handler, conns, writer)
    try:
        while True:
            data = await reader.read(65536)
            if not data or not session.receive(data):
                break
    finally:
        session.cancel_handlers()


class _H2Session:
    """One HTTP/2 connection: h2 state, request assembly, a handler task per stream, flow-controlled replies."""

    def __init__(self, handler: Handler, conns: Connections, writer: asyncio.StreamWriter) -> None:
        self.handler = handler
        self.conns = conns
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
        )
        self.conn.initiate_connection()
        writer.write(self.conn.data_to_send())
        self.window_changed = asyncio.Event()
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.handlers: dict[int, asyncio.Task[Any]] = {}

    def receive(self, data: bytes) -> bool:
        """Act on the client's bytes; False when the connection is over (protocol error or GOAWAY)."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            return False
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.flush()
                return False
            self._on_event(event)
        self.flush()
        return True

    def cancel_handlers(self) -> None:
        for task in list(self.handlers.values()):
            task.cancel()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = (dict(event.headers), bytearray())
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id in self.streams:
                self.streams[event.stream_id][1].extend(event.data)
            # Flow control: give the window back as soon as the data is buffered.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            headers, body = self.streams.pop(event.stream_id, ({}, bytearray()))
            task = self.conns.spawn(self._respond(event.stream_id, headers, bytes(body)))
            self.handlers[event.stream_id] = task
            task.add_done_callback(lambda _t, sid=event.stream_id: self.handlers.pop(sid, None))
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            task = self.handlers.pop(event.stream_id, None)
            if task:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window_changed.set()

    async def _respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        reply = await self.handler.handle(
            headers.get(":method", ""),
            headers.get(":path", ""),
            {k: v for k, v in headers.items() if not k.startswith(":")},
            body,
            "h2",
        )
        if reply.action == "hang":
            await self.conns.hang()
            return
        if reply.action == "close":
            self.writer.transport.abort()
            return
        out = [(":status", str(reply.status)), ("content-length", str(len(reply.body))), *reply.headers]
        try:
            self.conn.send_headers(stream_id, out, end_stream=not reply.body)
            self.flush()
            await self._send_body(stream_id, reply.body)
            await self.writer.drain()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass  # the client reset the stream or went away

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` as the client's flow-control windows open."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_changed.clear()
                await self.window_changed.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=not view)
            self.flush()
