"""providers/h2client.py against a scripted TLS HTTP/2 server: flow control, stream limits, GOAWAY, resets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.transport import TransportFailure
from pushsvc.simulators import tls
from tests.peers.h2_scripted import ScriptedH2Server as Server
from tests.peers.h2_scripted import client_context, serving

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def server(pki: tls.TestPki) -> AsyncIterator[Server]:
    async with serving(pki, window=16_384, max_streams=4) as s:
        yield s


async def test_large_body_waits_for_flow_control_windows(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    try:
        body = b"x" * 200_000  # far over the server's 16 KiB windows
        reply = await transport.post(f"https://localhost:{server.port}/v1/send", {"a": "b"}, body)
    finally:
        await transport.aclose()
    assert reply.status == 200
    assert reply.headers["x-size"] == "200000"


async def test_streams_stay_within_the_server_limit_and_share_connections(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=2, timeout=5.0)
    try:
        replies = await asyncio.gather(
            *(transport.post(f"https://localhost:{server.port}/p", {}, b"%d" % i) for i in range(50))
        )
    finally:
        await transport.aclose()
    assert {r.status for r in replies} == {200}
    assert server.max_open_seen <= server.max_streams
    assert server.connections <= 2


async def test_goaway_fails_open_streams_and_a_new_connection_is_used(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    url = f"https://localhost:{server.port}/p"
    try:
        assert (await transport.post(url, {}, b"1")).status == 200
        server.mode = "goaway"
        with pytest.raises(TransportFailure) as failure:
            await transport.post(url, {}, b"2")
        assert failure.value.reason == "connection_error"
        server.mode = "ok"
        assert (await transport.post(url, {}, b"3")).status == 200
    finally:
        await transport.aclose()
    assert server.connections == 2


async def test_reset_stream_fails_only_that_request(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    url = f"https://localhost:{server.port}/p"
    try:
        server.mode = "reset"
        with pytest.raises(TransportFailure) as failure:
            await transport.post(url, {}, b"1")
        assert failure.value.reason == "connection_error"
        server.mode = "ok"
        assert (await transport.post(url, {}, b"2")).status == 200
    finally:
        await transport.aclose()
    assert server.connections == 1


async def test_an_answer_header_that_is_not_utf8_is_read_and_the_connection_lives_on(
    server: Server, pki: tls.TestPki
) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    try:
        server.mode = "latin1"
        reply = await transport.post(f"https://localhost:{server.port}/p", {"x-request": "é"}, b"12")
        server.mode = "ok"
        again = await transport.post(f"https://localhost:{server.port}/p", {}, b"123")
    finally:
        await transport.aclose()
    assert (reply.status, reply.headers["x-size"], reply.headers["x-note"]) == (200, "2", "caf\ufffd")
    assert reply.body == b'{"received":2}'
    assert (again.status, again.headers["x-size"]) == (200, "3")
    assert server.connections == 1


async def test_no_answer_is_a_timeout(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=0.3)
    try:
        server.mode = "hold"
        with pytest.raises(TransportFailure) as failure:
            await transport.post(f"https://localhost:{server.port}/p", {}, b"1")
    finally:
        await transport.aclose()
    assert failure.value.reason == "timeout"


async def test_a_long_lived_connection_holds_only_its_open_streams(server: Server, pki: tls.TestPki) -> None:
    # h2 remembered 65,536 closed streams per connection: ~100 MB over a replica's provider connections after a
    # 1M-device campaign. This client keeps the open ones only, whatever went through the connection.
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    sent = 5000
    try:
        for start in range(0, sent, 500):
            replies = await asyncio.gather(
                *(transport.post(f"https://localhost:{server.port}/p", {}, b"x") for _ in range(start, start + 500))
            )
            assert {r.status for r in replies} == {200}
        (pool,) = transport._pools.values()
        (connection,) = pool._connections
        assert connection._next_stream_id == 2 * sent + 1  # all on this one connection
        assert connection.streams == {}
    finally:
        await transport.aclose()
    assert server.connections == 1


async def test_an_answer_before_the_body_ends_the_stream_and_frees_its_slot(server: Server, pki: tls.TestPki) -> None:
    # The server answers at the headers and never opens a window for the body (4 streams at most, 16 KiB
    # windows): each request must see its answer instead of waiting for a window, and end its side of the
    # stream, or after 4 of them no stream is left on the connection.
    server.mode = "early"
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    try:
        url = f"https://localhost:{server.port}/p"
        assert (await transport.post(url, {}, b"x" * 100_000)).status == 200  # (its body may beat the SETTINGS)
        # At once: a request waiting for a slot must find the answered stream reset, not still half open.
        replies = await asyncio.gather(
            *(transport.post(url, {}, b"x" * 100_000) for _ in range(12))
        )
        assert [reply.status for reply in replies] == [200] * 12
        (pool,) = transport._pools.values()
        (connection,) = pool._connections
        assert connection.streams == {}  # nothing held open
        await server.assert_early_answers_reset(12)
    finally:
        await transport.aclose()
    assert server.connections == 1
