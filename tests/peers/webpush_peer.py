"""A Web Push test peer: a push service (RFC 8030) on 127.0.0.1 over TLS that decrypts every message (RFC 8291)
and checks every VAPID token (RFC 8292), as a browser's push service and the browser together would.

It hands out subscriptions (a fresh P-256 key pair and 16-byte auth secret each, kept to decrypt with) and
validates each push the way push services do, in this order: the subscription exists (404), the VAPID
token (401: ES256 signature by ``k``, ``aud`` = the origin posted to, ``exp`` in the future and at most 24 h
ahead, ``sub`` a mailto: or https: URI; 403: ``k`` is not the subscription's applicationServerKey), the
headers (400: Content-Encoding aes128gcm, TTL present, Urgency and Topic valid when present), the size
(413 over 4096 bytes) and the record itself (400 when it does not decrypt as one aes128gcm record). Then a
script for the subscription answers, else 201 Created. The decryption is written here from RFC 8291 with
``cryptography``'s primitives, not with http-ece, so that the adapter's use of http-ece is checked by a
second implementation (it is itself checked against RFC 8291's example in the tests).

    async with WebPushPeer(pki) as peer:
        sub = peer.subscribe()                          # sub.endpoint, sub.keys, sub.web_subscription
        other = peer.subscribe(host="localhost")        # a second origin on the same server
        peer.script(sub, status=429, retry_after=30)    # or action="hang" / "close", delay=, times=
        ...
        [push] = peer.pushes_for(sub)                   # push.payload (decrypted JSON), push.headers, ...
        peer.connections_per_origin()                   # {"https://127.0.0.1:PORT": 1, ...}
        peer.tcp_connections                            # TCP connections accepted, handshake or not

HTTP routes besides ``POST /push/<id>`` (the subscription endpoint): ``POST /subscriptions`` (body
optionally ``{"applicationServerKey": "<base64url>"}``) answers 201 with a new PushSubscription JSON
(``{"endpoint", "expirationTime", "keys": {"p256dh", "auth"}}``) whose origin is the one the request was
made to; ``GET /subscriptions/<id>/messages`` lists the decrypted messages that subscription received.

Standalone simulator for ``pushsvc dev`` (checks and delivers like above, logs one JSON line per push with
its decrypted payload on stdout)::

    python -m tests.peers.webpush_peer --port 8446 --cert server.pem --key server.key \
        [--write-subscription web-subscription.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import secrets
import ssl
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pushsvc.logging import mask_token
from pushsvc.model import WebSubscription
from tests.peers.tls import TestPki

MAX_BODY_BYTES = 4096  # RFC 8291 section 4: what every push service accepts
MAX_VAPID_LIFETIME = 24 * 3600  # RFC 8292 section 2: exp at most 24 hours ahead
URGENCIES = frozenset({"very-low", "low", "normal", "high"})  # RFC 8030 section 5.3
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # RFC 8030 section 5.4
_PUSH_PATH = re.compile(r"^/push/([A-Za-z0-9_-]+)$")
_MESSAGES_PATH = re.compile(r"^/subscriptions/([A-Za-z0-9_-]+)/messages$")

Action = Literal["answer", "hang", "close"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -------------------------------------------------------------------------------------------- RFC 8291


class DecryptError(ValueError):
    """The body is not one aes128gcm record for this subscription."""


def decrypt_aes128gcm(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """The plaintext of a Web Push message (RFC 8291 section 3.4, RFC 8188 section 2), one record only."""
    if len(body) < 21:
        raise DecryptError("shorter than the aes128gcm header")
    salt, record_size, key_id_length = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if key_id_length != 65:
        raise DecryptError(f"keyid must be the sender's 65-byte public key, got {key_id_length} bytes")
    sender_public = body[21:86]
    ciphertext = body[86:]
    if len(ciphertext) < 17:
        raise DecryptError("no record")
    if len(ciphertext) > record_size:
        raise DecryptError(f"more than one record (rs {record_size}, {len(ciphertext)} bytes): RFC 8291 allows one")
    try:
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_public)
    except ValueError as exc:
        raise DecryptError("keyid is not a P-256 point") from exc
    receiver_public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = private_key.exchange(ec.ECDH(), sender)
    key_info = b"WebPush: info\x00" + receiver_public + sender_public
    ikm = HKDF(hashes.SHA256(), 32, salt=auth_secret, info=key_info).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    try:
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)  # record 0: the nonce as derived
    except Exception as exc:  # cryptography's InvalidTag
        raise DecryptError("authentication tag does not match (wrong keys or corrupted)") from exc
    end = len(padded.rstrip(b"\x00"))
    if end == 0 or padded[end - 1] != 2:
        raise DecryptError("the last record must end with the delimiter 0x02")
    return padded[: end - 1]


# --------------------------------------------------------------------------------------------- RFC 8292


@dataclass(frozen=True)
class VapidCheck:
    status: int | None  # None: accepted; 401 or 403
    problem: str | None
    token: str | None = None
    key: str | None = None
    claims: dict[str, Any] | None = None


def parse_vapid(authorization: str) -> tuple[str, str] | None:
    """(t, k) from ``vapid t=<jwt>, k=<key>`` (parameters in any order, spaces optional), or None."""
    scheme, _, params = authorization.strip().partition(" ")
    if scheme.lower() != "vapid":
        return None
    values: dict[str, str] = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            values[name.strip().lower()] = value.strip()
    if not values.get("t") or not values.get("k"):
        return None
    return values["t"], values["k"]


def check_vapid(authorization: str | None, origin: str, now: float, application_server_key: str | None) -> VapidCheck:
    if not authorization:
        return VapidCheck(401, "missing Authorization (VAPID required)")
    parsed = parse_vapid(authorization)
    if parsed is None:
        return VapidCheck(401, "Authorization is not 'vapid t=..., k=...'")
    token, key = parsed
    try:
        raw_key = b64url_decode(key)
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw_key)
    except ValueError:
        return VapidCheck(401, "k is not a base64url uncompressed P-256 point", token, key)
    if len(raw_key) != 65:
        return VapidCheck(401, "k must be the uncompressed point (65 bytes)", token, key)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, public_key, algorithms=["ES256"],
                            options={"verify_exp": False, "verify_aud": False, "verify_iat": False})
    except jwt.PyJWTError as exc:
        return VapidCheck(401, f"JWT not signed by k with ES256 ({exc})", token, key)
    check = VapidCheck(None, None, token, key, claims)
    problem = None
    if header.get("alg") != "ES256":
        problem = "alg must be ES256"
    elif claims.get("aud") != origin:
        problem = f"aud {claims.get('aud')!r} is not this origin {origin!r}"
    elif not isinstance(claims.get("exp"), int):
        problem = "exp missing"
    elif claims["exp"] <= now:
        problem = "expired"
    elif claims["exp"] > now + MAX_VAPID_LIFETIME:
        problem = "exp more than 24 hours ahead"
    elif not isinstance(claims.get("sub"), str) or not claims["sub"].startswith(("mailto:", "https:")):
        problem = "sub must be a mailto: or https: URI"
    if problem is not None:
        return VapidCheck(401, problem, token, key, claims)
    if application_server_key is not None and key != application_server_key:
        return VapidCheck(403, "k is not the key the subscription was made with", token, key, claims)
    return check


# ------------------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class PeerSubscription:
    """A subscription the peer handed out, with the private half a browser keeps."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    p256dh: str
    auth: str
    application_server_key: str | None = None

    @property
    def keys(self) -> dict[str, str]:
        return {"p256dh": self.p256dh, "auth": self.auth}

    @property
    def web_subscription(self) -> WebSubscription:
        return WebSubscription(self.endpoint, self.p256dh, self.auth)

    def as_json(self) -> dict[str, Any]:
        """What PushSubscription.toJSON() gives a web app (and the device API takes)."""
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": self.keys}


