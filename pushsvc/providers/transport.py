"""What a provider's HTTP transport gives back, shared by the adapters and the transports they use, and the h2
connection APNs's transport (aioapns's pool, apns_connection.py) is built on. (FCM's and Huawei's, h2client.py,
frame HTTP/2 themselves.)

Its own module so that an adapter (fcm.py) and a transport (h2client.py) can both depend on it without
depending on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

# Closed streams an HTTP/2 connection remembers, to tell a frame that was in flight when a stream closed
# from a protocol error. h2 keeps the last 65,536 per connection: ~4-5 MB each once that many pushes went
# through it, ~100 MB over 20 provider connections (a 1M-device campaign grew RSS from 86 to 188 MB). Late
# frames concern the last few round trips' streams: at most the server's concurrent-stream limit (APNs:
# 1,000) per round trip, so a few thousand is ample.
CLOSED_STREAMS_KEPT = 4096
# The most streams a connection holds before h2's walk counts them exactly (and forgets the closed ones), when
# the server allows more or set no limit (h2 then assumes 2**32 + 1): APNs allows 1,000.
WALK_AT_STREAMS = 1024


class BoundedH2Connection(H2Connection):
    """h2's connection with a bounded memory of closed streams (CLOSED_STREAMS_KEPT), and a stream count that
    does not walk every stream on each new one.

    h2 learns how many streams are open, to refuse one past the server's SETTINGS_MAX_CONCURRENT_STREAMS, by
    walking all the streams it holds on every ``send_headers``, forgetting the closed ones as it goes: with a
    connection full of pushes in flight (APNs allows 1,000), that walk was ~2% of a push's CPU. Here the
    transports tell it when they are done with a stream (``done_with``, ``forget_closed``), so the streams it
    holds are the open ones, and it walks only when their number reaches the server's limit.
    """

    MAX_CLOSED_STREAMS = CLOSED_STREAMS_KEPT

    def forget_closed(self, stream_id: int) -> None:
        """Forget `stream_id` now if it has closed: what h2's walk does to every closed stream it meets (a late
        frame of it is then told apart from a protocol error by the closed streams' memory, as there)."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by

    def done_with(self, stream_id: int) -> None:
        """The transport is done with `stream_id` (its answer has ended, or its request was given up): reset it if
        our side is still open, and forget it. Our side is open after an answer when the request was answered
        before its body went (RFC 9113 section 8.1 allows a server that): left half open, the stream would hold
        one of the connection's slots for good. Called as the answer is read, not when its sender next runs, so
        that a request started in between finds the slot free."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            with contextlib.suppress(H2Error):
                self.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.forget_closed(stream_id)

    @property
    def open_outbound_streams(self) -> int:
        """NOT an exact count below the server's limit: there, the streams held (an upper bound of the open ones).

        h2 reads it only to check that one more stream stays within the limit, and a number under the limit that
        is at least the open streams gives that check the same answer; nothing else may read it as a count. A
        stream closed but not forgotten (one a transport did not report) is forgotten by h2's own walk, made once
        the streams held reach the limit, or WALK_AT_STREAMS when the server allows more or set none.
        """
        held = len(self.streams)  # never fewer than the open outbound streams: it holds them and maybe more
        if held < min(self.remote_settings.max_concurrent_streams, WALK_AT_STREAMS):
            return held
        return super().open_outbound_streams


async def set_or_done(event: asyncio.Event, answered: asyncio.Future[Any]) -> None:
    """Wait until `event` is set (from now: it is cleared first) or `answered` is done, whichever comes first:
    a request waiting for a flow-control window must also see its answer, which may come without its body."""
    event.clear()
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, answered}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookups expected (httpx.Headers or lower-case keys)
    body: bytes


class TransportFailure(Exception):
    """The request got no HTTP answer; ``reason`` is "timeout" or "connection_error"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class FcmTransport(Protocol):
    """The one place where an FCM HTTP request is made (replaceable by a faster HTTP/2 client)."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> HttpReply:
        """POST and return the answer; raise TransportFailure when no answer arrived."""
        ...

    async def aclose(self) -> None: ...


__all__ = ["FcmTransport", "HttpReply", "TransportFailure"]
