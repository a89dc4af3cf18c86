"""The Web Push peer: a push service on one TLS port (aiohttp), its subscriptions, scripts and recorded pushes.

Routes: ``POST /push/<id>`` (a subscription's endpoint: checked by checks.py, answered by answers.py),
``POST /subscriptions`` (a new subscription whose origin is the one the request was made to) and
``GET /subscriptions/<id>/messages`` (the decrypted messages that subscription received).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pushsvc.logs import mask_token
from pushsvc.simulators.lifecycle import Peer
from pushsvc.simulators.rules import take_rule
from pushsvc.simulators.tls import TestPki
from pushsvc.simulators.webpush.answers import Action, Rule, answer_headers, error_response
from pushsvc.simulators.webpush.checks import ReceivedPush, check_push, json_or_none
from pushsvc.simulators.webpush.keys import PeerSubscription, make_subscription
from pushsvc.simulators.webpush.vapid import VapidCheck

_PUSH_PATH = re.compile(r"^/push/([A-Za-z0-9_-]+)$")
_MESSAGES_PATH = re.compile(r"^/subscriptions/([A-Za-z0-9_-]+)/messages$")


class WebPushPeer(Peer):
    """A push service on one TLS port. Use as ``async with WebPushPeer(pki) as peer`` or start()/stop()."""

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        log_json: bool = False,
    ) -> None:
        if ssl_context is None:
            if pki is None:
                raise ValueError("WebPushPeer needs a TestPki or an ssl_context")
            ssl_context = pki.server_context(["http/1.1"])
        self.host = host
        self.port = port
        self.clock = clock
        self.log_json = log_json
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._handlers: set[Any] = set()  # the connections' aiohttp RequestHandlers
        self._stopping = asyncio.Event()
        self.subscriptions: dict[str, PeerSubscription] = {}
        self.pushes: list[ReceivedPush] = []
        self._arrived = asyncio.Event()
        self._rules: dict[str, Rule] = {}
        self.default = Rule()
        # Connections that sent a request, numbered in order (transport -> id).
        self._connection_ids: dict[object, int] = {}
        self.tcp_connections = 0

    # ---------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._web = web.Server(self._handle)
        self._server = await loop.create_server(self._accept, self.host, self.port, ssl=self._ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> Any:
        self.tcp_connections += 1  # called on accept, before the TLS handshake
        assert self._web is not None
        handler = self._web()
        self._handlers = {h for h in self._handlers if h.transport is not None}
        self._handlers.add(handler)
        return handler

    async def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # ends hanging handlers
        self._server.close()
        for handler in list(self._handlers):  # clients' idle keep-alive connections too: no grace period
            if handler.transport is not None:
                handler.transport.abort()
        if self._web is not None:
            await self._web.shutdown(0.25)
        await self._server.wait_closed()
        self._server = None

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    # ---------------------------------------------------------------------------------------- scripting

    def subscribe(self, host: str | None = None, application_server_key: str | None = None) -> PeerSubscription:
        """A new subscription; its endpoint names `host` (default: the address listened on) and this port."""
        subscription = make_subscription(f"{host or self.host}:{self.port}", application_server_key)
        self.subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription: PeerSubscription | str) -> None:
        """Forget a subscription: its pushes get 404, as for one the push service never knew."""
        self.subscriptions.pop(self._id(subscription), None)

    def script(
        self,
        subscription: PeerSubscription | str,
        *,
        status: int = 201,
        retry_after: int | str | None = None,
        delay: float = 0.0,
        action: Action = "answer",
        times: int | None = None,
        location: str | None = None,
    ) -> None:
        """How pushes to `subscription` (or its endpoint or id) are answered once they pass the checks.
        action "hang" never answers, "close" drops the connection instead of answering."""
        self._rules[self._id(subscription)] = Rule(status, retry_after, delay, action, times, location)

    def set_default(self, *, status: int = 201, retry_after: int | str | None = None, delay: float = 0.0,
                    action: Action = "answer") -> None:
        """The rule for subscriptions without a script (initially: 201)."""
        self.default = Rule(status, retry_after, delay, action)

    def reset(self) -> None:
        """Forget pushes, scripts and counts (subscriptions and open connections stay)."""
        self.pushes.clear()
        self._rules.clear()
        self.default = Rule()
        self._connection_ids.clear()
        self.tcp_connections = 0

    @staticmethod
    def _id(subscription: PeerSubscription | str) -> str:
        if isinstance(subscription, PeerSubscription):
            return subscription.id
        return subscription.rsplit("/", 1)[-1]

    # ------------------------------------------------------------------------------------------ queries

    def pushes_for(self, subscription: PeerSubscription | str) -> list[ReceivedPush]:
        subscription_id = self._id(subscription)
        return [push for push in self.pushes if push.subscription_id == subscription_id]

    def connections_per_origin(self) -> dict[str, int]:
        """How many connections carried requests for each origin."""
        seen: dict[str, set[int]] = {}
        for push in self.pushes:
            seen.setdefault(push.origin, set()).add(push.connection_id)
        return {origin: len(ids) for origin, ids in seen.items()}

    def origins_per_connection(self) -> dict[int, set[str]]:
        seen: dict[int, set[str]] = {}
        for push in self.pushes:
            seen.setdefault(push.connection_id, set()).add(push.origin)
        return seen

    async def wait_for_pushes(self, count: int, timeout: float = 5.0) -> list[ReceivedPush]:
        async with asyncio.timeout(timeout):
            while len(self.pushes) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.pushes

    # ----------------------------------------------------------------------------------------- handlers

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        match = _PUSH_PATH.match(path)
        if match and request.method == "POST":
            return await self._push(request, match.group(1))
        if path == "/subscriptions" and request.method == "POST":
            return await self._create_subscription(request)
        match = _MESSAGES_PATH.match(path)
        if match and request.method == "GET":
            subscription_id = match.group(1)
            if subscription_id not in self.subscriptions:
                return error_response(404, "no such subscription")
            messages = [push.payload for push in self.pushes_for(subscription_id) if push.problem is None]
            return web.json_response(messages)
        return error_response(404, f"no route for {request.method} {path}")

    async def _create_subscription(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        try:
            options = json.loads(body) if body else {}
        except ValueError:
            return error_response(400, "body must be JSON")
        key = options.get("applicationServerKey") if isinstance(options, dict) else None
        subscription = self.subscribe(host=request.url.host, application_server_key=key)
        return web.json_response(subscription.as_json(), status=201)

    async def _push(self, request: web.BaseRequest, subscription_id: str) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        origin = f"https://{request.host}"
        connection_id = self._connection_ids.setdefault(request.transport, len(self._connection_ids) + 1)
        status, problem, plaintext, vapid = self._check(subscription_id, headers, body, origin)
        rule = self._rule_for(subscription_id) if problem is None else Rule(status=status)
        push = ReceivedPush(
            subscription_id=subscription_id,
            origin=origin,
            headers=headers,
            body=body,
            plaintext=plaintext,
            payload=json_or_none(plaintext),
            vapid=vapid,
            connection_id=connection_id,
            status=rule.status if rule.action == "answer" else rule.action,
            problem=problem,
            time=self.clock(),
        )
        self.pushes.append(push)
        self._arrived.set()
        if self.log_json:
            _log(push)
        return await self._answer(request, rule, push)

    async def _answer(self, request: web.BaseRequest, rule: Rule, push: ReceivedPush) -> web.StreamResponse:
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.action == "hang":
            await self._stopping.wait()
        if rule.action != "answer":
            # "close", or a hang at shutdown: the connection ends without an answer (if the client has not
            # closed it already).
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if push.problem is not None:
            return error_response(rule.status, push.problem)
        return web.Response(status=rule.status, headers=answer_headers(rule, push.headers["ttl"], push.origin))

    def _check(
        self, subscription_id: str, headers: dict[str, str], body: bytes, origin: str
    ) -> tuple[int, str | None, bytes | None, VapidCheck | None]:
        """A push service's checks, in its order: (status, problem or None, plaintext, the VAPID check)."""
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            return 404, "no such subscription", None, None
        return check_push(subscription, headers, body, origin, self.clock())

    def _rule_for(self, subscription_id: str) -> Rule:
        return take_rule(self._rules.get(subscription_id), self.default)


def _log(push: ReceivedPush) -> None:
    h = push.headers
    line = {
        "event": "webpush_notification",
        "ts": push.time,
        "subscription": mask_token(push.subscription_id),
        "origin": push.origin,
        "status": push.status,
        "problem": push.problem,
        "ttl": h.get("ttl"),
        "urgency": h.get("urgency"),
        "topic": h.get("topic"),
        "vapid_sub": (push.vapid.claims or {}).get("sub") if push.vapid else None,
        "payload": push.payload,
    }
    print(json.dumps(line, ensure_ascii=False), flush=True)
