"""providers/h2client.py's framing against the ``h2`` library's server side, in memory, under hypothesis.

h2 is an independent HTTP/2 implementation and a strict one: as the server here it checks every frame and header
block the client sends, and it builds the answers the client must read, with padding, CONTINUATION frames,
informational answers, trailers and changed SETTINGS, cut into arbitrary pieces as TCP may deliver them. A
second property feeds the client frames and bytes no server should send: it must never raise, and either carry on
or end the connection with every open request failed as ``connection_error``.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from dataclasses import dataclass, field

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushsvc.providers.h2client import H2Pool, _Connection, header_list
from pushsvc.providers.transport import HttpReply, TransportFailure


class _Wire:
    """The client's end of the connection: what it writes is kept for the server."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray) -> None:
        assert not self.closed, "a write after close"
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        return data


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    data_frames: int
    padding: int
    informational: bool
    trailers: bool


@dataclass
class Exchange:
    body: bytes
    answer: Answer
    start_at: int  # the step at which its request starts (after the server's SETTINGS, some of them)
    seen_headers: dict[bytes, bytes] = field(default_factory=dict)
    seen_body: bytearray = field(default_factory=bytearray)


header_names = st.sampled_from([b"x-a", b"x-b", b"etag", b"retry-after", b"x-long"])
header_values = st.binary(max_size=40).map(lambda v: bytes(b for b in v if b >= 0x20 and b != 0x7F))
answers = st.builds(
    Answer,
    status=st.sampled_from([200, 204, 400, 404, 429, 500, 503]),
    headers=st.lists(st.tuples(header_names, header_values), max_size=4, unique_by=lambda h: h[0]).flatmap(
        lambda hs: st.booleans().map(lambda big: [*hs, (b"x-big", b"v" * 20_000)] if big else hs)
    ),
    body=st.binary(max_size=40_000),
    data_frames=st.integers(1, 5),
    padding=st.integers(0, 255),
    informational=st.booleans(),
    trailers=st.booleans(),
)
exchanges = st.lists(
    st.builds(Exchange, body=st.binary(max_size=100_000), answer=answers, start_at=st.integers(0, 40)),
    min_size=1, max_size=4,
)
server_settings = st.fixed_dictionaries({
    SettingCodes.INITIAL_WINDOW_SIZE: st.sampled_from([1_000, 16_384, 65_535, 1 << 20]),
    SettingCodes.MAX_FRAME_SIZE: st.sampled_from([16_384, 40_000]),
    SettingCodes.HEADER_TABLE_SIZE: st.sampled_from([0, 256, 4_096]),
})


def _server() -> H2Connection:
    server = H2Connection(H2Configuration(
        client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
    ))
    server.initiate_connection()
    return server


_UNUSED_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (the pool never connects here: its connection is in memory)


def _client() -> tuple[_Connection, _Wire]:
    connection = _Connection(H2Pool("peer.test", 443, _UNUSED_TLS, 1))
    wire = _Wire()
    connection.connection_made(wire)  # type: ignore[arg-type]
    return connection, wire


_PSEUDO = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"peer.test"), (b":path", b"/send")]


def _request_headers(size: int, **headers: str) -> list[tuple[str, str] | tuple[bytes, bytes]]:
    return header_list(_PSEUDO, {name.replace("_", "-"): value for name, value in headers.items()}, size)


