"""An APNs test peer: a TLS + HTTP/2 server on 127.0.0.1 that answers like api.push.apple.com.

It speaks real HTTP/2 (the ``h2`` library, ALPN "h2"), honours flow control in both directions, validates
requests the way Apple does (auth, apns-* headers, payload size) and can be scripted per device token:

    async with ApnsPeer(pki, auth="token", jwt_public_key=pem) as peer:
        peer.script("tok-gone", status=410, reason="Unregistered")
        peer.script("tok-slow", delay=0.5)
        peer.script("tok-dead", action="hang")        # never answers
        peer.script("tok-bye", action="goaway")       # GOAWAY + close instead of an answer
        peer.script("tok-cut", action="close")        # TCP connection dropped, no answer
        peer.script("tok-old", status=410, reason="Unregistered", timestamp_ms=1_700_000_000_000)
        peer.bind_topic("tok-voip", "com.example.app.voip")  # any other topic: 400 DeviceTokenNotForTopic
        ... peer.port, peer.requests, peer.connections_opened ...

Live Activity pushes (apns-push-type liveactivity) are checked like APNs checks them: the topic must be
``<bundle id>.push-type.liveactivity`` exactly when the push type is liveactivity (else 400 InvalidPushType),
and a certificate-authenticated one is refused (Apple takes them with token auth only; 400 TopicDisallowed is
this peer's choice of reason). APNs does not read the payload: a push with no ``aps.event`` gets its 200 and
the device drops it. So does the peer, and it records what a device would read and would drop it for in
``request.live_activity`` (``.problems`` is empty for a push a device acts on), for tests to assert.

Standalone developer simulator (delivers everything, one JSON line per notification on stdout):

    python -m tests.peers.apns_peer --port 8443 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from pushsvc.config import ApnsSettings
from pushsvc.logging import mask_token
from tests.peers.tls import TestPki

MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120  # Apple's limit for VoIP pushes ("Generating a remote notification")
LIVE_ACTIVITY_TOPIC_SUFFIX = ".push-type.liveactivity"
LIVE_ACTIVITY_EVENTS = ("start", "update", "end")
# A Live Activity lives at most 8 hours: a timestamp further ahead than that is dropped by the device (Apple
# developer forums, "Broadcast Push Notifications - Update ignored"); mostly milliseconds sent for seconds.
LIVE_ACTIVITY_MAX_FUTURE_SECONDS = 8 * 3600
MAX_COLLAPSE_ID_BYTES = 64
JWT_MAX_AGE_SECONDS = 3600  # Apple refuses provider tokens older than one hour
_PATH = re.compile(r"^/3/device/([^/?]+)$")
_PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
    }
)

Action = Literal["answer", "goaway", "close", "hang"]
AuthMode = Literal["token", "cert", "none"]


@dataclass
class Rule:
    """How to answer a request. ``times`` limits how often a per-token rule applies (None = always)."""

    status: int = 200
    reason: str | None = None
    retry_after: int | str | None = None
    delay: float = 0.0
    action: Action = "answer"
    times: int | None = None
    # A 410's body "timestamp" (ms since epoch: when APNs last confirmed the token invalid); None = now.
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    token: str  # device token from the path, URL-decoded
    headers: dict[str, str]  # every header, pseudo-headers included (":path", ":method", ...)
    body: Any  # decoded JSON, or None if the body was not valid JSON
    raw_body: bytes
    time: float  # epoch seconds when the request was complete
    connection_id: int
    stream_id: int
    client_cert: dict[str, str] | None  # subject of the TLS client certificate, if one was presented
    live_activity: LiveActivityPush | None = None  # read from the body of an apns-push-type liveactivity push


@dataclass(frozen=True)
class LiveActivityPush:
    """What a device reads from an ActivityKit push (the aps keys of Apple's "Starting and updating Live
    Activities with ActivityKit push notifications"), and why it would drop the push (``problems``)."""

    event: Any
    timestamp: Any
    content_state: Any
    stale_date: Any = None
    dismissal_date: Any = None
    relevance_score: Any = None
    attributes_type: Any = None
    attributes: Any = None
    input_push_token: Any = None
    alert: Any = None
    problems: tuple[str, ...] = ()


def read_live_activity(body: Any, now: float) -> LiveActivityPush:
    """The Live Activity keys of a decoded body, and what a device would not act on."""
    aps = body.get("aps") if isinstance(body, dict) else None
    if not isinstance(aps, dict):
        return LiveActivityPush(None, None, None, problems=("aps: missing or not an object",))
    push = LiveActivityPush(
        event=aps.get("event"),
        timestamp=aps.get("timestamp"),
        content_state=aps.get("content-state"),
        stale_date=aps.get("stale-date"),
        dismissal_date=aps.get("dismissal-date"),
        relevance_score=aps.get("relevance-score"),
        attributes_type=aps.get("attributes-type"),
        attributes=aps.get("attributes"),
        input_push_token=aps.get("input-push-token"),
        alert=aps.get("alert"),
    )
    return replace(push, problems=tuple(_live_activity_problems(push, aps, now)))


def _live_activity_problems(push: LiveActivityPush, aps: dict[str, Any], now: float) -> list[str]:
    problems = []
    if push.event not in LIVE_ACTIVITY_EVENTS:
        problems.append("aps.event: must be start, update or end")
    if not _is_int(push.timestamp):
        problems.append("aps.timestamp: required, integer epoch seconds")
    elif push.timestamp > now + LIVE_ACTIVITY_MAX_FUTURE_SECONDS:
        problems.append("aps.timestamp: more than 8 hours ahead (milliseconds instead of seconds?)")
    if push.content_state is not None and not isinstance(push.content_state, dict):
        problems.append("aps.content-state: must be an object (the activity's ContentState)")
    elif push.content_state is None and push.event in ("start", "update"):
        problems.append(f"aps.content-state: required to {push.event} an activity")
    for key in ("stale-date", "dismissal-date"):
        if key in aps and not _is_int(aps[key]):
            problems.append(f"aps.{key}: must be integer epoch seconds")
    if "relevance-score" in aps and not _is_number(aps["relevance-score"]):
        problems.append("aps.relevance-score: must be a number")
    if push.event == "start":
        if not isinstance(push.attributes_type, str) or not push.attributes_type:
            problems.append("aps.attributes-type: required to start an activity")
        if not isinstance(push.attributes, dict):
            problems.append("aps.attributes: required (an object) to start an activity")
        if push.alert is None:
            problems.append("aps.alert: required to start an activity")
    alert = push.alert
    if alert is not None and not (isinstance(alert, dict) and ("title" in alert or "body" in alert)):
        problems.append("aps.alert: must be an object with a title or body")
    if "sound" in aps:
        # Apple's Live Activity alert is one key holding title, body and sound (ActivityKit's AlertConfiguration).
        problems.append("aps.sound: a Live Activity alert's sound goes in aps.alert")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Incoming:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class ApnsPeer:
    """APNs-like HTTP/2 server. Use as ``async with ApnsPeer(pki) as peer`` or start()/stop().

    auth: "token" requires ``authorization: bearer <ES256 JWT>`` (signature checked when jwt_public_key is
    given, kid/iss checked when key_id/team_id are given); "cert" asks for a TLS client certificate signed
    by client_ca_file (a request with neither a certificate nor a token gets 403 MissingProviderToken);
    "none" accepts anything (developer simulator).
    """

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: AuthMode = "token",
        jwt_public_key: str | bytes | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
        client_ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_concurrent_streams: int = 1000,
        log_json: bool = False,
    ) -> None:
        if ssl_context is None:
            if pki is None:
                raise ValueError("ApnsPeer needs a TestPki or an ssl_context")
            ssl_context = pki.server_context(["h2"])
        if auth == "cert":
            if client_ca_file is None:
                raise ValueError("auth='cert' needs client_ca_file")
            # Optional, not required: Apple answers 403 MissingProviderToken instead of failing the handshake.
            ssl_context.verify_mode = ssl.CERT_OPTIONAL
            ssl_context.load_verify_locations(client_ca_file)
        self.host = host
        self.port = port
        self.auth: AuthMode = auth
        self.jwt_public_key = jwt_public_key
        self.key_id = key_id
        self.team_id = team_id
        self.max_concurrent_streams = max_concurrent_streams
        self.log_json = log_json
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_PeerConnection] = set()
        self.requests: list[ReceivedRequest] = []
        self._arrived = asyncio.Event()
        self.default = Rule()
        self.auth_error: str | None = (
            None  # e.g. "ExpiredProviderToken": every token-authed request gets a 403
        )
        self._rules: dict[str, Rule] = {}
        # token -> the one topic it was issued for (Apple answers DeviceTokenNotForTopic for any other).
        self._topics: dict[str, str] = {}
        self.connections_opened = 0
        self.goaways_sent = 0
        self.streams_reset_by_client = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> ApnsPeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _PeerConnection(self), self.host, self.port, ssl=self._ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> ApnsPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def endpoint(self) -> str:
        """Value for ApnsSettings.endpoint."""
        return f"https://{self.host}:{self.port}"

    # ------------------------------------------------------------------------------------------ scripting

    def script(
        self,
        token: str,
        *,
        status: int = 200,
        reason: str | None = None,
        retry_after: int | str | None = None,
        delay: float = 0.0,
        action: Action = "answer",
        times: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Decide how requests for ``token`` are answered (replaces an earlier rule for it)."""
        self._rules[token] = Rule(status, reason, retry_after, delay, action, times, timestamp_ms)

    def bind_topic(self, token: str, topic: str) -> None:
        """Make ``token`` valid for ``topic`` only, as Apple does: a regular token for the app's topic, a
        PushKit token for ``<topic>.voip``. A request for it on another topic gets 400 DeviceTokenNotForTopic
        (a script for the token still applies on its own topic)."""
        self._topics[token] = topic

    def set_default(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        retry_after: int | str | None = None,
        delay: float = 0.0,
        action: Action = "answer",
    ) -> None:
        """The rule for tokens without a script (initially: deliver)."""
        self.default = Rule(status, reason, retry_after, delay, action)

    def reset(self) -> None:
        """Forget requests, scripts, the default rule, auth_error and counters (connections stay open)."""
        self.requests.clear()
        self._rules.clear()
        self._topics.clear()
        self.default = Rule()
        self.auth_error = None
        self.connections_opened = len(self._connections)
        self.goaways_sent = 0
        self.streams_reset_by_client = 0

    # -------------------------------------------------------------------------------------------- queries

    @property
    def connections_active(self) -> int:
        return len(self._connections)

    def requests_for(self, token: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.token == token]

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests

    # --------------------------------------------------------------------------------------- the handler

    async def _handle(self, connection: _PeerConnection, stream_id: int, incoming: _Incoming) -> None:
        headers = incoming.headers
        path = headers.get(":path", "")
        match = _PATH.match(path)
        token = unquote(match.group(1)) if match else ""
        raw = bytes(incoming.body)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        received_at = time.time()
        request = ReceivedRequest(
            token=token,
            headers=dict(headers),
            body=body,
            raw_body=raw,
            time=received_at,
            connection_id=connection.id,
            stream_id=stream_id,
            client_cert=connection.client_cert,
            live_activity=(
                read_live_activity(body, received_at) if headers.get("apns-push-type") == "liveactivity" else None
            ),
        )
        self.requests.append(request)
        self._arrived.set()
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        rule = self._check(request, match is not None) or self._topic_check(request) or self._rule_for(token)
        if self.log_json:
            self._log(request, apns_id, rule)
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.action == "hang":
            return
        if rule.action == "close":
            connection.abort()
            return
        if rule.action == "goaway":
            self.goaways_sent += 1
            connection.goaway()
            return
        response_headers = [(":status", str(rule.status)), ("apns-id", apns_id)]
        if rule.retry_after is not None:
            response_headers.append(("retry-after", str(rule.retry_after)))
        payload = b""
        if rule.status != 200:
            error: dict[str, Any] = {"reason": rule.reason or "InternalServerError"}
            if rule.status == 410:
                error["timestamp"] = int(time.time() * 1000) if rule.timestamp_ms is None else rule.timestamp_ms
            payload = json.dumps(error).encode()
            response_headers.append(("content-type", "application/json; charset=utf-8"))
        response_headers.append(("content-length", str(len(payload))))
        connection.respond(stream_id, response_headers, payload)

    def _rule_for(self, token: str) -> Rule:
        rule = self._rules.get(token)
        if rule is None:
            return self.default
        if rule.times is not None:
            if rule.times <= 0:
                return self.default
            rule.times -= 1
        return rule

    def _topic_check(self, request: ReceivedRequest) -> Rule | None:
        topic = self._topics.get(request.token)
        if topic is not None and request.headers.get("apns-topic") != topic:
            return Rule(400, "DeviceTokenNotForTopic")
        return None

    def _check(self, request: ReceivedRequest, path_ok: bool) -> Rule | None:
        """Apple's own validation, in Apple's order: method/path, auth, headers, payload."""
        h = request.headers
        if h.get(":method") != "POST":
            return Rule(405, "MethodNotAllowed")
        if not path_ok:
            return Rule(404, "BadPath")
        auth_reason = self._check_auth(h.get("authorization"), request.client_cert)
        if auth_reason:
            return Rule(403, auth_reason)
        if "apns-topic" not in h and (self.auth == "token" or "authorization" in h):
            return Rule(400, "MissingTopic")
        if "apns-priority" in h and h["apns-priority"] not in ("1", "5", "10"):
            return Rule(400, "BadPriority")
        push_type = h.get("apns-push-type")
        if push_type is not None and push_type not in _PUSH_TYPES:
            return Rule(400, "InvalidPushType")
        # Live Activity pushes have their own topic, and that topic takes nothing else.
        if (push_type == "liveactivity") != h.get("apns-topic", "").endswith(LIVE_ACTIVITY_TOPIC_SUFFIX):
            return Rule(400, "InvalidPushType")
        if push_type == "liveactivity" and "authorization" not in h and self.auth == "cert":
            return Rule(400, "TopicDisallowed")  # Apple: token-based authentication only for Live Activities
        if "apns-expiration" in h and not h["apns-expiration"].isdigit():
            return Rule(400, "BadExpirationDate")
        if len(h.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID_BYTES:
            return Rule(400, "BadCollapseId")
        if "apns-id" in h and not _is_uuid(h["apns-id"]):
            return Rule(400, "BadMessageId")
        if not request.raw_body:
            return Rule(400, "PayloadEmpty")
        if len(request.raw_body) > (MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES):
            return Rule(413, "PayloadTooLarge")
        return None

    def _check_auth(self, authorization: str | None, client_cert: dict[str, str] | None) -> str | None:
        if self.auth == "none":
            return None
        if self.auth == "cert" and authorization is None:
            return None if client_cert else "MissingProviderToken"
        if authorization is None:
            return "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "InvalidProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            if self.jwt_public_key is not None:
                claims = jwt.decode(
                    token, self.jwt_public_key, algorithms=["ES256"], options={"verify_iat": False}
                )
            else:
                claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("alg") != "ES256" or not header.get("kid") or not claims.get("iss"):
            return "InvalidProviderToken"
        if (self.key_id and header["kid"] != self.key_id) or (self.team_id and claims["iss"] != self.team_id):
            return "InvalidProviderToken"
        issued_at = claims.get("iat")
        if not isinstance(issued_at, int):
            return "InvalidProviderToken"
        if issued_at < time.time() - JWT_MAX_AGE_SECONDS:
            return "ExpiredProviderToken"
        return self.auth_error

    def _log(self, request: ReceivedRequest, apns_id: str, rule: Rule) -> None:
        h = request.headers
        line = {
            "event": "apns_notification",
            "ts": request.time,
            "token": mask_token(request.token),
            "apns_id": apns_id,
            "topic": h.get("apns-topic"),
            "push_type": h.get("apns-push-type"),
            "priority": h.get("apns-priority"),
            "expiration": h.get("apns-expiration"),
            "collapse_id": h.get("apns-collapse-id"),
            "status": rule.status if rule.action == "answer" else rule.action,
            "reason": rule.reason,
            "payload": request.body,
        }
        if request.live_activity is not None:
            line["live_activity_problems"] = list(request.live_activity.problems)
        print(json.dumps(line, ensure_ascii=False), flush=True)

    def _opened(self, connection: _PeerConnection) -> None:
        self._connections.add(connection)
        self.connections_opened += 1

    def _closed(self, connection: _PeerConnection) -> None:
        self._connections.discard(connection)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class _PeerConnection(asyncio.Protocol):
    """One client connection: h2 state, request assembly, flow-controlled responses."""

    _ids = 0

    def __init__(self, peer: ApnsPeer) -> None:
        _PeerConnection._ids += 1
        self.id = _PeerConnection._ids
        self.peer = peer
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        # Like Apple: many concurrent streams per connection (set before the preface, so no race).
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: peer.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 8192,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.client_cert: dict[str, str] | None = None
        self._incoming: dict[int, _Incoming] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Response bodies waiting for the client to open its flow-control window.
        self._outbox: dict[int, bytearray] = {}
        self._highest_answered = 0
        self._closed = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            cert = ssl_object.getpeercert()
            if cert:
                self.client_cert = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
        self.h2.initiate_connection()
        self._flush()
        self.peer._opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.abort()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._incoming[event.stream_id] = _Incoming(dict(event.headers))  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                incoming = self._incoming.get(event.stream_id)
                if incoming is not None:
                    incoming.body += event.data
                # Give the window back, or a client sending many payloads stalls after 64 KiB.
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                incoming = self._incoming.pop(event.stream_id, None)
                if incoming is not None:
                    task = asyncio.create_task(self.peer._handle(self, event.stream_id, incoming))
                    self._tasks[event.stream_id] = task
                    task.add_done_callback(lambda _t, sid=event.stream_id: self._tasks.pop(sid, None))
            elif isinstance(event, StreamReset):
                self.peer.streams_reset_by_client += 1
                self._incoming.pop(event.stream_id, None)
                self._outbox.pop(event.stream_id, None)
                task = self._tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._drain()
            elif isinstance(event, ConnectionTerminated):
                self.abort()
                return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self.peer._closed(self)

    # actions used by the peer

    def respond(self, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self._closed:
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            return  # the client reset the stream (timeout) or the connection is going away
        if body:
            self._outbox[stream_id] = bytearray(body)
            self._drain()
        else:
            self._highest_answered = max(self._highest_answered, stream_id)
        self._flush()

    def goaway(self) -> None:
        """Apple's way of shedding a connection: GOAWAY naming the last answered stream, then close."""
        if self._closed:
            return
        with contextlib.suppress(H2Error):
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=b'{"reason":"Shutdown"}',
                last_stream_id=self._highest_answered,
            )
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without TLS close_notify or GOAWAY."""
        if self.transport is not None:
            self.transport.abort()

    # internals

    def _drain(self) -> None:
        """Send buffered response bodies as far as the client's flow-control windows allow."""
        for stream_id in list(self._outbox):
            buffer = self._outbox[stream_id]
            try:
                while buffer:
                    window = self.h2.local_flow_control_window(stream_id)
                    size = min(window, len(buffer), self.h2.max_outbound_frame_size)
                    if size <= 0:
                        break
                    chunk = bytes(buffer[:size])
                    del buffer[:size]
                    self.h2.send_data(stream_id, chunk, end_stream=not buffer)
            except H2Error:
                del self._outbox[stream_id]
                continue
            if not buffer:
                del self._outbox[stream_id]
                self._highest_answered = max(self._highest_answered, stream_id)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


