"""A scripted TLS HTTP/2 server for transport tests (providers/h2client.py, providers/apns_connection.py): flow
control, stream limits, GOAWAY, resets, early answers, and the protocol corners of tests/integration/
test_h2client_protocol.py (CONTINUATION, padding, PING, SETTINGS changes, 1xx, trailers, malformed frames...).

h2's server side is strict, so it doubles as a conformance checker of the client: what it refuses is recorded in
``protocol_errors`` (and the connection closed). Frames h2 will not produce (padded HEADERS, PUSH_PROMISE to a client
that disabled push, unknown types, garbage) are written as raw bytes; after one that h2's state does not know of, the
connection is only drained (``_Link.raw``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    PingAckReceived,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from h2.stream import StreamState

from pushsvc.simulators.tls import TestPki

# Frame types (RFC 9113 section 6) and flags used by the raw frames.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8

_OLD_MODES = ("ok", "goaway", "reset", "hold", "early", "latin1")


@contextlib.asynccontextmanager
async def serving(pki: TestPki, window: int, max_streams: int) -> AsyncIterator[ScriptedH2Server]:
    """A ScriptedH2Server on the test PKI's certificate (ALPN h2), stopped on the way out."""
    server = ScriptedH2Server(window=window, max_streams=max_streams)
    await server.start(pki.server_context(["h2"]))
    try:
        yield server
    finally:
        await server.stop()


def client_context(pki: TestPki) -> ssl.SSLContext:
    """A client's TLS context trusting the test CA (the session's `pki` fixture) and no other."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    return ctx


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One raw HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def answer_body(request_body_digest: str, size: int) -> bytes:
    """The body of a "big" / "padded" answer: `size` bytes that differ per request (so a mix-up shows)."""
    seed = request_body_digest.encode()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class _Send:
    """Answer bytes waiting for the client's flow-control windows."""

    data: memoryview
    chunk: int  # data bytes per DATA frame
    pad: int | None  # padding per frame (None: not padded)


@dataclass
class _Link:
    """One client connection."""

    conn: H2Connection
    writer: asyncio.StreamWriter
    bodies: dict[int, int] = field(default_factory=dict)
    digests: dict[int, hashlib._Hash] = field(default_factory=dict)
    modes: dict[int, str] = field(default_factory=dict)  # a request's own x-mode header
    pending: dict[int, _Send] = field(default_factory=dict)
    parked: list[int] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)  # "batch": answered once the data read so far is handled
    limits_acked: bool = False  # the client acknowledged our MAX_CONCURRENT_STREAMS
    highest_answered: int = 0
    raw: bool = False  # h2's state no longer matches the wire: only drain


