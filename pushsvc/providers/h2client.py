"""A small HTTP/2 client over asyncio: a pool of multiplexed TLS connections, with its own framing (RFC 9113) and
the ``hpack`` library's header compression (RFC 7541).

Built for one job, many small POSTs to one origin (FCM v1, HMS), where general clients cost more CPU than the push
itself: httpx's per-request models and locks first, then the ``h2`` state machine under it (~85 µs of a ~310 µs FCM
push: hyperframe objects per frame, per-header checks and events, per-stream state machines). A client that
only sends requests and reads answers needs a small part of that machine; the part it needs is here:

* the connection preface and SETTINGS both ways (each of the server's acknowledged); its HEADER_TABLE_SIZE,
  MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE (applied to open streams too) and MAX_FRAME_SIZE are obeyed;
* streams are multiplexed up to the server's SETTINGS_MAX_CONCURRENT_STREAMS per connection; more connections are
  opened (up to ``max_connections``) only when every open one is full, and callers wait for a free stream beyond
  that; a connection whose stream ids run out is retired;
* request bodies honour the server's flow-control windows (connection and stream); received DATA is credited
  back to the connection once half of our (large) window is spent; an answer over 4 MiB (far over any push
  provider's) is refused, its stream reset, so a server cannot fill our memory;
* answers: HEADERS with CONTINUATION and padding, informational 1xx answers skipped, trailers read past, PING
  answered, PRIORITY and unknown frame types ignored; a PUSH_PROMISE (push is disabled) is a protocol error;
* GOAWAY retires the connection: nothing new starts on it, streams above its last stream id fail at once with
  ``connection_error`` (the server did not process them: safe to resend), the others may still be answered;
* RST_STREAM fails only its request; a request given up (timeout, cancellation) or answered before its body
  went resets its stream, so the server's slot is freed;
* any protocol error by the server (a malformed frame, an HPACK block that does not decode, a frame out of
  place) ends the connection with GOAWAY and fails its requests with ``connection_error``;
* writes are coalesced: everything queued during one loop iteration leaves in one ``transport.write``.

Errors are ``TransportFailure("timeout" | "connection_error", detail)``, the FcmTransport contract.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple

from pushsvc.providers.transport import HttpReply, TransportFailure, set_or_done

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame header: 24-bit length (as a byte and a short), type, flags, reserved bit + 31-bit stream id.
_FRAME_HEADER = struct.Struct(">BHBBL")
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    range(10)
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes (RFC 9113 section 7).
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _FRAME_SIZE_ERROR, _COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x6, 0x9
_CANCEL = 0x8
# Settings (RFC 9113 section 6.5.2).
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 1, 2, 3, 4, 5
_MAX_HEADER_LIST_SIZE = 6

_MAX_WINDOW = 2**31 - 1
_MAX_STREAM_ID = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_DEFAULT_FRAME_SIZE = 16_384  # also the largest frame we accept: we never raise our SETTINGS_MAX_FRAME_SIZE
# Our receive windows: large, so answers flow without waiting for our WINDOW_UPDATEs; credit goes back once half
# of a window is spent (one frame per 8 MiB, not one per answer).
_RECEIVE_WINDOW = 16 * 1024 * 1024
_CREDIT_AT = _RECEIVE_WINDOW // 2
_MAX_HEADER_LIST = 65_536  # answer headers we accept per answer (decoded size, as SETTINGS_MAX_HEADER_LIST_SIZE)
# Our HPACK encoder's table at most: a server may allow a bigger one, but our requests' few repeated headers fit
# in the default (and the table's size is then not the server's to choose).
_MAX_ENCODER_TABLE = 4_096
# The largest answer body kept. Push providers answer in a few hundred bytes; within our 16 MiB stream window,
# so a stream needs no credit of its own.
_MAX_ANSWER_BODY = 4 * 1024 * 1024
_DEFAULT_MAX_STREAMS = 100  # until the server's SETTINGS arrive (RFC 9113 recommends at least 100)
# When a server sets no limit of its own: more streams than this on one connection would only put more
# requests behind one TCP window; the pool opens another connection instead.
_MAX_STREAMS_PER_CONNECTION = 1000


def _frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


class _ProtocolError(Exception):
    """The server broke RFC 9113 (or 7541): the connection ends with GOAWAY carrying `code`."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(slots=True)