def make_subscription(authority: str, application_server_key: str | None = None) -> PeerSubscription:
    """What a browser does on PushManager.subscribe(): a P-256 key pair and an auth secret, for an endpoint at
    `authority` (host:port)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    subscription_id = secrets.token_urlsafe(24)
    return PeerSubscription(
        id=subscription_id,
        endpoint=f"https://{authority}/push/{subscription_id}",
        private_key=private_key,
        p256dh=b64url(public),
        auth=b64url(secrets.token_bytes(16)),
        application_server_key=application_server_key,
    )


@dataclass(frozen=True)
class VapidKey:
    private_key_file: Path  # PEM, what WebPushSettings.vapid_private_key_file names
    public_key: str  # base64url uncompressed point: the applicationServerKey browsers subscribe with


def make_vapid_key(directory: Path) -> VapidKey:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "vapid.pem"
    path.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return VapidKey(path, b64url(raw))


@dataclass
class Rule:
    """How to answer a subscription's pushes once they pass the checks (times: for the next N only)."""

    status: int = 201
    retry_after: int | str | None = None
    delay: float = 0.0
    action: Action = "answer"
    times: int | None = None
    location: str | None = None  # a Location header (a redirect's target)


@dataclass(frozen=True)
class ReceivedPush:
    subscription_id: str
    origin: str  # "https://" + the Host the request was sent to
    headers: dict[str, str]  # lower-case names
    body: bytes
    plaintext: bytes | None  # the decrypted record (None: not decrypted)
    payload: Any  # the plaintext as JSON (None: not JSON or not decrypted)
    vapid: VapidCheck | None
    connection_id: int
    status: int | str  # the answer's status, or "hang" / "close"
    problem: str | None  # why the peer refused it (None: it passed every check)
    time: float