class ScriptedH2Server:
    """Answers 200 with the request body length; ``mode`` scripts misbehaviour (a request's ``x-mode`` header, in
    the modes below the first six, overrides it for that request).

    ``early``: answers 200 as soon as a request's headers arrive and never opens a window for its body, which
    the client may then never finish sending (RFC 9113 section 8.1 allows a server that); ``answered_early`` counts
    the requests answered before their body ended, ``resets`` the streams the client reset.

    Modes answering with ``_answer`` (``x-size``, ``x-sha256`` of the request body, ``x-stream``, ``answer_headers``):
    ``answer``; ``batch`` (answered once the data read so far is handled: the client's concurrent streams stay
    open meanwhile); ``big`` (``answer_size`` bytes, flow-controlled); ``padded`` (padded HEADERS, then ``answer_size``
    bytes in DATA frames of ``pad_chunk`` bytes each padded by 255); ``ping`` (a PING first); ``early_hints`` (a 103
    first); ``trailers`` (trailers after the body); ``window_dance`` (lowers SETTINGS_INITIAL_WINDOW_SIZE to 1,000
    once 20,000 body bytes arrived, raises it to 1 MiB at 100,000); ``dribble`` (the body in 1-byte DATA frames, the
    bytes written a few at a time); ``headers_only`` (HEADERS with END_STREAM); ``extension_frames`` (unknown frame
    types and PRIORITY frames around the answer). ``park``: no answer until ``goaway(answer_parked=True)`` or a
    ``reset_mid`` request on the connection; ``reset_mid``: HEADERS and half a body, then RST_STREAM, then answers
    the parked requests. ``garbage_frame`` / ``bad_hpack`` / ``push_promise``: a frame header announcing 16 MiB, a
    HEADERS block HPACK cannot decode, a PUSH_PROMISE (the client disabled push); nothing after.
    """

    def __init__(self, window: int = 65_535, max_streams: int = 100) -> None:
        self.window = window
        self.max_streams = max_streams
        self.mode = "ok"  # ok | goaway | reset | hold | early | latin1 (a header value that is not UTF-8) | see above
        self.connections = 0
        self.resets = 0
        self.answered_early = 0
        self.max_open_seen = 0
        self.port = 0
        # The most streams h2 held open on one connection at a request's arrival, counted once the client had
        # acknowledged our SETTINGS (before that it may open more: RFC 9113 section 6.5.2).
        self.max_open_streams = 0
        # What the client did, as h2 saw it.
        self.requests: list[dict[str, str]] = []  # each request's headers, in order of arrival
        self.protocol_errors: list[str] = []  # what h2 refused of the client (the connection was then closed)
        self.ping_acks: list[bytes] = []
        self.frames_sent: Counter[int] = Counter()  # frame types we wrote (garbage aside)
        self.parked = 0
        self.client_window = 0  # the largest connection window the client gave us to send in
        self.client_stream_window = 0  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.flow_sent = 0  # flow-controlled bytes of our queued DATA frames (data, padding and pad-length bytes)
        self.padding_sent = 0  # of which padding and pad-length bytes
        self.table_limits: list[int] = []  # HEADER_TABLE_SIZE values of ours the client acknowledged
        self.low_window_frames: list[int] = []  # window_dance: DATA sizes while 1,000 was in force
        # Scripting knobs.
        self.answer_size = 0
        self.answer_headers: list[tuple[bytes, bytes]] = []
        self.pad_chunk = 256
        self.ping_data = b"pushsvc!"
        self._links: list[_Link] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self, context: ssl.SSLContext) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def assert_early_answers_reset(self, at_least: int) -> None:
        """At least `at_least` requests were answered early, and the client reset each one's stream (the last
        reset may still be on its way: up to 2 s)."""
        assert self.answered_early >= at_least
        for _ in range(100):
            if self.resets == self.answered_early:
                break
            await asyncio.sleep(0.02)
        assert self.resets == self.answered_early

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    # ------------------------------------------------------------------------- driven by the test

    def update_settings(self, settings: dict[int, int]) -> None:
        """Send new SETTINGS on every live connection."""
        for link in self._links:
            if not link.raw:
                link.conn.update_settings(settings)
                self._write(link, link.conn.data_to_send())

    async def goaway(self, last_stream_id: int | None = None, answer_parked: bool = False) -> None:
        """GOAWAY (NO_ERROR) on every live connection, the socket left open. `last_stream_id` defaults to the highest
        stream answered. With `answer_parked`, the parked requests are answered 50 ms after the GOAWAY (their
        streams must be within `last_stream_id`)."""
        for link in list(self._links):
            answers = b""
            if answer_parked:
                for stream_id in link.parked:
                    self._answer(link, stream_id)
                self._pump(link)
                answers = link.conn.data_to_send()
            link.conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=last_stream_id or link.highest_answered)
            self._write(link, link.conn.data_to_send())
            link.raw = True  # h2 takes no frame after its GOAWAY
            if answers:
                await asyncio.sleep(0.05)
                self._write(link, answers)

    def abort_connections(self) -> None:
        """Drop every live connection at the TCP level (a reset, no GOAWAY, no TLS close): a crashed or
        unplugged peer."""
        for link in list(self._links):
            link.raw = True
            link.writer.transport.abort()

    def break_connections(self) -> None:
        """A frame header announcing 16 MiB (the client allows 16 KiB) on every live connection, then silence: the
        socket is no longer read, so the client's TLS close_notify is never answered (its close then takes up to
        ssl_shutdown_timeout, 30 s)."""
        for link in list(self._links):
            link.raw = True
            link.writer.write(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"\xde\xad" * 50)
            link.writer.transport.pause_reading()

    # ------------------------------------------------------------------------- the connection

    def _write(self, link: _Link, data: bytes) -> None:
        view, at = memoryview(data), 0
        while at + 9 <= len(view):  # whole frames only (h2 and frame() write no partial one)
            self.frames_sent[view[at + 3]] += 1
            at += 9 + int.from_bytes(view[at : at + 3], "big")
        if data and not link.writer.is_closing():
            link.writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = H2Connection(H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: self.window, SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        )
        link = _Link(conn, writer)
        self._links.append(link)
        writer.write(conn.data_to_send())
        bodies = link.bodies
        try:
            while data := await reader.read(65_536):
                if link.raw:
                    continue
                try:
                    events = conn.receive_data(data)
                except H2Error as exc:
                    self.protocol_errors.append(f"{type(exc).__name__}: {exc}")
                    return
                for event in events:
                    if isinstance(event, RequestReceived):
                        bodies[event.stream_id] = 0
                        self.max_open_seen = max(self.max_open_seen, len(bodies))
                        if link.limits_acked:
                            self.max_open_streams = max(self.max_open_streams, conn.open_inbound_streams)
                        self._request_received(link, event)
                        stream = conn.streams[event.stream_id]
                        if self.mode == "early" and not stream.closed:  # (not reset by the client already)
                            # Early only if the body is still to come (a first request may beat our SETTINGS).
                            self.answered_early += stream.state_machine.state is StreamState.OPEN
                            conn.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
                            bodies.pop(event.stream_id)
                    elif isinstance(event, StreamReset):
                        self.resets += 1
                        link.pending.pop(event.stream_id, None)
                    elif isinstance(event, DataReceived):
                        if self.mode == "early":
                            continue  # the body is not wanted: no window given back for it
                        bodies[event.stream_id] = bodies.get(event.stream_id, 0) + len(event.data)
                        # Open the windows only by what was consumed: the client must wait for them.
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id in link.digests:
                            link.digests[event.stream_id].update(event.data)
                            if link.modes.get(event.stream_id, self.mode) == "window_dance":
                                self._window_dance(link, event.stream_id, len(event.data))
                    elif isinstance(event, StreamEnded):
                        mode = link.modes.get(event.stream_id, self.mode)
                        if mode == "goaway":
                            conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
                            writer.write(conn.data_to_send())
                            await writer.drain()
                            writer.close()
                            return
                        if mode == "reset":
                            conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                        elif mode in ("ok", "latin1"):
                            size = bodies.pop(event.stream_id)
                            body = f'{{"received":{size}}}'.encode()
                            headers = [(b":status", b"200"), (b"x-size", str(size).encode())]
                            if mode == "latin1":
                                headers.append((b"x-note", "café".encode("latin-1")))
                            conn.send_headers(event.stream_id, headers)
                            conn.send_data(event.stream_id, body, end_stream=True)
                            link.highest_answered = max(link.highest_answered, event.stream_id)
                        elif mode not in _OLD_MODES:
                            await self._end(link, event.stream_id, mode)
                        if mode not in ("hold", "park", "batch"):  # (those are answered later)
                            bodies.pop(event.stream_id, None)
                    elif isinstance(event, SettingsAcknowledged):
                        self._settings_acknowledged(link, event)
                    elif isinstance(event, PingAckReceived):
                        self.ping_acks.append(event.ping_data)
                if link.raw:
                    continue
                for stream_id in link.batch:
                    self._answer(link, stream_id)
                link.batch.clear()
                self._pump(link)
                self._write(link, conn.data_to_send())
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self._links.remove(link)
            writer.close()

    def _request_received(self, link: _Link, event: RequestReceived) -> None:
        headers = {
            name.decode("utf-8", "replace"): value.decode("utf-8", "replace") for name, value in event.headers or ()
        }
        self.requests.append(headers)
        if "x-mode" in headers:
            link.modes[event.stream_id] = headers["x-mode"]
        if headers.get("x-mode", self.mode) not in _OLD_MODES:
            link.digests[event.stream_id] = hashlib.sha256()

    def _settings_acknowledged(self, link: _Link, event: SettingsAcknowledged) -> None:
        table = event.changed_settings.get(SettingCodes.HEADER_TABLE_SIZE)
        if table is not None:  # (from now on, hpack refuses a header block from a table over it)
            self.table_limits.append(table.new_value)
        link.limits_acked = link.conn.local_settings.max_concurrent_streams == self.max_streams

    # ------------------------------------------------------------------------- the new modes

    def _answer(self, link: _Link, stream_id: int, body: bytes | None = None, end_stream: bool = True) -> None:
        """HEADERS (and with `body`, DATA) of a 200 answer, sent now unless a body waits for windows."""
        size = link.bodies.pop(stream_id, 0)
        digest = link.digests.pop(stream_id, hashlib.sha256()).hexdigest()
        headers = [
            (b":status", b"200"), (b"x-size", str(size).encode()), (b"x-sha256", digest.encode()),
            (b"x-stream", str(stream_id).encode()), *self.answer_headers,
        ]
        link.conn.send_headers(stream_id, headers, end_stream=end_stream and body == b"")
        if body is None:
            body = f'{{"received":{size}}}'.encode()
        if body and end_stream:
            link.pending[stream_id] = _Send(memoryview(body), link.conn.max_outbound_frame_size, None)
        link.highest_answered = max(link.highest_answered, stream_id)

    async def _end(self, link: _Link, stream_id: int, mode: str) -> None:
        conn = link.conn
        if mode == "answer":
            self._answer(link, stream_id)
        elif mode == "big":
            digest = link.digests[stream_id].hexdigest()
            self._answer(link, stream_id, answer_body(digest, self.answer_size))
        elif mode == "padded":
            # HEADERS padded by 200 (h2 cannot pad HEADERS: written raw, encoded by h2's encoder so HPACK stays in
            # step), then DATA frames padded by 255 each.
            digest = link.digests.pop(stream_id).hexdigest()
            block = conn.encoder.encode([(b":status", b"200"), (b"x-sha256", digest.encode())])
            self._write(link, conn.data_to_send())
            self._write(link, frame(HEADERS, END_HEADERS | PADDED, stream_id, bytes([200]) + block + bytes(200)))
            conn.streams[stream_id].state_machine.headers_sent = True  # (h2 did not see them go)
            link.pending[stream_id] = _Send(memoryview(answer_body(digest, self.answer_size)), self.pad_chunk, 255)
        elif mode == "ping":
            conn.ping(self.ping_data)
            self._answer(link, stream_id)
        elif mode == "early_hints":
            conn.send_headers(stream_id, [(b":status", b"103"), (b"link", b"</style.css>; rel=preload")])
            self._answer(link, stream_id)
        elif mode == "trailers":
            self._answer(link, stream_id, b"trailed body", end_stream=False)
            conn.send_data(stream_id, b"trailed body")
            conn.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
        elif mode == "window_dance":
            self._answer(link, stream_id)
        elif mode == "dribble":
            self._answer(link, stream_id, body=b"", end_stream=False)
            body = b"dribbled, one byte a frame"
            for i in range(len(body)):
                conn.send_data(stream_id, body[i : i + 1], end_stream=i == len(body) - 1)
            data = conn.data_to_send()
            self.frames_sent.update({DATA: len(body), HEADERS: 1})
            for at in range(0, len(data), 7):  # 7 bytes a write: frames cut anywhere, headers included
                link.writer.write(data[at : at + 7])
                await link.writer.drain()
                await asyncio.sleep(0)
        elif mode == "headers_only":
            self._answer(link, stream_id, body=b"")
        elif mode == "extension_frames":
            self._write(link, frame(0xFA, 0xFF, 0, b"unknown on stream 0"))
            self._write(link, frame(PRIORITY, 0, stream_id, struct.pack(">IB", 0, 15)))
            self._write(link, frame(PRIORITY, 0, stream_id + 2, struct.pack(">IB", 0x8000_0000 | stream_id, 200)))
            self._answer(link, stream_id, end_stream=False)
            self._write(link, conn.data_to_send())
            self._write(link, frame(0xFB, 0x01, stream_id, b"unknown between HEADERS and DATA"))
            conn.send_data(stream_id, b"extended", end_stream=True)
        elif mode == "batch":
            link.batch.append(stream_id)
        elif mode == "park":
            link.parked.append(stream_id)
            self.parked += 1
        elif mode == "reset_mid":
            self._answer(link, stream_id, end_stream=False)
            conn.send_data(stream_id, b"half a bo")
            conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            for parked in link.parked:
                self._answer(link, parked)
            link.parked.clear()
        elif mode in ("garbage_frame", "bad_hpack", "push_promise"):
            self._write(link, conn.data_to_send())
            link.raw = True
            if mode == "garbage_frame":  # 16 MiB announced (the client allows 16 KiB), then junk
                link.writer.write(b"\xff\xff\xff\x00\x00" + struct.pack(">I", stream_id) + b"\xde\xad" * 50)
            elif mode == "bad_hpack":  # indexed field 255: no such entry
                self._write(link, frame(HEADERS, END_HEADERS, stream_id, b"\xff\x80\x01"))
            else:  # promised stream 2: GET https://localhost/ (static table and a literal, no table change)
                block = b"\x82\x87\x84\x01\x09localhost"
                self._write(link, frame(PUSH_PROMISE, END_HEADERS, stream_id, struct.pack(">I", 2) + block))
        else:
            raise AssertionError(f"unknown mode {mode!r}")

    def _window_dance(self, link: _Link, stream_id: int, received: int) -> None:
        total = link.bodies[stream_id]
        if total - received < 20_000 <= total:
            link.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1_000})
        elif total - received < 100_000 <= total:
            link.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        elif link.conn.local_settings.initial_window_size == 1_000 and 20_000 < total - received < 100_000:
            self.low_window_frames.append(received)  # (sent after the client acknowledged 1,000)

    def _pump(self, link: _Link) -> None:
        """Send what the client's windows allow of the answers waiting for them."""
        conn = link.conn
        self.client_window = max(self.client_window, conn.outbound_flow_control_window)
        self.client_stream_window = conn.remote_settings.initial_window_size
        for stream_id, send in list(link.pending.items()):
            overhead = 0 if send.pad is None else send.pad + 1
            while send.data:
                size = min(len(send.data), send.chunk, conn.max_outbound_frame_size - overhead)
                if conn.local_flow_control_window(stream_id) < size + overhead:
                    break
                chunk, send.data = send.data[:size], send.data[size:]
                conn.send_data(stream_id, chunk.tobytes(), end_stream=not send.data, pad_length=send.pad)
                self.flow_sent += size + overhead
                self.padding_sent += overhead
            if not send.data:
                del link.pending[stream_id]
