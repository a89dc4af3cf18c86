"""The APNs peer itself: its settings, scripts, recorded requests and the handling of each request.

``PeerConnection`` (connection.py) speaks HTTP/2 and hands every complete request to ``ApnsPeer._handle``,
which records it, checks it the way Apple does (checks.py) and answers with the first failing check, the
token's script or the default rule (answers.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Callable

from pushsvc.logs import mask_token
from pushsvc.simulators.apns.answers import Action, Rule, response
from pushsvc.simulators.apns.checks import AuthMode, ReceivedRequest, check_request, read_request
from pushsvc.simulators.apns.connection import Incoming, PeerConnection
from pushsvc.simulators.apns.provider_tokens import ProviderTokenLog
from pushsvc.simulators.lifecycle import Peer
from pushsvc.simulators.rules import take_rule
from pushsvc.simulators.tls import TestPki


class ApnsPeer(Peer):
    """APNs-like HTTP/2 server. Use as ``async with ApnsPeer(pki) as peer`` or start()/stop().

    auth: "token" requires ``authorization: bearer <ES256 JWT>`` (signature checked when jwt_public_key is
    given, kid/iss checked when key_id/team_id are given); "cert" asks for a TLS client certificate signed
    by client_ca_file (a request with neither a certificate nor a token gets 403 MissingProviderToken);
    "none" accepts anything (developer simulator).

    clock: epoch seconds the peer judges provider tokens' age by (and stamps requests with); a test may set
    ``peer.clock`` to a fake one shared with the provider. Every distinct provider token accepted is in
    ``peer.provider_tokens`` (provider_tokens.py); ``peer.provider_tokens.min_update_seconds`` turns on Apple's
    TooManyProviderTokenUpdates.
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        ssl_context = _server_context(pki, ssl_context, auth, client_ca_file)
        self.host = host
        self.port = port
        self.auth: AuthMode = auth
        self.jwt_public_key = jwt_public_key
        self.key_id = key_id
        self.team_id = team_id
        self.max_concurrent_streams = max_concurrent_streams
        self.log_json = log_json
        self.clock = clock
        self.provider_tokens = ProviderTokenLog()
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[PeerConnection] = set()
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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PeerConnection(self), self.host, self.port, ssl=self._ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None

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
        """Forget requests, scripts, the default rule, auth_error, provider tokens and counters (connections stay
        open); back to the real clock and no token update limit."""
        self.requests.clear()
        self.provider_tokens = ProviderTokenLog()
        self.clock = time.time
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

    async def _handle(self, connection: PeerConnection, stream_id: int, incoming: Incoming) -> None:
        headers = incoming.headers
        request, path_ok = read_request(
            headers, bytes(incoming.body), connection.id, stream_id, connection.client_cert, self.clock(),
            incoming.never_indexed,
        )
        self.requests.append(request)
        self._arrived.set()
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        rule = (
            self._repeated_check(incoming)
            or check_request(request, path_ok, self)
            or self._topic_check(request)
            or self._rule_for(request.token)
        )
        if self.log_json:
            self._log(request, apns_id, rule)
        if rule.delay:
            await asyncio.sleep(rule.delay)
        self._answer(connection, stream_id, apns_id, rule)

    def _answer(self, connection: PeerConnection, stream_id: int, apns_id: str, rule: Rule) -> None:
        """Carry out the rule: no answer (hang), a dropped connection, GOAWAY, or the response."""
        if rule.action == "hang":
            return
        if rule.action == "close":
            connection.abort()
            return
        if rule.action == "goaway":
            self.goaways_sent += 1
            connection.goaway()
            return
        response_headers, payload = response(rule, apns_id)
        connection.respond(stream_id, response_headers, payload)

    def _rule_for(self, token: str) -> Rule:
        return take_rule(self._rules.get(token), self.default)

    @staticmethod
    def _repeated_check(incoming: Incoming) -> Rule | None:
        # Two provider tokens on one request (ours and a client library's own): which one would Apple read?
        # Refused here, so a test catches a client that adds a token of its own.
        if "authorization" in incoming.repeated:
            return Rule(403, "InvalidProviderToken")
        return None

    def _topic_check(self, request: ReceivedRequest) -> Rule | None:
        topic = self._topics.get(request.token)
        if topic is not None and request.headers.get("apns-topic") != topic:
            return Rule(400, "DeviceTokenNotForTopic")
        return None

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

    def _opened(self, connection: PeerConnection) -> None:
        self._connections.add(connection)
        self.connections_opened += 1

    def _closed(self, connection: PeerConnection) -> None:
        self._connections.discard(connection)


def _server_context(
    pki: TestPki | None, ssl_context: ssl.SSLContext | None, auth: AuthMode, client_ca_file: str | None
) -> ssl.SSLContext:
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
    return ssl_context
