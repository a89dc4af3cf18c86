"""providers/h2client.py against the protocol's corners, on a scripted TLS HTTP/2 server (tests/peers/h2_scripted.py):
what the client must read (CONTINUATION, padding, 1xx, trailers, tiny and unknown frames), answer (PING, SETTINGS
changes), give back (flow-control credit), and survive (GOAWAY, resets, garbage, PUSH_PROMISE, cancellation).

The server is h2's strict server side: besides its own checks, each test asserts that it refused nothing the client
sent (``protocol_errors``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from h2.settings import SettingCodes

from pushsvc.providers.h2client import _MAX_ANSWER_BODY as MAX_ANSWER_BODY
from pushsvc.providers.h2client import H2Pool, H2Transport
from pushsvc.providers.transport import HttpReply, TransportFailure
from pushsvc.simulators import tls
from tests.peers.h2_scripted import CONTINUATION, DATA, HEADERS, PING, RST_STREAM, answer_body, client_context, serving
from tests.peers.h2_scripted import ScriptedH2Server as Server

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def server(pki: tls.TestPki) -> AsyncIterator[Server]:
    async with serving(pki, window=16_384, max_streams=4) as s:
        yield s


@pytest_asyncio.fixture
async def client(pki: tls.TestPki) -> AsyncIterator[H2Transport]:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    try:
        yield transport
    finally:
        await transport.aclose()


def url(server: Server) -> str:
    return f"https://localhost:{server.port}/v1/projects/p/messages:send"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def answered_then_served_on(server: Server, client: H2Transport, mode: str, body: bytes) -> HttpReply:
    """`body` posted with the server in `mode`, then another in "ok": the first is the server's 200 for `body`,
    the second is answered on the same connection, and the server refused nothing. Returns the first answer."""
    server.mode = mode
    reply = await client.post(url(server), {}, body)
    server.mode = "ok"
    again = await client.post(url(server), {}, b"next")
    assert_answers(reply, body)
    assert (again.status, again.headers["x-size"]) == (200, "4")
    assert server.connections == 1
    assert server.protocol_errors == []
    return reply


def assert_answers(reply: HttpReply, body: bytes) -> None:
    """`reply` is the 200 answer of a request that sent `body` (x-size and x-sha256 as the server computed them)."""
    assert (reply.status, reply.headers["x-size"], reply.headers["x-sha256"]) == (200, str(len(body)), sha256(body))


# -------------------------------------------------------------------------------------------- reading answers


async def test_a_header_block_over_16_kib_arrives_as_headers_and_continuation(
    server: Server, client: H2Transport
) -> None:
    # 24,000 base64 characters: still over 16 KiB once Huffman-coded, so over one frame (the client's max 16 KiB).
    value = base64.b64encode(hashlib.shake_256(b"big header").digest(18_000)).decode()
    server.mode = "answer"
    server.answer_headers = [(b"x-big", value.encode())]
    reply = await client.post(url(server), {}, b"first")
    assert server.frames_sent[CONTINUATION] >= 1  # (the block really was split)
    server.answer_headers = []
    again = await client.post(url(server), {}, b"second")
    assert_answers(reply, b"first")
    assert reply.headers["x-big"] == value
    assert reply.body == b'{"received":5}'
    assert_answers(again, b"second")
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_padded_answers_are_read_exactly_and_their_padding_is_given_back(
    server: Server, client: H2Transport
) -> None:
    # HEADERS padded by 200 bytes, DATA frames of 8 bytes padded by 255 each. Padding counts against flow control;
    # a client that handed back only the data bytes would see its connection window shrink by 256 bytes a frame.
    # So the answers carry, in padding alone, more than the window the client opened: without the padding's credit
    # back, the later ones never arrive (a timeout).
    server.mode = "padded"
    server.pad_chunk, frames_per_answer = 8, 340
    server.answer_size = server.pad_chunk * frames_per_answer
    first = await client.post(url(server), {}, b"padded 0")
    assert first.body == answer_body(sha256(b"padded 0"), server.answer_size)
    window = server.client_window  # the connection window the client opened (16 MiB today)
    assert window <= 64 << 20, "a window this large makes the test too slow to exhaust it: rework the test"
    count = math.ceil(window * 1.05 / (frames_per_answer * 256))
    bodies = [b"padded %d" % i for i in range(1, count + 1)]
    replies = await asyncio.gather(*(client.post(url(server), {}, body) for body in bodies))
    for body, reply in zip(bodies, replies, strict=True):
        assert (reply.status, reply.headers["x-sha256"]) == (200, sha256(body))
        assert reply.body == answer_body(sha256(body), server.answer_size)
    assert server.padding_sent > server.client_window  # (padding alone outgrew the window)
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_an_informational_103_before_the_answer_is_skipped(server: Server, client: H2Transport) -> None:
    reply = await answered_then_served_on(server, client, "early_hints", b"hinted")
    assert reply.body == b'{"received":6}'
    assert "link" not in reply.headers  # the 103's header is not the answer's
    assert server.frames_sent[HEADERS] == 3  # 103, 200, and the next answer's


async def test_trailers_after_the_body_end_the_answer_and_the_connection_serves_on(
    server: Server, client: H2Transport
) -> None:
    reply = await answered_then_served_on(server, client, "trailers", b"with trailers")
    assert reply.body == b"trailed body"


async def test_an_answer_in_one_byte_data_frames_cut_anywhere_is_read_whole(
    server: Server, client: H2Transport
) -> None:
    # One DATA frame per body byte, and the bytes written 7 at a time: frames (and frame headers) arrive in pieces.
    reply = await answered_then_served_on(server, client, "dribble", b"dribble")
    assert reply.body == b"dribbled, one byte a frame"
    assert server.frames_sent[DATA] >= len(reply.body) + 1


async def test_a_headers_only_answer_with_end_stream_has_an_empty_body(server: Server, client: H2Transport) -> None:
    server.mode = "headers_only"
    replies = await asyncio.gather(*(client.post(url(server), {}, b"%d" % i) for i in range(10)))
    for i, reply in enumerate(replies):
        assert_answers(reply, b"%d" % i)
        assert reply.body == b""
    assert server.frames_sent[DATA] == 0
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_unknown_frame_types_and_priority_frames_are_ignored(server: Server, client: H2Transport) -> None:
    # Unknown types on stream 0 and between the answer's HEADERS and DATA; PRIORITY for the stream and for the next
    # stream, still idle (RFC 9113 section 6.3 allows it in any state), which the next request then opens.
    reply = await answered_then_served_on(server, client, "extension_frames", b"extended")
    assert reply.body == b"extended"


# ------------------------------------------------------------------------------------ answering the server


async def test_a_server_ping_is_acknowledged_with_its_data(server: Server, client: H2Transport) -> None:
    await answered_then_served_on(server, client, "ping", b"ping")
    await until(lambda: server.ping_acks != [])
    assert server.frames_sent[PING] == 1
    assert server.ping_acks == [b"pushsvc!"]


async def test_a_body_in_flight_follows_the_initial_window_down_to_1000_and_back_up(
    server: Server, client: H2Transport
) -> None:
    # At 20,000 bytes received the server lowers SETTINGS_INITIAL_WINDOW_SIZE from 16,384 to 1,000 (the stream's
    # window goes negative: the client must wait for it), at 100,000 raises it to 1 MiB. h2 refuses a DATA frame
    # past the window (a protocol error); the server's own count shows the DATA frames sent under 1,000.
    body = hashlib.shake_256(b"window dance").digest(200_000)
    reply = await client.post(url(server), {"x-mode": "window_dance"}, body)
    assert_answers(reply, body)
    assert len(server.low_window_frames) >= 50, server.low_window_frames
    assert max(server.low_window_frames) <= 1_000
    assert server.connections == 1
    assert server.protocol_errors == []


@pytest.mark.parametrize("table_size", [0, 256])
async def test_a_smaller_header_table_is_honoured_by_the_client_encoder(
    server: Server, client: H2Transport, table_size: int
) -> None:
    # Once the client acknowledged the new SETTINGS_HEADER_TABLE_SIZE, hpack (in h2's server) refuses a header block
    # unless the client's encoder shrank its dynamic table to it (a table size update, RFC 7541 section 4.2).
    repeated = "r" * 100
    assert (await client.post(url(server), {"x-repeat": repeated, "x-seq": "first"}, b"1")).status == 200
    server.update_settings({SettingCodes.HEADER_TABLE_SIZE: table_size})
    sequential = [await client.post(url(server), {"x-repeat": repeated, "x-seq": str(i)}, b"1") for i in range(40)]
    concurrent = await asyncio.gather(
        *(client.post(url(server), {"x-repeat": repeated, "x-seq": str(i)}, b"1") for i in range(40, 100))
    )
    assert {reply.status for reply in sequential + concurrent} == {200}
    assert server.table_limits == [table_size]  # (the client acknowledged it)
    assert [request["x-repeat"] for request in server.requests] == [repeated] * 101
    assert sorted(request["x-seq"] for request in server.requests[1:]) == sorted(str(i) for i in range(100))
    assert server.connections == 1
    assert server.protocol_errors == []


# ------------------------------------------------------------------------------------------- flow control


async def test_answers_far_over_the_receive_window_all_arrive(server: Server, client: H2Transport) -> None:
    # Answers of just under the 4 MiB the client keeps, together over three times its connection window: without
    # credit given back, the later ones stall (a timeout).
    server.mode = "big"
    server.answer_size = 1_000
    assert (await client.post(url(server), {}, b"warm up")).status == 200
    assert server.client_window <= 64 << 20, "a window this large makes the test too slow to exhaust it: rework it"
    server.answer_size = MAX_ANSWER_BODY - 1_000
    count = math.ceil(3.2 * server.client_window / server.answer_size)
    bodies = [b"big %d" % i for i in range(count)]
    replies = await asyncio.gather(*(client.post(url(server), {}, body) for body in bodies))
    for body, reply in zip(bodies, replies, strict=True):
        assert (reply.status, len(reply.body)) == (200, server.answer_size)
        assert reply.body == answer_body(sha256(body), server.answer_size)
    assert server.flow_sent > 3 * server.client_window
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_an_answer_over_the_kept_size_fails_alone(server: Server, client: H2Transport) -> None:
    # A server sending more than any push provider answers cannot fill the client's memory: that request fails,
    # its stream is reset, and the connection serves on.
    server.mode = "big"
    server.answer_size = MAX_ANSWER_BODY + 1
    with pytest.raises(TransportFailure) as failure:
        await client.post(url(server), {}, b"too big")
    assert failure.value.reason == "connection_error"
    server.answer_size = 10
    assert (await client.post(url(server), {}, b"next")).status == 200
    assert server.connections == 1
    assert server.protocol_errors == []


# ----------------------------------------------------------------------------------- streams and connections


async def test_a_thousand_posts_keep_within_four_streams_and_two_connections(pki: tls.TestPki) -> None:
    # "batch": the server answers once it handled all it read, so the client's streams stay open meanwhile and the
    # server sees how many it opens at once (h2 also refuses a fifth, once our SETTINGS are acknowledged).
    server = Server(window=16_384, max_streams=4)
    server.mode = "batch"
    await server.start(pki.server_context(["h2"]))
    transport = H2Transport(client_context(pki), max_connections=2, timeout=5.0)
    try:
        bodies = [b"%d" % i for i in range(1000)]
        replies = await asyncio.gather(*(transport.post(url(server), {}, body) for body in bodies))
    finally:
        await transport.aclose()
        await server.stop()
    for body, reply in zip(bodies, replies, strict=True):
        assert_answers(reply, body)
    assert server.max_open_streams == 4  # reached, never passed
    assert server.connections == 2  # (a second one opened when the first was full, no third)
    assert server.protocol_errors == []


async def test_a_freed_slot_wakes_one_waiting_post_not_all(pki: tls.TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    # 400 posts queued for 4 slots on one connection. Waking every waiter on each freed slot made each of them look
    # for a slot again: ~400 * 400 / 2 looks. One woken per slot (and on to the next while room is left) is a few
    # looks per post (~4 here).
    looks = 0
    ready = H2Pool.ready

    def counted(pool: H2Pool) -> object:
        nonlocal looks
        looks += 1
        return ready(pool)

    monkeypatch.setattr(H2Pool, "ready", counted)
    server = Server(window=16_384, max_streams=4)
    server.mode = "answer"
    await server.start(pki.server_context(["h2"]))
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    try:
        bodies = [b"%d" % i for i in range(400)]
        replies = await asyncio.gather(
            *(transport.post(url(server), {"x-number": str(i)}, body) for i, body in enumerate(bodies))
        )
    finally:
        await transport.aclose()
        await server.stop()
    for body, reply in zip(bodies, replies, strict=True):
        assert_answers(reply, body)
    assert looks < 5 * len(bodies), looks  # (waking them all: 20,600 here)
    assert server.connections == 1


async def test_cancelled_posts_reset_their_streams_and_free_their_slots(server: Server, client: H2Transport) -> None:
    # The server never answers: each cancelled post must reset its stream, or the 4 slots are gone after 4.
    server.mode = "hold"
    for done in (4, 8, 12):  # 12 cancellations on a connection of 4 streams
        tasks = [asyncio.create_task(client.post(url(server), {}, b"held")) for _ in range(4)]
        await until(lambda done=done: len(server.requests) == done)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        await until(lambda done=done: server.resets == done)
    server.mode = "ok"
    replies = await asyncio.gather(*(client.post(url(server), {}, b"%d" % i) for i in range(8)))
    assert [reply.headers["x-size"] for reply in replies] == ["1"] * 8
    assert server.resets == 12
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_a_reset_after_the_answer_headers_fails_that_request_only(server: Server, client: H2Transport) -> None:
    parked = asyncio.create_task(client.post(url(server), {"x-mode": "park"}, b"parked"))
    await until(lambda: server.parked == 1)
    with pytest.raises(TransportFailure) as failure:
        # HEADERS, "half a bo" of DATA, RST_STREAM (INTERNAL_ERROR); then the parked request is answered.
        await client.post(url(server), {"x-mode": "reset_mid"}, b"reset me")
    assert failure.value.reason == "connection_error"
    assert_answers(await parked, b"parked")
    assert (await client.post(url(server), {}, b"next")).status == 200
    assert server.frames_sent[RST_STREAM] == 1
    assert server.connections == 1
    assert server.protocol_errors == []


async def test_goaway_fails_the_requests_past_its_last_stream_and_a_new_connection_serves(
    server: Server, client: H2Transport
) -> None:
    # Streams 1 and 3 answered, 5 and 7 parked; then GOAWAY (NO_ERROR, last stream 3), the socket left open: 5 and 7
    # were not processed and must fail at once (retryable), not wait for an answer that will not come.
    assert (await client.post(url(server), {}, b"1")).status == 200
    assert (await client.post(url(server), {}, b"3")).status == 200
    server.mode = "park"
    tasks = [asyncio.create_task(client.post(url(server), {}, b"%d" % n)) for n in (5, 7)]
    await until(lambda: server.parked == 2)
    started = time.monotonic()
    await server.goaway()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert time.monotonic() - started < 1.0
    assert [type(result) for result in results] == [TransportFailure, TransportFailure]
    assert [result.reason for result in results if isinstance(result, TransportFailure)] == ["connection_error"] * 2
    server.mode = "ok"
    assert (await client.post(url(server), {}, b"next")).headers["x-size"] == "4"
    assert server.connections == 2
    assert server.protocol_errors == []


async def test_a_graceful_goaway_still_delivers_the_answers_within_its_last_stream(
    server: Server, client: H2Transport
) -> None:
    # GOAWAY (NO_ERROR, last stream = the parked request's), then 50 ms later that request's answer: RFC 9113
    # section 6.8 has the streams up to last_stream_id go on to completion.
    server.mode = "park"
    task = asyncio.create_task(client.post(url(server), {}, b"graceful"))
    await until(lambda: server.parked == 1)
    await server.goaway(answer_parked=True)
    reply = await task
    assert_answers(reply, b"graceful")
    server.mode = "ok"
    assert (await client.post(url(server), {}, b"next")).headers["x-size"] == "4"
    assert server.connections == 2
    assert server.protocol_errors == []


async def assert_connection_fails_and_recovers(server: Server, pki: tls.TestPki, mode: str) -> None:
    """Two parked requests and one in `mode`, which breaks the connection: all three fail with connection_error, not
    at the (1 s) timeout, and the next request is served on a new connection."""
    client = H2Transport(client_context(pki), max_connections=1, timeout=1.0)
    try:
        parked = [asyncio.create_task(client.post(url(server), {"x-mode": "park"}, b"parked")) for _ in range(2)]
        await until(lambda: server.parked == 2)
        results = await asyncio.gather(
            client.post(url(server), {"x-mode": mode}, b"breaks it"), *parked, return_exceptions=True
        )
        assert [type(result) for result in results] == [TransportFailure] * 3, results
        assert [r.reason for r in results if isinstance(r, TransportFailure)] == ["connection_error"] * 3, results
        assert (await client.post(url(server), {}, b"next")).headers["x-size"] == "4"
    finally:
        await client.aclose()
    assert server.connections == 2
    assert server.protocol_errors == []


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage_frame",
        "bad_hpack",
    ],
)
async def test_garbage_from_the_server_fails_the_open_requests_and_a_new_connection_serves(
    server: Server, pki: tls.TestPki, garbage: str
) -> None:
    # garbage_frame: a frame header announcing 16 MiB (the client allows 16 KiB: FRAME_SIZE_ERROR at the header)
    # and junk; bad_hpack: a HEADERS block naming a table entry that does not exist (COMPRESSION_ERROR).
    await assert_connection_fails_and_recovers(server, pki, garbage)


async def test_a_push_promise_the_client_did_not_allow_fails_the_connection(server: Server, pki: tls.TestPki) -> None:
    # The client sent SETTINGS_ENABLE_PUSH 0: a PUSH_PROMISE is then a connection error (RFC 9113 section 8.4).
    await assert_connection_fails_and_recovers(server, pki, "push_promise")


async def test_a_post_waiting_for_a_slot_moves_to_a_new_connection_when_the_full_one_breaks(
    pki: tls.TestPki,
) -> None:
    # Both slots taken by parked posts, a third waits; then the server breaks the connection and goes silent. The
    # broken connection's TLS close then takes long (up to 30 s), so the waiter must be woken when the error is
    # seen, not when the connection is finally lost: it is answered on a new connection within 1 s.
    server = Server(window=16_384, max_streams=2)
    await server.start(pki.server_context(["h2"]))
    client = H2Transport(client_context(pki), max_connections=1, timeout=1.0)
    try:
        assert (await client.post(url(server), {}, b"first")).status == 200  # (the server's limit known)
        parked = [asyncio.create_task(client.post(url(server), {"x-mode": "park"}, b"parked")) for _ in range(2)]
        await until(lambda: server.parked == 2)
        waiting = asyncio.create_task(client.post(url(server), {}, b"waits"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and len(server.requests) == 3  # (it waits for a slot)
        server.break_connections()
        results = await asyncio.gather(*parked, return_exceptions=True)
        reply = await waiting
    finally:
        await client.aclose()
        await server.stop()
    assert [getattr(result, "reason", result) for result in results] == ["connection_error"] * 2
    assert (reply.status, reply.headers["x-size"]) == (200, "5")
    assert server.connections == 2


async def test_a_header_hpack_cannot_encode_fails_its_post_and_no_request_follows_on_that_connection(
    server: Server, client: H2Transport
) -> None:
    # hpack may have put the headers before the bad one in its table already, which the server's copy never gets:
    # a request after it on the same connection could decode to other headers. That connection takes none.
    server.mode = "answer"
    assert (await client.post(url(server), {"x-first": "fine"}, b"first")).status == 200
    with pytest.raises(UnicodeEncodeError):
        await client.post(url(server), {"x-new": "indexed", "x-bad": "\ud800"}, b"bad")
    reply = await client.post(url(server), {"x-new": "indexed"}, b"after")
    assert_answers(reply, b"after")
    assert server.requests[-1]["x-new"] == "indexed"
    assert server.connections == 2
    assert server.protocol_errors == []


async def test_a_connection_dropped_mid_answer_fails_its_requests_at_once_and_the_next_goes_on_a_new_one(
    server: Server, client: H2Transport
) -> None:
    # No GOAWAY, no TLS close: the peer's socket is reset with two requests in flight. They fail as connection
    # errors (retryable) well within the 5 s timeout, and the next request opens a new connection.
    server.mode = "answer"
    assert (await client.post(url(server), {}, b"first")).status == 200
    parked = [asyncio.create_task(client.post(url(server), {"x-mode": "park"}, b"parked")) for _ in range(2)]
    await until(lambda: server.parked == 2)
    started = time.monotonic()
    server.abort_connections()
    results = await asyncio.gather(*parked, return_exceptions=True)
    assert time.monotonic() - started < 1.0
    assert [getattr(result, "reason", result) for result in results] == ["connection_error"] * 2
    assert_answers(await client.post(url(server), {}, b"after"), b"after")
    assert server.connections == 2
    assert server.protocol_errors == []