# ------------------------------------------------------------------------ test credentials and settings


APNS_TOPIC = "com.example.app"
APNS_KEY_ID = "ABC123DEFG"
APNS_TEAM_ID = "TEAM123456"


@dataclass(frozen=True)
class ApnsSigningKey:
    key_file: Path  # the .p8 (PKCS#8 PEM EC P-256 private key), as Apple hands it out
    public_pem: bytes  # for the peer to verify JWT signatures
    key_id: str = APNS_KEY_ID
    team_id: str = APNS_TEAM_ID


@dataclass(frozen=True)
class ApnsClientCert:
    cert_file: Path  # certificate + private key in one PEM, as ApnsSettings.cert_file expects
    ca_file: Path  # the CA that issued it, for the peer to verify client certificates
    uid: str  # the topic in the certificate subject, like Apple's push certificates


def make_signing_key(directory: Path, name: str = "AuthKey") -> ApnsSigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = directory / f"{name}_{APNS_KEY_ID}.p8"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ApnsSigningKey(key_file=key_file, public_pem=public_pem)


def make_client_cert(directory: Path, topic: str = APNS_TOPIC) -> ApnsClientCert:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test Apple WWDR CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = directory / "apns-client.pem"
    cert_file.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca_file = directory / "apns-client-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ApnsClientCert(cert_file=cert_file, ca_file=ca_file, uid=topic)


