"""APNs adapter: one HTTP/2 request per delivery on aioapns 4.0, classified into a SendResult.

What each request carries (body, topic, priority, expiry, per push type) is built in apns_payload.py.

aioapns provides the connection pool, TLS (client certificate) and provider-token (JWT) handling. Its
request/response handling on a connection falls short in ways that bite in production, so ``_ApnsProtocol``
replaces that part and keeps the rest:

* it never acknowledges received DATA, so after 64 KiB of error bodies the connection window is spent and
  every later answer on that connection stalls;
* it matches answers by the echoed apns-id and parses each DATA frame as JSON on its own; a success leaks
  an entry per stream and an error without a JSON body never resolves;
* response headers (Retry-After) are not exposed;
* apns-expiration is computed as now + ttl, so neither Apple's "0" nor our absolute expiry can be sent;
* after a GOAWAY the connection stays in the pool (the next send fails with an h2 ProtocolError) and
  streams the server did not process wait forever;
* there is no per-request timeout, and an abandoned stream is never reset, holding a stream slot forever;
* ``pool.send_notification`` silently re-sends on another connection after a connection loss (a possible
  duplicate push), while our contract is exactly one attempt per ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import quote

import jwt
from aioapns import APNs
from aioapns.connection import APNsBaseConnectionPool, APNsTLSClientProtocol
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from hpack import NeverIndexedHeaderTuple

from pushsvc.config import ApnsSettings, endpoint_address
from pushsvc.credentials import apns_certificate_expiry
from pushsvc.logging import get_logger, mask_token
from pushsvc.metrics import APNS_CERTIFICATE_EXPIRY
from pushsvc.model import Outcome

# The limits are re-exported: ingest/payload_limits.py and tests read them as apns.MAX_*.
from pushsvc.providers.apns_payload import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from pushsvc.providers.apns_payload import MAX_VOIP_PAYLOAD_BYTES as MAX_VOIP_PAYLOAD_BYTES
from pushsvc.providers.apns_payload import (
    build_payload,
    embeds_send_time,
    expiration_header,
    payload_limit,
    priority_for,
    topic_for,
)
from pushsvc.providers.base import Delivery, PayloadRejected, Provider, Rendered, SendResult, parse_retry_after
from pushsvc.providers.transport import BoundedH2Connection

log = get_logger(__name__)

APNS_HOSTS = {"production": "api.push.apple.com", "sandbox": "api.sandbox.push.apple.com"}
APNS_PORT = 443

# Reasons that mean "this device token will never work again": the dispatcher deactivates the token.
_INVALID_TOKEN_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
# 400s that are about the connection, not the notification.
_RETRYABLE_REASONS = frozenset({"IdleTimeout"})


def classify(status: int, reason: str) -> Outcome:
    """Map an APNs answer to an outcome class (Apple's status/reason table)."""
    if status == 200:
        return Outcome.DELIVERED
    if status == 410 or reason in _INVALID_TOKEN_REASONS:
        return Outcome.INVALID_TOKEN
    if status == 403:  # Expired/Invalid/MissingProviderToken, BadCertificate(Environment), Forbidden
        return Outcome.AUTH_ERROR
    if status == 429 or status >= 500 or reason in _RETRYABLE_REASONS:
        return Outcome.RETRYABLE
    return Outcome.REJECTED  # 413 and every other 4xx: resending the same request cannot succeed


MAX_TIMESTAMP_MS = 10**15


def _error_details(status: int, body: bytes) -> tuple[str, float | None]:
    """The error body's reason (or http_<status>) and, for a 410, its timestamp in epoch seconds.

    Apple: the timestamp is "the last time at which APNs confirmed that the device token was no longer
    valid for the topic" (milliseconds since the epoch); only a registration after it makes the token good.
    """
    try:
        error = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep
        error = None
    if not isinstance(error, dict):
        error = {}
    reason = error.get("reason")
    timestamp = error.get("timestamp")
    invalid_since = None
    # Within year 1970..~33658 in milliseconds: anything else is not a time (and a huge JSON integer would
    # not even convert to a float).
    if status == 410 and type(timestamp) in (int, float) and 0 < timestamp < MAX_TIMESTAMP_MS:
        invalid_since = timestamp / 1000.0
    return (reason if isinstance(reason, str) and reason else f"http_{status}"), invalid_since


# ---------------------------------------------------------------------------------------------- protocol


class _StreamReset(ConnectionClosed):
    """The server reset one stream (e.g. REFUSED_STREAM); the connection itself is fine."""


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stream:
    future: asyncio.Future[_Response]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _ApnsProtocol(APNsTLSClientProtocol):
    """One HTTP/2 connection. Subclassed per provider to set APNS_SERVER/APNS_PORT (aioapns reads them)."""

    APNS_SERVER: ClassVar[str] = APNS_HOSTS["production"]
    APNS_PORT: ClassVar[int] = APNS_PORT
    # Every open connection of the provider, including retired ones still finishing streams (for close()).
    live: ClassVar[set[_ApnsProtocol]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = BoundedH2Connection(self.conn.config)  # before any use (connection_made initiates it)
        # Our own, known-good request headers (the token is percent-quoted): skipping h2's per-header
        # validation saves ~15% of a send's CPU.
        self.conn.config.validate_outbound_headers = False
        # Two values are new on every request (:path with the token, apns-id): Huffman-coding them and adding
        # them to the HPACK table (evicting the entries that do repeat) cost ~18% of a send's CPU. They go
        # as never-indexed literals, and Huffman coding is off for this connection (RFC 7541 allows both).
        encoder = self.conn.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]
        self._flush_pending = False
        self._streams: dict[int, _Stream] = {}
        self._window_changed = asyncio.Event()
        self.retired = False  # out of the pool: no new streams
        self.last_received = 0.0  # loop time of the last bytes from the server
        self.closed: asyncio.Future[None] = self.loop.create_future()

    @property
    def is_busy(self) -> bool:
        # The pool hands out any connection that is not busy; a retired one must never be picked again.
        return self.retired or super().is_busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.live.add(self)

    async def send_push(self, token: str, headers: list[tuple[str, str]], payload: bytes) -> _Response:
        """One request, awaiting its answer; raises ConnectionClosed or H2Error on transport trouble."""
        if self.retired:
            raise ConnectionClosed("connection retired")
        stream_id = await self.free_channels.acquire()
        request_headers = [
            (":method", "POST"),
            (":scheme", "https"),
            NeverIndexedHeaderTuple(":path", f"/3/device/{quote(token, safe='')}"),
            ("host", self.APNS_SERVER),
            *headers,
        ]
        if self.auth_provider is not None:
            request_headers.append(("authorization", self.auth_provider.get_header()))
        try:
            self.conn.send_headers(stream_id, request_headers)
        except H2Error:
            self.free_channels.release()
            raise
        stream = _Stream(self.loop.create_future())
        self._streams[stream_id] = stream
        try:
            # Headers went out at once (stream ids must be used in order); the body may have to wait for
            # the server to open its flow-control window, which aioapns answered with FlowControlError.
            await self._wait_for_window(stream_id, len(payload), stream.future)
            if not stream.future.done():
                self.conn.send_data(stream_id, payload, end_stream=True)
                self._flush_soon()
            return await stream.future
        finally:
            if stream_id in self._streams:
                # Cancelled (timeout) or failed while sending: cancel the stream at the server too, so
                # it stops holding one of the connection's concurrent-stream slots.
                self._abandon(stream_id)

    async def _wait_for_window(self, stream_id: int, size: int, answered: asyncio.Future[_Response]) -> None:
        while not answered.done() and self.conn.local_flow_control_window(stream_id) < size:
            self._window_changed.clear()
            waiter = asyncio.ensure_future(self._window_changed.wait())
            try:
                await asyncio.wait({waiter, answered}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:  # the server broke the protocol (or spoke after GOAWAY): connection unusable
            log.warning("apns_protocol_error", app_host=self.APNS_SERVER, error=str(exc))
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self._streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.headers = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers or ()}
            elif isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.body += event.data or b""
                # The fix for the stall: hand the bytes back to the server's send window.
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
            elif isinstance(event, StreamEnded):
                self._finish(event.stream_id or 0)
            elif isinstance(event, StreamReset):
                reset = _StreamReset(f"stream reset by server ({event.error_code!r})")
                self._fail(event.stream_id or 0, reset)
            elif isinstance(event, WindowUpdated):
                self._window_changed.set()
            elif isinstance(event, RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)  # MAX_CONCURRENT_STREAMS
                self._window_changed.set()  # INITIAL_WINDOW_SIZE may have grown
            elif isinstance(event, ConnectionTerminated):
                self._on_goaway(event)
                return
        self.flush()

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        # h2 accepts no frame after GOAWAY, so nothing still open can be answered: fail it all now (the
        # caller gets connection_error and the dispatcher retries) instead of waiting for the timeout.
        log.info(
            "apns_goaway",
            host=self.APNS_SERVER,
            error_code=str(event.error_code),
            last_stream_id=event.last_stream_id,
            debug=(event.additional_data or b"")[:200].decode(errors="replace"),
        )
        self._fail_all(ConnectionClosed("GOAWAY"))
        self.close()

    def _finish(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.free_channels.release()
        if not stream.future.done():
            status = int(stream.headers.get(":status", "0"))
            stream.future.set_result(_Response(status, stream.headers, bytes(stream.body)))
        if self.retired and not self._streams:
            self.close()

    def _fail(self, stream_id: int, exc: Exception) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.free_channels.release()
        if not stream.future.done():
            stream.future.set_exception(exc)

    def _fail_all(self, exc: Exception) -> None:
        for stream_id in list(self._streams):
            self._fail(stream_id, exc)

    def _abandon(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self.free_channels.release()
        with contextlib.suppress(H2Error):
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
        if self.retired and not self._streams:
            self.close()

    def retire(self) -> None:
        """Graceful: out of the pool now, so no new send picks it; streams already open may finish first."""
        self._leave_pool()
        if not self._streams:
            self.close()

    def close(self) -> None:
        self._leave_pool()
        super().close()

    def _leave_pool(self) -> None:
        # Done at once rather than when the socket finally closes, which is what aioapns waits for.
        self.retired = True
        discard, self.on_connection_lost = self.on_connection_lost, None
        if discard is not None:
            with contextlib.suppress(ValueError):  # already gone from the pool
                discard(self)

    def _flush_soon(self) -> None:
        """Coalesced flush: every request started in this loop iteration leaves in one write (one timer reset)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush_coalesced)

    def _flush_coalesced(self) -> None:
        self._flush_pending = False
        self.flush()

    def flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # nothing can go out any more; don't re-arm aioapns's inactivity timer either
        data = self.conn.data_to_send()
        self.refresh_inactivity_timer()
        if data:
            self.transport.write(data)

    def refresh_inactivity_timer(self) -> None:
        # aioapns closes a connection INACTIVITY_TIME (10 s) after our last write even while answers are
        # awaited: an answer slower than that (APNs under load) failed as connection_error and the push was
        # sent again. Idle means no stream open: the timer re-arms while any is.
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        self.inactivity_timer = self.loop.call_later(self.INACTIVITY_TIME, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self._streams:
            self.refresh_inactivity_timer()
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_pool()
        super().connection_lost(exc)  # cancels the inactivity timer, fails waiters for a stream slot
        self._fail_all(ConnectionClosed(str(exc) if exc else "connection closed"))
        self.live.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)


# ---------------------------------------------------------------------------------------------- provider


class ApnsProvider(Provider):
    name = "apns"
    # A wrong `environment` (sandbox tokens sent to production or the reverse): BadDeviceToken for every
    # token; a wrong `topic`: DeviceTokenNotForTopic for every token.
    misconfiguration_reasons = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})

    def __init__(self, app_id: str, settings: ApnsSettings, send_timeout: float) -> None:
        super().__init__(app_id)
        self._settings = settings
        self._send_timeout = send_timeout
        if settings.endpoint:
            host, port_number = endpoint_address(settings.endpoint, "endpoint", path_allowed=False)
        else:
            host, port_number = APNS_HOSTS[settings.environment], APNS_PORT
        # aioapns takes host and port from class constants of the pool's protocol class.
        self._protocol_class: type[_ApnsProtocol] = type(
            f"ApnsProtocol[{app_id}]",
            (_ApnsProtocol,),
            {"APNS_SERVER": host, "APNS_PORT": port_number, "live": set()},
        )
        if settings.cert_file:
            # Checked at load; exported so an alert fires weeks before APNs starts refusing the connection.
            expires = apns_certificate_expiry(settings.cert_file, f"apps.{app_id}.apns")
            APNS_CERTIFICATE_EXPIRY.labels(app=app_id).set(expires.timestamp())
        # Read the signing key now so a bad path fails at start-up, not at the first push.
        self._signing_key = Path(settings.key_file).read_text() if settings.key_file else None
        self._client: APNs | None = None
        # (notification, locale) -> (message, options, send second, body): the body never depends on the token.
        self._payloads: dict[tuple[str, str | None], tuple[Any, Any, int | None, bytes]] = {}

    def _payload(self, delivery: Delivery) -> bytes:
        """build_payload(delivery), built once per (notification, locale): only the token (in the path) varies.

        A Live Activity push without its own timestamp carries its send time, and the device ignores a push
        older than the state it shows: a body cached at the first device and reused minutes later (a slow
        fan-out, a retry) would lose to an update sent in between, or make a later one look stale. Such a body
        is reused within the second it was built only: aps.timestamp counts whole seconds, so within that
        second it is byte for byte what a fresh build would give, and it is built at most once a second.
        """
        key = (delivery.notification_id, delivery.device.locale)
        second = int(time.time()) if embeds_send_time(delivery) else None
        cached = self._payloads.get(key)
        if (
            cached is None
            or cached[0] is not delivery.message
            or cached[1] is not delivery.options
            or cached[2] != second
        ):
            payload = build_payload(delivery, second)  # TypeError/ValueError propagate and are never cached
            if len(self._payloads) >= 1024:
                self._payloads.clear()
            cached = self._payloads[key] = (delivery.message, delivery.options, second, payload)
        return cached[3]

    async def start(self) -> None:
        self._pool()

    def _pool(self) -> APNsBaseConnectionPool:
        # Built lazily: aioapns's pool captures the event loop in its constructor.
        if self._client is None:
            self._client = self._build_client()
        return self._client.pool

    def _build_client(self) -> APNs:
        s = self._settings
        context = ssl.create_default_context()  # system CAs, hostname check, verification always on
        if s.ca_file:
            context.load_verify_locations(s.ca_file)
        context.set_alpn_protocols(["h2"])  # aioapns doesn't, and APNs speaks HTTP/2 only
        if s.cert_file:
            client = APNs(
                client_cert=s.cert_file, topic=s.topic, max_connections=s.max_connections, ssl_context=context
            )
        else:
            client = APNs(
                key=self._signing_key,
                key_id=s.key_id,
                team_id=s.team_id,
                topic=s.topic,
                max_connections=s.max_connections,
                ssl_context=context,
            )
        client.pool.protocol_class = self._protocol_class
        return client

    def render(self, delivery: Delivery) -> Rendered:
        payload = self._checked_payload(delivery)
        headers = {name: value for name, value in self._headers(delivery, "") if name != "apns-id"}
        return Rendered(headers, json.loads(payload))

    def _checked_payload(self, delivery: Delivery) -> bytes:
        """The payload, or PayloadRejected with the reason APNs would give."""
        if delivery.options.push_type == "liveactivity" and self._settings.cert_file:
            # Apple takes Live Activity pushes over token-based (.p8) connections only: refused here, named,
            # rather than sent to fail at Apple with a reason that does not say why.
            raise PayloadRejected("LiveActivityNeedsTokenAuth")
        try:
            payload = self._payload(delivery)
        except (TypeError, ValueError) as exc:  # NaN/unserialisable data values: the request can never succeed
            raise PayloadRejected("InvalidPayload") from exc
        if len(payload) > payload_limit(delivery.options.push_type):
            raise PayloadRejected("PayloadTooLarge")
        return payload

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            payload = self._checked_payload(delivery)
        except PayloadRejected as exc:
            return SendResult(Outcome.REJECTED, exc.reason)
        apns_id = str(uuid.uuid4())
        headers = self._headers(delivery, apns_id)
        token = delivery.device.token
        loop = asyncio.get_running_loop()
        connection: _ApnsProtocol | None = None
        sent_at = loop.time()
        try:
            async with asyncio.timeout(self._send_timeout):
                # Always our protocol class: _build_client sets it on the pool.
                connection = cast(_ApnsProtocol, await self._pool().acquire())
                sent_at = loop.time()
                response = await connection.send_push(token, headers, payload)
        except TimeoutError:
            if connection is not None and connection.last_received < sent_at:
                # Not a byte back since we sent: the connection is likely dead (e.g. silently dropped by a
                # NAT); retire it rather than let every later send wait out the timeout on it too.
                connection.retire()
            log.info(
                "apns_send_timeout", app=self.app_id, token=mask_token(token), timeout=self._send_timeout
            )
            return SendResult(Outcome.RETRYABLE, "timeout")
        except (ApnsConnectionError, ConnectionClosed, H2Error, OSError) as exc:
            if connection is not None and not isinstance(exc, _StreamReset):
                connection.close()  # drop it from the pool: the next send opens a fresh connection
            log.info(
                "apns_connection_error", app=self.app_id, token=mask_token(token), error=type(exc).__name__
            )
            return SendResult(Outcome.RETRYABLE, "connection_error")
        except (ValueError, jwt.PyJWTError) as exc:
            # The provider token could not be signed (aioapns signs it per connection): the key is unusable.
            # An auth error pauses the app's APNs and pages, instead of an unexplained failure per device.
            # Start-up checks the key (pushsvc.credentials); this catches one that changed or broke since.
            log.warning("apns_signing_failed", app=self.app_id, error=f"{type(exc).__name__}: {exc}"[:300])
            return SendResult(Outcome.AUTH_ERROR, "SigningKeyUnusable")
        return self._result(response, apns_id, connection)

    def _headers(self, delivery: Delivery, apns_id: str) -> list[tuple[str, str]]:
        options = delivery.options
        headers = [
            NeverIndexedHeaderTuple("apns-id", apns_id),
            # VoIP and Live Activity pushes go to their own topics (<topic>.voip, <topic>.push-type.liveactivity).
            ("apns-topic", topic_for(self._settings.topic, options.push_type)),
            ("apns-push-type", options.push_type),
            ("apns-priority", priority_for(options)),
        ]
        expiration = expiration_header(delivery)
        if expiration is not None:
            headers.append(("apns-expiration", expiration))
        if options.collapse_key:
            headers.append(("apns-collapse-id", options.collapse_key))
        return headers

    def _result(self, response: _Response, apns_id: str, connection: _ApnsProtocol) -> SendResult:
        provider_id = response.headers.get("apns-id") or apns_id
        if response.status == 200:
            return SendResult(Outcome.DELIVERED, status=200, provider_id=provider_id)
        reason, invalid_since = _error_details(response.status, response.body)
        outcome = classify(response.status, reason)
        if reason == "ExpiredProviderToken":
            # aioapns caches the JWT per connection; only a new connection signs a fresh one.
            connection.retire()
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return SendResult(outcome, reason, response.status, retry_after, provider_id, invalid_since)

    async def close(self) -> None:
        if self._client is None:
            return
        connections = list(self._protocol_class.live)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=2.0)
        self._client = None
