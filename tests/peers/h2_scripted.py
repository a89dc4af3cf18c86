"""A scripted TLS HTTP/2 server for transport tests (providers/h2client.py, providers/apns_connection.py): flow
control, stream limits, GOAWAY, resets, early answers."""

from __future__ import annotations

import asyncio
import ssl

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from h2.stream import StreamState


class ScriptedH2Server:
    """Answers 200 with the request body length; ``mode`` scripts misbehaviour.

    ``early``: answers 200 as soon as a request's headers arrive and never opens a window for its body, which
    the client may then never finish sending (RFC 9113 section 8.1 allows a server that); ``answered_early`` counts
    the requests answered before their body ended, ``resets`` the streams the client reset.
    """

    def __init__(self, window: int = 65_535, max_streams: int = 100) -> None:
        self.window = window
        self.max_streams = max_streams
        self.mode = "ok"  # ok | goaway | reset | hold | early | latin1 (a header value that is not UTF-8)
        self.connections = 0
        self.resets = 0
        self.answered_early = 0
        self.max_open_seen = 0
        self.port = 0
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
                        stream = conn.streams[event.stream_id]
                        if self.mode == "early" and not stream.closed:  # (not reset by the client already)
                            # Early only if the body is still to come (a first request may beat our SETTINGS).
                            self.answered_early += stream.state_machine.state is StreamState.OPEN
                            conn.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
                            bodies.pop(event.stream_id)
                    elif isinstance(event, StreamReset):
                        self.resets += 1
                    elif isinstance(event, DataReceived):
                        if self.mode == "early":
                            continue  # the body is not wanted: no window given back for it
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
                        elif self.mode in ("ok", "latin1"):
                            size = bodies.pop(event.stream_id)
                            body = f'{{"received":{size}}}'.encode()
                            headers = [(b":status", b"200"), (b"x-size", str(size).encode())]
                            if self.mode == "latin1":
                                headers.append((b"x-note", "café".encode("latin-1")))
                            conn.send_headers(event.stream_id, headers)
                            conn.send_data(event.stream_id, body, end_stream=True)
                        if self.mode != "hold":
                            bodies.pop(event.stream_id, None)
                writer.write(conn.data_to_send())
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