def apns_token_settings(peer: ApnsPeer, pki: TestPki, key: ApnsSigningKey, **overrides: Any) -> ApnsSettings:
    """ApnsSettings (token auth) pointing at the peer and trusting the test CA."""
    settings = ApnsSettings(
        topic=APNS_TOPIC,
        environment="sandbox",
        key_file=str(key.key_file),
        key_id=key.key_id,
        team_id=key.team_id,
        endpoint=peer.endpoint,
        ca_file=str(pki.ca_file),
        max_connections=4,
    )
    return replace(settings, **overrides)


def apns_cert_settings(peer: ApnsPeer, pki: TestPki, cert: ApnsClientCert, **overrides: Any) -> ApnsSettings:
    settings = ApnsSettings(
        topic=APNS_TOPIC,
        environment="sandbox",
        cert_file=str(cert.cert_file),
        endpoint=peer.endpoint,
        ca_file=str(pki.ca_file),
        max_connections=4,
    )
    return replace(settings, **overrides)


# ------------------------------------------------------------------------------------------- standalone


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="APNs simulator: accepts and logs every notification")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2"])
    peer = ApnsPeer(ssl_context=context, host=args.host, port=args.port, auth="none", log_json=True)
    async with peer:
        print(json.dumps({"event": "apns_peer_listening", "endpoint": peer.endpoint}), flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