def _answer(server: H2Connection, stream_id: int, answer: Answer) -> None:
    if answer.informational:
        server.send_headers(stream_id, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
    headers = [(b":status", str(answer.status).encode()), *answer.headers]
    if not answer.body and not answer.trailers:
        server.send_headers(stream_id, headers, end_stream=True)
        return
    server.send_headers(stream_id, headers)
    size = -(-len(answer.body) // answer.data_frames) or 1
    pieces = [answer.body[i:i + size] for i in range(0, len(answer.body), size)] or [b""]
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1 and not answer.trailers
        # Padding only where the frame has room for it under the 16 KiB frame limit.
        padding = answer.padding if len(piece) + answer.padding < 16_000 else 0
        server.send_data(stream_id, piece, end_stream=last, pad_length=padding or None)
    if answer.trailers:
        server.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)


async def _exchange(
    exchanges: list[Exchange], start_settings: dict[int, int], later_settings: dict[int, int], change_at: int,
    cuts: list[int],
) -> list[HttpReply | BaseException]:
    client, wire = _client()
    server = _server()
    server.update_settings({**start_settings, SettingCodes.MAX_CONCURRENT_STREAMS: 100})
    by_stream: dict[int, Exchange] = {}
    tasks: dict[int, asyncio.Task[HttpReply]] = {}  # by exchange number
    cut = itertools.cycle(cuts)
    for step in range(2000):
        for number, x in enumerate(exchanges):
            if x.start_at == step:  # requests start at any point: before, during or after a SETTINGS change
                tasks[number] = asyncio.create_task(client.request(
                    _request_headers(len(x.body), content_type="application/json", x_number=str(number)), x.body
                ))
        await asyncio.sleep(0)
        if step == change_at:  # new SETTINGS at any point: before, during or after the bodies go
            server.update_settings(later_settings)
        for event in server.receive_data(wire.take()):
            if isinstance(event, RequestReceived):
                exchange = exchanges[int(dict(event.headers)[b"x-number"])]
                by_stream[event.stream_id] = exchange
                exchange.seen_headers = dict(event.headers)
            elif isinstance(event, DataReceived):
                by_stream[event.stream_id].seen_body += event.data
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                _answer(server, event.stream_id, by_stream[event.stream_id].answer)
        data = server.data_to_send()
        while data:  # as TCP may deliver it: in pieces of any size
            size = next(cut)
            client.data_received(data[:size])
            data = data[size:]
        if len(tasks) == len(exchanges) and all(task.done() for task in tasks.values()) and not wire.sent:
            break
        await asyncio.sleep(0)
    assert len(tasks) == len(exchanges), "requests never started"
    assert all(task.done() for task in tasks.values()), "requests left without an answer"
    assert not wire.closed
    assert client.streams == {}
    return [tasks[number].exception() or tasks[number].result() for number in range(len(exchanges))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    exchanges=exchanges, start_settings=server_settings, later_settings=server_settings,
    change_at=st.integers(0, 40), cuts=st.lists(st.integers(1, 20_000), min_size=1, max_size=8),
)
async def test_answers_arrive_whole_however_they_are_framed_and_cut(
    exchanges: list[Exchange], start_settings: dict[int, int], later_settings: dict[int, int], change_at: int,
    cuts: list[int],
) -> None:
    results = await _exchange(exchanges, start_settings, later_settings, change_at, cuts)
    for exchange, result in zip(exchanges, results, strict=True):
        assert isinstance(result, HttpReply), result
        answer = exchange.answer
        expected_headers = {name.decode(): value.decode("utf-8", "replace") for name, value in answer.headers}
        assert (result.status, dict(result.headers), result.body) == (answer.status, expected_headers, answer.body)
        # What the server read: the body, and the headers as sent.
        assert bytes(exchange.seen_body) == exchange.body
        assert exchange.seen_headers[b"content-length"] == str(len(exchange.body)).encode()
        assert exchange.seen_headers[b"content-type"] == b"application/json"


frames = st.builds(
    lambda kind, flags, stream_id, payload: (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload
    ),
    kind=st.integers(0, 12),
    flags=st.integers(0, 255),
    stream_id=st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 + 1, 1001]),
    payload=st.binary(max_size=48),
)


