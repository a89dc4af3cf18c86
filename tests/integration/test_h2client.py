"""providers/h2client.py against a scripted TLS HTTP/2 server: flow control, stream limits, GOAWAY, resets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes

from pushsvc.providers.h2client import H2Transport
from pushsvc.providers.transport import CLOSED_STREAMS_KEPT, TransportFailure
from pushsvc.simulators import tls

pytestmark = pytest.mark.integration


class Server:
    """Answers 200 with the request body length; ``mode`` scripts misbehaviour."""

    def __init__(self, window: int = 65_535, max_streams: int = 100) -> None:
        self.window = window
        self.max_streams = max_streams
        self.mode = "ok"  # ok | goaway | reset | hold
        self.connections = 0
        self.max_open_seen = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, context: ssl.SSLContext) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = H2Connection(H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: self.window, SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        )
        writer.write(conn.data_to_send())
        bodies: dict[int, int] = {}
        try:
            while data := await reader.read(65_536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        bodies[event.stream_id] = 0
                        self.max_open_seen = max(self.max_open_seen, len(bodies))
                    elif isinstance(event, DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, 0) + len(event.data)
                        # Open the windows only by what was consumed: the client must wait for them.
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        if self.mode == "goaway":
                            conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
                            writer.write(conn.data_to_send())
                            await writer.drain()
                            writer.close()
                            return
                        if self.mode == "reset":
                            conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                        elif self.mode == "ok":
                            size = bodies.pop(event.stream_id)
                            body = f'{{"received":{size}}}'.encode()
                            conn.send_headers(event.stream_id, [(":status", "200"), ("x-size", str(size))])
                            conn.send_data(event.stream_id, body, end_stream=True)
                        if self.mode != "hold":
                            bodies.pop(event.stream_id, None)
                writer.write(conn.data_to_send())
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls.TestPki:
    return tls.make_test_pki(Path(tmp_path_factory.mktemp("h2pki")))


def client_context(pki: tls.TestPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(pki.ca_file)
    return ctx


@pytest_asyncio.fixture
async def server(pki: tls.TestPki) -> AsyncIterator[Server]:
    s = Server(window=16_384, max_streams=4)
    await s.start(pki.server_context(["h2"]))
    try:
        yield s
    finally:
        await s.stop()


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


async def test_no_answer_is_a_timeout(server: Server, pki: tls.TestPki) -> None:
    transport = H2Transport(client_context(pki), max_connections=1, timeout=0.3)
    try:
        server.mode = "hold"
        with pytest.raises(TransportFailure) as failure:
            await transport.post(f"https://localhost:{server.port}/p", {}, b"1")
    finally:
        await transport.aclose()
    assert failure.value.reason == "timeout"


async def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams(
    server: Server, pki: tls.TestPki
) -> None:
    # h2 remembers 65,536 closed streams per connection by default: ~100 MB over a replica's provider
    # connections after a 1M-device campaign. Ours keep CLOSED_STREAMS_KEPT, whatever went through them.
    transport = H2Transport(client_context(pki), max_connections=1, timeout=5.0)
    sent = CLOSED_STREAMS_KEPT + 1500
    try:
        for start in range(0, sent, 500):
            replies = await asyncio.gather(
                *(transport.post(f"https://localhost:{server.port}/p", {}, b"x") for _ in range(start, start + 500))
            )
            assert {r.status for r in replies} == {200}
        (pool,) = transport._pools.values()
        (connection,) = pool._connections
        assert connection.conn.highest_outbound_stream_id >= 2 * sent - 1  # all on this one connection
        assert len(connection.conn._closed_streams) <= CLOSED_STREAMS_KEPT
    finally:
        await transport.aclose()
    assert server.connections == 1