class _Stream:
    future: asyncio.Future[HttpReply]
    send_window: int
    sent_all: bool  # our END_STREAM went
    status: int = 0  # the final answer's; 0 until it arrives
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)

    def fail(self, detail: str) -> None:
        """The request gets no answer: a connection error (retryable) for its caller, unless it has its outcome."""
        if not self.future.done():
            self.future.set_exception(TransportFailure("connection_error", detail))


@dataclass(slots=True)
class _HeaderBlock:
    """A header block still arriving in CONTINUATION frames."""

    stream_id: int
    end_stream: bool
    fragments: list[bytes]
    size: int  # the frames' bytes so far, their headers counted: bounded, whatever their payloads


class _Connection(asyncio.Protocol):
    def __init__(self, pool: H2Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}  # the open ones (ours: a client opens every stream)
        self.usable = False  # connected, not closing, no GOAWAY, stream ids left
        self._encoder = Encoder()
        self._decoder = Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._next_stream_id = 1
        self._retiring = False  # after GOAWAY or with its stream ids spent: closed once its last stream is done
        # What the server allows, from its SETTINGS (RFC 9113 defaults until they arrive).
        self._stream_limit = _DEFAULT_MAX_STREAMS
        self._initial_send_window = _DEFAULT_WINDOW
        self._max_frame_size = _DEFAULT_FRAME_SIZE
        self._send_window = _DEFAULT_WINDOW  # the connection's
        self._received = 0  # flow-controlled bytes received on the connection, not yet credited back
        self._settings_seen = False
        self._inbound = b""  # the start of a frame still arriving
        self._block: _HeaderBlock | None = None
        self._outbound = bytearray()
        self._flush_scheduled = False
        self._window_open = asyncio.Event()

    # ---------------------------------------------------------------------------------------- state

    @property
    def capacity(self) -> int:
        """How many more streams this connection may open now."""
        if not self.usable:
            return 0
        return max(0, self._stream_limit - len(self.streams))  # (a server may lower its limit below the open ones)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = b"".join(
            _SETTING.pack(code, value)
            for code, value in (
                (_ENABLE_PUSH, 0), (_INITIAL_WINDOW_SIZE, _RECEIVE_WINDOW), (_MAX_HEADER_LIST_SIZE, _MAX_HEADER_LIST)
            )
        )
        self._outbound += _PREFACE + _frame(_SETTINGS, 0, 0, settings)
        self._outbound += _frame(_WINDOW_UPDATE, 0, 0, _U32.pack(_RECEIVE_WINDOW - _DEFAULT_WINDOW))
        self.usable = True
        self._flush_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed")
        self._window_open.set()
        self._pool._forget(self)

    def close(self, code: int = _NO_ERROR) -> None:
        """Close with GOAWAY carrying `code`, then the TCP/TLS close; open requests fail as the connection is lost."""
        self.usable = False
        if self.transport is not None and not self.transport.is_closing():
            self._outbound += _frame(_GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(code))
            self._flush_now()
            self.transport.close()

    # ---------------------------------------------------------------------------------------- sending

    async def request(self, headers: list[tuple[str, str] | tuple[bytes, bytes]], body: bytes) -> HttpReply:
        if not self.usable:
            raise TransportFailure("connection_error", "the connection is closing")
        try:
            block = self._encoder.encode(headers)
        except Exception:
            # A header hpack cannot encode (a str that is not UTF-8): hpack may have put the headers before it in
            # its table already, which the server's copy of the table will never have. No request may follow.
            self._retire()
            raise
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        stream = _Stream(self._loop.create_future(), self._initial_send_window, sent_all=not body)
        self.streams[stream_id] = stream
        if self._next_stream_id > _MAX_STREAM_ID:
            self._retire()  # ids spent: the pool opens a new connection, this one ends with its last stream
        try:
            self._send_headers(stream_id, block, end_stream=not body)
            if body:
                await self._send_body(stream_id, stream, body)
            self._flush()
            return await stream.future
        finally:
            # Abandoned (timeout, cancellation) or failed while sending: free the server's stream slot. (Every
            # other way out took the stream off and told the pool already: one slot, one waiter woken.)
            if self.streams.pop(stream_id, None) is not None:
                self._reset(stream_id, _CANCEL)
                self._pool._stream_freed()
            if self._retiring and not self.streams:
                self.close()

    def _retire(self) -> None:
        """No new request starts here; the connection closes once its last stream ends."""
        self.usable, self._retiring = False, True
        self._pool._wake_all()  # waiters may open a new connection in its place
        if not self.streams:
            self.close()

    def _send_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        size = self._max_frame_size
        flags = _END_STREAM if end_stream else 0
        if len(block) <= size:
            self._outbound += _frame(_HEADERS, flags | _END_HEADERS, stream_id, block)
            return
        view = memoryview(block)
        self._outbound += _frame(_HEADERS, flags, stream_id, view[:size])
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            self._outbound += _frame(_CONTINUATION, _END_HEADERS if last else 0, stream_id, view[start:start + size])

    async def _send_body(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = min(self._send_window, stream.send_window, self._max_frame_size)
            if window <= 0:
                self._flush()
                await set_or_done(self._window_open, stream.future)
                if stream.future.done():  # answered (or failed) before the whole body went
                    return
                continue
            chunk, view = view[:window], view[window:]
            size = len(chunk)
            self._send_window -= size
            stream.send_window -= size
            self._outbound += _frame(_DATA, 0 if view else _END_STREAM, stream_id, chunk)
        stream.sent_all = True

    def _reset(self, stream_id: int, code: int) -> None:
        self._outbound += _frame(_RST_STREAM, 0, stream_id, _U32.pack(code))
        self._flush()

    def _flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self._outbound and self.transport is not None and not self.transport.is_closing():
            # A new buffer, not a cleared one: the transport may hold on to the bytes it was given.
            data, self._outbound = self._outbound, bytearray()
            self.transport.write(data)

    # -------------------------------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        if self._inbound:
            data = self._inbound + data
        start, end = 0, len(data)
        try:
            while end - start >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(data, start)
                length = high << 16 | low
                if length > _DEFAULT_FRAME_SIZE:
                    raise _ProtocolError(_FRAME_SIZE_ERROR, f"a {length}-byte frame (type {kind})")
                if end - start - 9 < length:
                    break
                payload = data[start + 9:start + 9 + length]
                start += 9 + length
                self._receive_frame(kind, flags, stream_id & _MAX_STREAM_ID, payload)
                if self.transport is None or self.transport.is_closing():
                    return
        except _ProtocolError as exc:
            self._connection_error(exc.code, str(exc))
            return
        self._inbound = data[start:]
        if self._outbound:  # acknowledgements, credit, resets
            self._flush()

    def _receive_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._settings_seen and (kind != _SETTINGS or flags & _ACK):
            raise _ProtocolError(_PROTOCOL_ERROR, f"the server's first frame is of type {kind}, not SETTINGS")
        if self._block is not None and kind != _CONTINUATION:
            raise _ProtocolError(_PROTOCOL_ERROR, f"a frame of type {kind} inside a header block")
        if kind == _DATA:
            self._receive_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._receive_headers(flags, stream_id, payload)
        elif kind == _CONTINUATION:
            self._receive_continuation(flags, stream_id, payload)
        elif kind == _RST_STREAM:
            self._receive_reset(stream_id, payload)
        elif kind == _SETTINGS:
            self._receive_settings(flags, stream_id, payload)
        elif kind == _PING:
            if stream_id != 0 or len(payload) != 8:
                raise _ProtocolError(_PROTOCOL_ERROR if stream_id else _FRAME_SIZE_ERROR, "a malformed PING")
            if not flags & _ACK:
                self._outbound += _frame(_PING, _ACK, 0, payload)
        elif kind == _GOAWAY:
            self._receive_goaway(stream_id, payload)
        elif kind == _WINDOW_UPDATE:
            self._receive_window_update(stream_id, payload)
        elif kind == _PUSH_PROMISE:
            raise _ProtocolError(_PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        elif kind == _PRIORITY and (stream_id == 0 or len(payload) != 5):
            raise _ProtocolError(_PROTOCOL_ERROR if stream_id == 0 else _FRAME_SIZE_ERROR, "a malformed PRIORITY")
        # PRIORITY is advice this client has no use for; any other type is an extension it does not speak: both
        # ignored (RFC 9113 sections 5.3.2 and 5.5).

    def _check_stream_id(self, stream_id: int, kind: str) -> None:
        """A stream frame must name a stream we opened (it may have closed since)."""
        if stream_id == 0 or stream_id % 2 == 0 or stream_id >= self._next_stream_id:
            raise _ProtocolError(_PROTOCOL_ERROR, f"{kind} on stream {stream_id}, which this client never opened")

    @staticmethod
    def _unpad(flags: int, payload: bytes, kind: str) -> bytes:
        if not flags & _PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise _ProtocolError(_PROTOCOL_ERROR, f"{kind} with more padding than payload")
        return payload[1:len(payload) - payload[0]]

    def _receive_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._check_stream_id(stream_id, "DATA")
        # Padding included: it counts against the windows. (The window is credited as it is spent, so a server
        # cannot run past it; a stream keeps at most _MAX_ANSWER_BODY of its 16 MiB window.)
        self._received += len(payload)
        if self._received >= _CREDIT_AT:
            self._outbound += _frame(_WINDOW_UPDATE, 0, 0, _U32.pack(self._received))
            self._received = 0
        data = self._unpad(flags, payload, "DATA")
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we reset or failed: its late frames only count for the connection
        if stream.status == 0:
            self._stream_error(stream_id, stream, _PROTOCOL_ERROR, "DATA before the answer's headers")
            return
        if len(stream.body) + len(data) > _MAX_ANSWER_BODY:
            self._stream_error(stream_id, stream, _CANCEL, f"an answer over {_MAX_ANSWER_BODY} bytes")
            return
        stream.body += data
        if flags & _END_STREAM:
            self._answered(stream_id, stream)

    def _receive_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._check_stream_id(stream_id, "HEADERS")
        block = self._unpad(flags, payload, "HEADERS")
        if flags & _PRIORITY_FLAG:
            if len(block) < 5:
                raise _ProtocolError(_FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            block = block[5:]
        if flags & _END_HEADERS:
            self._receive_header_block(stream_id, block, bool(flags & _END_STREAM))
        else:
            self._block = _HeaderBlock(stream_id, bool(flags & _END_STREAM), [block], 9 + len(payload))

    def _receive_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._block
        if block is None or block.stream_id != stream_id:
            raise _ProtocolError(_PROTOCOL_ERROR, f"CONTINUATION on stream {stream_id} outside its header block")
        block.fragments.append(payload)
        block.size += 9 + len(payload)
        if block.size > _MAX_HEADER_LIST:
            # (Frame headers counted: a flood of empty CONTINUATION frames ends here too.)
            raise _ProtocolError(_PROTOCOL_ERROR, "a header block over the header list limit")
        if flags & _END_HEADERS:
            self._block = None
            self._receive_header_block(stream_id, b"".join(block.fragments), block.end_stream)

    def _receive_header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        # Decoded whatever the stream's state: the HPACK table is the connection's, every block updates it.
        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise _ProtocolError(_COMPRESSION_ERROR, f"an answer's headers do not decode: {exc!r}") from exc
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.status:  # trailers: their content is not part of the answer we keep
            if end_stream:
                self._answered(stream_id, stream)
            else:
                self._stream_error(stream_id, stream, _PROTOCOL_ERROR, "trailers without END_STREAM")
            return
        status = 0
        fields: dict[str, str] = {}
        for name, value in headers:
            if name == b":status":
                status = int(value) if len(value) == 3 and value.isdigit() else -1
            else:  # never raising: a header that is not UTF-8 cannot fail the connection
                fields[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        if status < 100 or (status < 200 and end_stream):
            self._stream_error(stream_id, stream, _PROTOCOL_ERROR, "an answer without a valid final :status")
        elif status >= 200:  # (an informational answer, 103 Early Hints, ...: the final one is still to come)
            stream.status, stream.headers = status, fields
            if end_stream:
                self._answered(stream_id, stream)

    def _answered(self, stream_id: int, stream: _Stream) -> None:
        # Popped now, not when its sender next runs, so that a request started in between finds the slot free.
        del self.streams[stream_id]
        if not stream.sent_all:
            # Answered before its body went (RFC 9113 section 8.1 allows a server that): our side is reset, or
            # the stream would hold one of the server's slots for good.
            self._reset(stream_id, _CANCEL)
        if not stream.future.done():
            stream.future.set_result(HttpReply(stream.status, stream.headers, bytes(stream.body)))
        self._pool._stream_freed()

    def _stream_error(self, stream_id: int, stream: _Stream, code: int, detail: str) -> None:
        """The server broke the protocol on one stream (RFC 9113 section 5.4.2): that request fails, the stream is
        reset, the connection lives on."""
        del self.streams[stream_id]
        self._reset(stream_id, code)
        stream.fail(f"protocol error on the stream: {detail}")
        self._pool._stream_freed()

    def _receive_reset(self, stream_id: int, payload: bytes) -> None:
        self._check_stream_id(stream_id, "RST_STREAM")
        if len(payload) != 4:
            raise _ProtocolError(_FRAME_SIZE_ERROR, "a malformed RST_STREAM")
        stream = self.streams.pop(stream_id, None)
        if stream is not None:  # (else one we gave up or that ended already: its slot was freed then)
            stream.fail(f"stream reset by server (code {_U32.unpack(payload)[0]})")
            self._pool._stream_freed()

    def _receive_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ProtocolError(_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise _ProtocolError(_FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise _ProtocolError(_FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        self._settings_seen = True
        for code, value in _SETTING.iter_unpack(payload):
            if code == _HEADER_TABLE_SIZE:
                self._resize_encoder_table(min(value, _MAX_ENCODER_TABLE))
            elif code == _ENABLE_PUSH:
                if value != 0:
                    raise _ProtocolError(_PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value} from a server")
            elif code == _MAX_CONCURRENT_STREAMS:
                self._stream_limit = min(value, _MAX_STREAMS_PER_CONNECTION)
            elif code == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ProtocolError(_FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
                delta = value - self._initial_send_window
                self._initial_send_window = value
                for stream in self.streams.values():  # open streams' windows move by the change (may go negative)
                    stream.send_window += delta
                    if stream.send_window > _MAX_WINDOW:
                        raise _ProtocolError(_FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif code == _MAX_FRAME_SIZE:
                if not _DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ProtocolError(_PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self._max_frame_size = value
            # MAX_HEADER_LIST_SIZE is advisory (our request headers are small and fixed); others are unknown.
        self._outbound += _frame(_SETTINGS, _ACK, 0)
        self._window_open.set()
        self._pool._stream_freed()  # MAX_CONCURRENT_STREAMS may have grown

    def _resize_encoder_table(self, size: int) -> None:
        """Our next header block starts with the table size update(s) the server's decoder then expects."""
        encoder = self._encoder
        if size == encoder.header_table_size:
            return  # (set again to the same size, hpack forgets the update still pending: the decoder would refuse)
        encoder.header_table_size = size
        # RFC 7541 section 4.2: the smallest size since the last block, then the final one. hpack would signal every
        # size in between, and one above the server's latest limit fails its decoder (256 then 0: "256" is refused).
        changes = encoder.table_size_changes
        if len(changes) > 1:
            smallest = min(changes)
            encoder.table_size_changes = [smallest, size] if smallest != size else [size]

    def _receive_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(_FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        (increment,) = _U32.unpack(payload)
        increment &= _MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ProtocolError(_PROTOCOL_ERROR, "a WINDOW_UPDATE of 0 for the connection")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ProtocolError(_FLOW_CONTROL_ERROR, "the connection's window over 2^31-1")
        else:
            self._check_stream_id(stream_id, "WINDOW_UPDATE")
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if increment == 0 or stream.send_window > _MAX_WINDOW:
                code = _PROTOCOL_ERROR if increment == 0 else _FLOW_CONTROL_ERROR
                self._stream_error(stream_id, stream, code, f"a WINDOW_UPDATE of {increment}")
                return
        self._window_open.set()

    def _receive_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) < 8:
            raise _ProtocolError(_PROTOCOL_ERROR if stream_id else _FRAME_SIZE_ERROR, "a malformed GOAWAY")
        last_stream_id = _U32.unpack_from(payload)[0] & _MAX_STREAM_ID
        (code,) = _U32.unpack_from(payload, 4)
        # Streams above last_stream_id were not processed: they fail now, to be sent again elsewhere. Those at
        # or below it may still be answered; the connection closes once they are done.
        for sid in [sid for sid in self.streams if sid > last_stream_id]:
            self.streams.pop(sid).fail(f"GOAWAY (code {code})")
        self._retire()

    def _connection_error(self, code: int, detail: str) -> None:
        self.usable = False
        self._fail_all(f"protocol error: {detail}")
        self._pool._wake_all()  # now, not when the TLS close completes: waiters may open a new connection
        self.close(code)

    def _fail_all(self, detail: str) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(detail)


class H2Pool:
    """Connections to one origin (scheme https, host, port)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, max_connections: int) -> None:
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._max = max(1, max_connections)
        self._connections: list[_Connection] = []
        self._connecting: asyncio.Task[_Connection] | None = None
        # Callers waiting for a stream slot, first come first served: a freed slot wakes one of them, not all
        # (with all woken, each freed slot cost a pass over every waiter: quadratic in a backlog).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
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
        woken = False
        while True:
            if self._closed:
                raise TransportFailure("connection_error", "client closed")
            best = self.ready()
            if best is not None:
                if self._waiters and sum(connection.capacity for connection in self._connections) > 1:
                    self._wake_one()  # room for the next in line too (a connection opened, a limit raised)
                return best
            usable = sum(1 for connection in self._connections if connection.usable)
            if usable < self._max or self._connecting is not None:
                if self._connecting is None:
                    self._connecting = asyncio.ensure_future(self._open())
                    # Cleared when it ends, even if every caller waiting for it was cancelled meanwhile (else the
                    # next caller would be handed its stale outcome).
                    self._connecting.add_done_callback(self._opened)
                await asyncio.shield(self._connecting)
                continue
            waiter = asyncio.get_running_loop().create_future()
            # Woken but beaten to the slot (a caller that found it free without waiting): still first in line.
            (self._waiters.appendleft if woken else self._waiters.append)(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the slot is the next caller's
                else:
                    self._waiters.remove(waiter)
                raise
            woken = True

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

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # (retrieved: a failure no caller waited for is not "never retrieved")

    def _forget(self, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        self._wake_all()  # each may now open a connection

    def _stream_freed(self) -> None:
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        self._wake_all()


def header_list(
    pseudo: list[tuple[bytes, bytes]], headers: Mapping[str, str], length: int
) -> list[tuple[str, str] | tuple[bytes, bytes]]:
    """A request's header list: the pseudo-headers, the caller's and the body's length.

    The length changes from request to request: as a never-indexed literal it does not enter the HPACK table,
    where each new value would push older entries out (the 1 KB access token among them, which would then go
    again in full).
    """
    return [*pseudo, *headers.items(), NeverIndexedHeaderTuple(b"content-length", str(length).encode())]


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
            # As bytes, encoded once: hpack encodes every str header of every request.
            pseudo = [
                (b":method", b"POST"), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", path.encode()),
            ]
            target = self._targets[url] = (pool, pseudo)
        return target

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        """POST `body` with `headers` (names in lower case, as HTTP/2 requires) and return the answer."""
        pool, pseudo = self._target(url)
        request_headers = header_list(pseudo, headers, len(body))
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