async def _feed_hostile(parts: list[bytes]) -> None:
    client, wire = _client()
    server = _server()
    tasks = [asyncio.create_task(client.request(_request_headers(n), b"x" * n)) for n in (0, 9)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    server.receive_data(wire.take())
    client.data_received(server.data_to_send())  # a well-behaved start: the server's SETTINGS
    for part in parts:
        client.data_received(part)  # must not raise, whatever arrives
        if wire.closed:
            break
    await asyncio.sleep(0)
    if wire.closed:
        # The connection ended: every request failed as a connection error, none is left waiting.
        assert client.streams == {} and not client.usable
        for task in tasks:
            await asyncio.sleep(0)
            assert task.done()
            exception = task.exception()
            assert isinstance(exception, TransportFailure) and exception.reason == "connection_error"
    else:
        # It lives on (or, after a GOAWAY, until its last streams end): what random frames ended was an answer or a
        # stream error, nothing else.
        assert client.usable or client.streams
        for task in tasks:
            if task.done():
                outcome = task.exception() or task.result()
                assert isinstance(outcome, HttpReply | TransportFailure), outcome
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@settings(max_examples=1000, deadline=None)
@given(st.lists(frames, max_size=12))
async def test_hostile_frames_never_raise_and_end_the_connection_cleanly(parts: list[bytes]) -> None:
    await _feed_hostile(parts)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
async def test_hostile_bytes_never_raise_and_end_the_connection_cleanly(parts: list[bytes]) -> None:
    await _feed_hostile(parts)


def _raw(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def _data_sent(wire: _Wire, stream_id: int) -> int:
    """DATA payload bytes the client wrote on `stream_id` since the last look (frames parsed by hand)."""
    data = wire.take()
    if data.startswith(b"PRI * HTTP/2.0"):
        data = data[24:]
    total = 0
    while data:
        length, kind, sid = int.from_bytes(data[:3], "big"), data[3], int.from_bytes(data[5:9], "big")
        total += length if (kind, sid) == (0, stream_id) else 0
        data = data[9 + length:]
    return total


async def test_a_lower_initial_window_applies_to_a_body_already_in_flight() -> None:
    # RFC 9113 section 6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change moves the windows of open streams by the
    # difference, which may leave them negative; the sender then waits for that much credit and more.
    client, wire = _client()
    client.data_received(_raw(4, 0, 0))  # the server's SETTINGS: defaults, a 65,535-byte window
    client.data_received(_raw(8, 0, 0, (10**6).to_bytes(4, "big")))  # room on the connection
    task = asyncio.create_task(client.request(_request_headers(200_000), b"x" * 200_000))
    for _ in range(10):
        await asyncio.sleep(0)
    assert _data_sent(wire, 1) == 65_535  # the stream's window, spent
    client.data_received(_raw(4, 0, 0, (4).to_bytes(2, "big") + (1_000).to_bytes(4, "big")))  # now -64,535
    client.data_received(_raw(8, 0, 1, (64_535 + 500).to_bytes(4, "big")))  # back to +500
    for _ in range(10):
        await asyncio.sleep(0)
    assert _data_sent(wire, 1) == 500
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_request_lengths_stay_out_of_the_hpack_table_and_the_token_stays_in_it() -> None:
    # Each new content-length entering the HPACK table would push older entries out, the 1 KB access token among
    # them, which would then go again in full. The server's decoder table shows what the client indexed.
    client, wire = _client()
    server = _server()
    token = "Bearer " + "t" * 1000
    sizes = []
    for length in range(100, 160):
        task = asyncio.create_task(client.request(_request_headers(length, authorization=token), b"x" * length))
        for _ in range(3):
            await asyncio.sleep(0)
        sent = wire.take()
        sizes.append(len(sent))
        for event in server.receive_data(sent):
            if isinstance(event, StreamEnded):
                server.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)
            if isinstance(event, RequestReceived):
                assert dict(event.headers)[b"content-length"] == str(length).encode()
        client.data_received(server.data_to_send())
        assert (await task).status == 200
    table = server.decoder.header_table.dynamic_entries
    assert b"content-length" not in {name for name, _ in table}
    assert (b"authorization", token.encode()) in table
    assert max(sizes[1:]) < 300  # after the first request, the token goes as an index: no request carries it again


def _frames_sent(wire: _Wire) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame the client wrote since the last look."""
    data = wire.take()
    if data.startswith(b"PRI * HTTP/2.0"):
        data = data[24:]
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + length]))
        data = data[9 + length:]
    return frames


async def _started(client: _Connection, wire: _Wire, body: bytes = b"") -> asyncio.Task[HttpReply]:
    """A request under way on `client`, after a well-behaved SETTINGS from the server."""
    client.data_received(_raw(4, 0, 0))
    task = asyncio.create_task(client.request(_request_headers(len(body)), body))
    for _ in range(3):
        await asyncio.sleep(0)
    wire.take()
    return task


async def test_a_flood_of_continuation_frames_ends_the_connection() -> None:
    # Empty CONTINUATION frames add nothing to a header block, so a limit on its bytes alone never trips: each
    # frame is counted with its 9-byte header, and the block's limit (64 KiB) ends the flood after ~7,300 frames.
    client, wire = _client()
    task = await _started(client, wire)
    client.data_received(_raw(1, 0, 1, b"\x88") + _raw(9, 0, 1) * 10_000)  # HEADERS without END_HEADERS, then
    assert wire.closed
    (failure,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(failure, TransportFailure) and failure.reason == "connection_error"
    (goaway,) = [frame for frame in _frames_sent(wire) if frame[0] == 7]
    assert goaway[3][4:8] == (1).to_bytes(4, "big")  # PROTOCOL_ERROR


async def test_a_settings_acknowledgement_is_not_the_servers_preface() -> None:
    client, wire = _client()
    task = asyncio.create_task(client.request(_request_headers(0), b""))
    await asyncio.sleep(0)
    client.data_received(_raw(4, 1, 0) + _raw(4, 0, 0))  # an ACK first, then SETTINGS
    assert wire.closed
    (failure,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(failure, TransportFailure) and failure.reason == "connection_error"


async def test_a_request_without_a_body_is_not_reset_after_its_answer() -> None:
    # Its END_STREAM went with its headers: a reset after the answer would be one more frame per request, and a
    # server guarding against rapid resets (CVE-2023-44487) counts them.
    client, wire = _client()
    task = await _started(client, wire)
    server = _server()
    client.data_received(_raw(1, 0x5, 1, server.encoder.encode([(b":status", b"200")])))  # END_STREAM|END_HEADERS
    for _ in range(3):
        await asyncio.sleep(0)
    assert (await task).status == 200
    assert [kind for kind, *_ in _frames_sent(wire) if kind == 3] == []  # no RST_STREAM


@pytest.mark.parametrize("one_frame", [False, True])
async def test_the_same_smaller_table_size_twice_still_shrinks_the_encoders_table(one_frame: bool) -> None:
    # hpack forgets its pending table size update when set to the same size again; RFC 9113 lets a SETTINGS repeat
    # a setting. The server's decoder (h2's, strict) then refuses our next header block.
    client, wire = _client()
    server = _server()
    server.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    if one_frame:
        table_zero = (1).to_bytes(2, "big") + (0).to_bytes(4, "big")
        server.data_to_send()  # (h2's own frame dropped: the same setting twice in one, written by hand)
        server_bytes = _raw(4, 0, 0, table_zero * 2)
        # h2 must still see its own SETTINGS acknowledged: one ACK from the client covers it.
    else:
        server.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
        server_bytes = server.data_to_send()
    client.data_received(server_bytes)
    server.receive_data(wire.take())  # the client's preface and acknowledgements
    for length in (10, 20):
        task = asyncio.create_task(client.request(_request_headers(length, x_note="again"), b"x" * length))
        for _ in range(3):
            await asyncio.sleep(0)
        events = server.receive_data(wire.take())  # h2 raises if the block does not honour the smaller table
        assert any(isinstance(event, RequestReceived) for event in events)
        task.cancel()
    assert server.decoder.header_table_size == 0
