"""BoundedH2Connection's stream count (providers/transport.py) against h2's own, driven in memory by a real server
connection: whatever streams open, end, are reset by either side or forgotten, a new stream is refused exactly when
h2's walk would refuse it."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.providers.transport import WALK_AT_STREAMS, BoundedH2Connection

LIMIT = 3
HEADERS = [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/p")]


class Pair:
    """A client connection and a server that allows LIMIT concurrent streams, bytes passed by hand."""

    def __init__(self, client: H2Connection, limit: int | None = LIMIT) -> None:
        self.client = client
        self.server = H2Connection(H2Configuration(client_side=False))
        if limit is None:  # the server sends no limit (h2's server sends 100 unless told not to): 2**32 + 1 then
            del self.server.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        self.server.initiate_connection()
        if limit is not None:
            self.server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        client.initiate_connection()
        self.pump()
        self.pump()  # the SETTINGS acknowledgements
        self.at_server: list[int] = []  # streams the server has and has not answered
        self.unsent: list[int] = []  # requests whose body is still to be sent

    def pump(self) -> None:
        for event in self.server.receive_data(self.client.data_to_send()):
            if isinstance(event, RequestReceived):
                self.at_server.append(event.stream_id)
        self.client.receive_data(self.server.data_to_send())

    def open(self, body: bool) -> bool:
        """Start a request, its body to follow if `body`; False if the client connection refused it (too many
        streams)."""
        stream_id = self.client.get_next_available_stream_id()
        try:
            self.client.send_headers(stream_id, HEADERS, end_stream=not body)
        except TooManyStreamsError:
            return False
        if body:
            self.unsent.append(stream_id)
        self.pump()
        return True

    def send_body(self, index: int) -> None:
        """The client sends the body of one of the requests still sending theirs (answered already or not)."""
        if self.unsent:
            self.client.send_data(self.unsent.pop(index % len(self.unsent)), b"x", end_stream=True)
            self.pump()

    def answer(self, index: int, reset: bool) -> int | None:
        """The server answers (or resets) one of the requests it holds; the stream id, or None if it holds none."""
        if not self.at_server:
            return None
        stream_id = self.at_server.pop(index % len(self.at_server))
        if reset:
            self.server.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            if stream_id in self.unsent:
                self.unsent.remove(stream_id)
        else:
            self.server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        self.pump()
        return stream_id

    def cancel(self, index: int) -> int | None:
        """The client gives up on one of its open requests (a timeout): it resets the stream."""
        open_ids = [i for i, s in self.client.streams.items() if not s.closed]
        if not open_ids:
            return None
        stream_id = open_ids[index % len(open_ids)]
        self.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        if stream_id in self.unsent:
            self.unsent.remove(stream_id)
        if stream_id in self.at_server:
            self.at_server.remove(stream_id)
        self.pump()
        return stream_id


OPS = st.lists(
    st.tuples(st.sampled_from(["open", "body", "answer", "reset", "cancel"]), st.integers(0, 10), st.booleans()),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_a_new_stream_is_refused_exactly_when_h2s_count_refuses_it(ops: list[tuple[str, int, bool]]) -> None:
    ours, theirs = Pair(BoundedH2Connection(H2Configuration(client_side=True))), Pair(
        H2Connection(H2Configuration(client_side=True))
    )
    for op, index, report in ops:
        if op == "open":
            # `report` doubles as whether a body follows: a server may answer before it is sent (half closed).
            assert ours.open(report) == theirs.open(report)
            continue
        if op == "body":
            ours.send_body(index), theirs.send_body(index)
            continue
        if op == "cancel":
            ended, _ = ours.cancel(index), theirs.cancel(index)
        else:
            ended, _ = ours.answer(index, op == "reset"), theirs.answer(index, op == "reset")
        # A transport reports most ends (`report`), not necessarily all: an unreported one must still be counted
        # right, by the walk at the limit. A reported one may not be closed yet (answered before its body went).
        if ended is not None and report:
            ours.client.forget_closed(ended)
        open_now = sum(1 for s in ours.client.streams.values() if not s.closed)
        assert ours.client.open_outbound_streams >= open_now
        assert len(ours.client.streams) <= LIMIT  # nothing piles up: forgotten, or walked at the limit


def test_reported_ends_leave_nothing_held_and_a_full_connection_counts_exactly() -> None:
    pair = Pair(BoundedH2Connection(H2Configuration(client_side=True)))
    for _ in range(LIMIT):
        assert pair.open(body=False)
    assert not pair.open(body=False)  # the server's limit: h2 refuses the stream
    for _ in range(LIMIT):
        pair.client.forget_closed(pair.answer(0, reset=False) or 0)
    assert pair.client.streams == {}
    assert pair.client.open_outbound_streams == 0
    # Ends not reported: held until the count reaches the limit, where h2's walk finds them closed.
    for _ in range(LIMIT):
        assert pair.open(body=False)
        pair.answer(0, reset=False)
    assert len(pair.client.streams) == LIMIT
    assert pair.client.open_outbound_streams == 0
    assert pair.client.streams == {}


def test_without_a_server_limit_unreported_ends_are_walked_at_a_bound() -> None:
    pair = Pair(BoundedH2Connection(H2Configuration(client_side=True)), limit=None)
    for _ in range(WALK_AT_STREAMS + 50):
        assert pair.open(body=False)
        pair.answer(0, reset=False)  # never reported: only h2's walk forgets it
    assert pair.client.remote_settings.max_concurrent_streams > 2**32
    assert len(pair.client.streams) <= WALK_AT_STREAMS


def test_an_early_answer_frees_its_slot_as_it_is_read() -> None:
    # The transports call `done_with` as they read the answer, before they release the slot: from then on a new
    # request must find the slot free, though the early-answered request's sender has not run yet.
    pair = Pair(BoundedH2Connection(H2Configuration(client_side=True)))
    for _ in range(LIMIT):
        assert pair.open(body=True)  # each body still to be sent
    stream_id = pair.answer(0, reset=False)  # answered before its body went: our side still open
    assert stream_id is not None
    pair.client.done_with(stream_id)
    assert stream_id not in pair.client.streams
    assert pair.open(body=False)  # the slot is free at once