# ------------------------------------------------------------------------------------------------- peer


class WebPushPeer:
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

    async def start(self) -> WebPushPeer:
        loop = asyncio.get_running_loop()
        self._web = web.Server(self._handle)
        self._server = await loop.create_server(self._accept, self.host, self.port, ssl=self._ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

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

    async def __aenter__(self) -> WebPushPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
                return _error(404, "no such subscription")
            messages = [push.payload for push in self.pushes_for(subscription_id) if push.problem is None]
            return web.json_response(messages)
        return _error(404, f"no route for {request.method} {path}")

    async def _create_subscription(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        try:
            options = json.loads(body) if body else {}
        except ValueError:
            return _error(400, "body must be JSON")
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
            payload=_json_or_none(plaintext),
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
        if problem is not None:
            return _error(rule.status, problem)
        response_headers = {"TTL": headers["ttl"]}
        if 200 <= rule.status < 300:
            response_headers["Location"] = f"{origin}/message/{uuid.uuid4()}"
        if rule.location is not None:
            response_headers["Location"] = rule.location
        if rule.retry_after is not None:
            response_headers["Retry-After"] = str(rule.retry_after)
        return web.Response(status=rule.status, headers=response_headers)

    def _check(
        self, subscription_id: str, headers: dict[str, str], body: bytes, origin: str
    ) -> tuple[int, str | None, bytes | None, VapidCheck | None]:
        """A push service's checks, in its order: (status, problem or None, plaintext, the VAPID check)."""
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            return 404, "no such subscription", None, None
        vapid = check_vapid(headers.get("authorization"), origin, self.clock(), subscription.application_server_key)
        if vapid.status is not None:
            return vapid.status, vapid.problem, None, vapid
        problem = _header_problem(headers)
        if problem is not None:
            return 400, problem, None, vapid
        if len(body) > MAX_BODY_BYTES:
            return 413, f"{len(body)} bytes, over {MAX_BODY_BYTES}", None, vapid
        try:
            plaintext = decrypt_aes128gcm(body, subscription.private_key, b64url_decode(subscription.auth))
        except DecryptError as exc:
            return 400, f"does not decrypt: {exc}", None, vapid
        return 201, None, plaintext, vapid

    def _rule_for(self, subscription_id: str) -> Rule:
        rule = self._rules.get(subscription_id)
        if rule is None:
            return self.default
        if rule.times is not None:
            if rule.times <= 0:
                return self.default
            rule.times -= 1
        return rule


def _header_problem(headers: dict[str, str]) -> str | None:
    if headers.get("content-encoding") != "aes128gcm":
        return f"Content-Encoding must be aes128gcm, got {headers.get('content-encoding')!r}"
    ttl = headers.get("ttl")
    if ttl is None or not ttl.isdigit():
        return f"TTL must be present, a non-negative integer (got {ttl!r})"
    if "urgency" in headers and headers["urgency"] not in URGENCIES:
        return f"Urgency must be one of {', '.join(sorted(URGENCIES))}"
    if "topic" in headers and not _TOPIC.match(headers["topic"]):
        return "Topic must be at most 32 characters of the base64url alphabet"
    return None


def _json_or_none(plaintext: bytes | None) -> Any:
    if plaintext is None:
        return None
    try:
        return json.loads(plaintext)
    except ValueError:
        return None


def _error(status: int, message: str) -> web.Response:
    # The shape Mozilla's push service answers with.
    return web.json_response({"code": status, "error": message}, status=status)


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


# ------------------------------------------------------------------------------------------- standalone


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Web Push simulator: decrypts, checks VAPID and logs every push")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8446)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument(
        "--write-subscription",
        metavar="PATH",
        help="create a subscription and write its PushSubscription JSON here (before the port opens)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    peer = WebPushPeer(ssl_context=context, host=args.host, port=args.port, log_json=True)
    if args.write_subscription:
        if not args.port:
            raise SystemExit("--write-subscription needs a fixed --port (the endpoint names it)")
        _write_json(Path(args.write_subscription), peer.subscribe().as_json())
        print(json.dumps({"event": "webpush_subscription_written", "file": args.write_subscription}), flush=True)
    async with peer:
        print(json.dumps({"event": "webpush_peer_listening", "endpoint": peer.base_url}), flush=True)
        await asyncio.Event().wait()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
