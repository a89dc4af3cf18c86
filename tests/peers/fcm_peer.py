"""An FCM HTTP v1 test peer: OAuth2 token endpoint plus ``messages:send``, over TLS.

One TLS listener negotiates ALPN: ``h2`` (firebase-admin / httpx sends messages over HTTP/2) or
``http/1.1`` (google-auth fetches OAuth tokens with ``requests``). Both protocols reach the same
routes, so either client may use either endpoint.

The peer runs its own event loop in a background thread. google-auth refreshes tokens with a
*blocking* ``requests`` call; if the peer shared the test's event loop, a client that refreshes on
the loop (as firebase-admin's own httpx auth flow does) would deadlock against it.

Usage in tests::

    async with FcmPeer(pki) as peer:
        sa = peer.write_service_account(tmp_path / "sa.json")
        peer.script("tok-gone", error_code="UNREGISTERED")
        ...
        assert peer.requests[0].body["message"]["token"] == "tok-1"

Standalone simulator (accepts every bearer token and JWT, logs one JSON line per message)::

    python -m tests.peers.fcm_peer --port 8443 --cert server.pem --key server.key \
        [--write-service-account sa.json --project demo-project]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import json
import re
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushsvc.logging import mask_token

if TYPE_CHECKING:
    from tests.peers.tls import TestPki

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
DEFAULT_PROJECT = "demo-project"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_PAYLOAD_BYTES = 4096  # FCM's limit for data + notification

# FCM errorCode -> (HTTP status, google.rpc status, message FCM sends)
ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'"),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
# Plain HTTP statuses (no FcmError detail) -> google.rpc status
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
# Real registration tokens are base64url-ish with ':' and '-'; anything else FCM rejects as INVALID_ARGUMENT.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_:.\-]{1,4096}$")


@dataclass
class RecordedRequest:
    """One ``messages:send`` request as the peer received it."""

    project: str
    headers: dict[str, str]  # lower-case names, pseudo-headers excluded
    body: Any  # decoded JSON (None if the body was not JSON)
    time: float
    http_version: str  # "h2" or "http/1.1"
    authorized: bool
    status: int | None = None  # what the peer answered (None: hung or closed)

    @property
    def token(self) -> str | None:
        try:
            return self.body["message"]["token"]
        except (TypeError, KeyError):
            return None

    @property
    def message(self) -> dict[str, Any]:
        return self.body["message"]

    @property
    def validate_only(self) -> bool:
        """A dry run's check: FCM validates the message and delivers nothing."""
        return isinstance(self.body, dict) and self.body.get("validate_only") is True


@dataclass
class TokenRequest:
    """One request to the OAuth2 token endpoint."""

    form: dict[str, str]
    claims: dict[str, Any] | None  # decoded JWT assertion claims
    time: float
    granted: str | None  # the access token issued, None if refused


@dataclass
class Script:
    status: int | None = None
    error_code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    action: str | None = None  # "hang" | "close"
    times: int | None = None  # None: every request for this token


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str | None = None  # "hang" | "close": no reply is written


def fcm_error_body(
    status: int,
    rpc_status: str,
    message: str,
    error_code: str | None,
    extra_details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    details.extend(extra_details or [])
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return {"error": error}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class _Core:
    """Routes and state; protocol handlers call ``handle`` from the peer's event loop."""

    def __init__(self, accept_any_auth: bool, log_messages: bool) -> None:
        self.accept_any_auth = accept_any_auth
        self.log_messages = log_messages
        self.requests: list[RecordedRequest] = []
        self.token_requests: list[TokenRequest] = []
        self.scripts: dict[str, Script] = {}
        self.issued_tokens: set[str] = set()
        self.public_keys: dict[str, Any] = {}  # client_email -> RSA public key of service accounts we wrote
        self.token_uri = ""
        self._counter = 0

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, version: str) -> _Reply:
        path_only = path.split("?", 1)[0]
        if path_only == "/token":
            if method != "POST":
                return _Reply(405, _json({"error": "invalid_request"}))
            return self._token(headers, body)
        match = _SEND_PATH.match(path_only)
        if match:
            if method != "POST":
                return _Reply(405, _json(fcm_error_body(405, "INVALID_ARGUMENT", "Method not allowed", None)))
            return await self._send(match.group(1), headers, body, version)
        return _Reply(404, _json(fcm_error_body(404, "NOT_FOUND", f"No route for {path_only}", None)))

    # ------------------------------------------------------------------------------------- token

    def _token(self, headers: dict[str, str], body: bytes) -> _Reply:
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        record = TokenRequest(form=form, claims=None, time=time.time(), granted=None)
        self.token_requests.append(record)
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _Reply(400, _json({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}))
        assertion = form.get("assertion", "")
        problem = self._check_assertion(assertion, record)
        if problem:
            return _Reply(400, _json({"error": "invalid_grant", "error_description": problem}))
        access_token = "ya29.peer-" + secrets.token_urlsafe(24)
        self.issued_tokens.add(access_token)
        record.granted = access_token
        answer = {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}
        return _Reply(200, _json(answer), [("content-type", "application/json; charset=utf-8")])

    def _check_assertion(self, assertion: str, record: TokenRequest) -> str | None:
        parts = assertion.split(".")
        if len(parts) != 3:
            return "Invalid JWT: assertion missing or malformed"
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            return "Invalid JWT: not base64url JSON"
        record.claims = claims
        if self.accept_any_auth:
            return None
        key = self.public_keys.get(claims.get("iss", ""))
        if key is None:
            return "Invalid JWT Signature."  # what Google says for an unknown or deleted key
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256"
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return "Invalid JWT Signature."
        # google-auth always addresses the assertion to Google's token endpoint, whatever token_uri says.
        if claims.get("aud") not in (self.token_uri, GOOGLE_TOKEN_AUDIENCE):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
        if not claims.get("scope"):
            return "Invalid JWT: scope missing"
        if float(claims.get("exp", 0)) < time.time():
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        return None

    # -------------------------------------------------------------------------------------- send

    async def _send(self, project: str, headers: dict[str, str], body: bytes, version: str) -> _Reply:
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        authorized = bool(bearer) and (self.accept_any_auth or bearer in self.issued_tokens)
        record = RecordedRequest(project, dict(headers), payload, time.time(), version, authorized)
        self.requests.append(record)
        if not authorized:
            reply = self._error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential.",
                None,
            )
            record.status = reply.status
            return reply
        token = record.token
        script = self._take_script(token)
        if script and script.delay:
            await asyncio.sleep(script.delay)
        if script and script.action in ("hang", "close"):
            return _Reply(0, action=script.action)
        if script and (script.error_code or script.status):
            reply = self._scripted_error(script)
        else:
            reply = self._validate(payload) or self._success(project, record.validate_only)
        record.status = reply.status
        if self.log_messages and payload is not None:
            self._log(record)
        return reply

    def _take_script(self, token: str | None) -> Script | None:
        script = self.scripts.get(token or "")
        if script is None:
            return None
        if script.times is not None:
            script.times -= 1
            if script.times <= 0:
                self.scripts.pop(token or "", None)
        return script

    def _scripted_error(self, script: Script) -> _Reply:
        if script.error_code:
            status, rpc_status, message = ERRORS.get(script.error_code, (400, "INVALID_ARGUMENT", script.error_code))
            status = script.status or status
            extra: list[dict[str, Any]] = []
            if script.error_code == "INVALID_ARGUMENT" and script.message is None:
                # FCM's answer for a malformed registration token names the offending field.
                extra = [
                    {
                        "@type": BAD_REQUEST_TYPE,
                        "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
                    }
                ]
            reply = self._error(status, rpc_status, script.message or message, script.error_code, extra)
        else:
            status = script.status or 500
            if status < 400:
                return self._success("scripted")
            rpc_status = STATUS_NAMES.get(status, "UNKNOWN")
            reply = self._error(status, rpc_status, script.message or f"Scripted HTTP {status}", None)
        if script.retry_after is not None:
            reply.headers.append(("retry-after", script.retry_after))
        return reply

    def _validate(self, payload: Any) -> _Reply | None:
        """The subset of FCM's own validation a test can trip over naturally."""
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, dict):
            return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Expected 'message'.", None)
        targets = [k for k in ("token", "topic", "condition") if k in message]
        if len(targets) != 1:
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "Exactly one of token, topic or condition is required",
                "INVALID_ARGUMENT",
            )
        token = message.get("token")
        if token is not None and (not isinstance(token, str) or not _TOKEN_SHAPE.match(token)):
            return self._scripted_error(Script(error_code="INVALID_ARGUMENT"))
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data' (Map), values must be strings",
                "INVALID_ARGUMENT",
            )
        size = len(_json({"data": data, "notification": message.get("notification", {})}))
        if size > MAX_PAYLOAD_BYTES:
            return self._error(400, "INVALID_ARGUMENT", "Android message is too big", "INVALID_ARGUMENT")
        return None

    def _success(self, project: str, validate_only: bool = False) -> _Reply:
        if validate_only:  # FCM answers a validate_only request with a fixed fake message name
            name = f"projects/{project}/messages/fake_message_id"
            return _Reply(200, _json({"name": name}), [("content-type", "application/json; charset=utf-8")])
        self._counter += 1
        name = f"projects/{project}/messages/0:{int(time.time() * 1000)}%{self._counter:08x}"
        return _Reply(200, _json({"name": name}), [("content-type", "application/json; charset=utf-8")])

    def _error(
        self,
        status: int,
        rpc_status: str,
        message: str,
        error_code: str | None,
        extra: list[dict[str, Any]] | None = None,
    ) -> _Reply:
        body = _json(fcm_error_body(status, rpc_status, message, error_code, extra))
        return _Reply(status, body, [("content-type", "application/json; charset=utf-8")])

    def _log(self, record: RecordedRequest) -> None:
        message = dict(record.body.get("message", {}))
        token = message.pop("token", None)
        line = {
            "time": record.time,
            "project": record.project,
            "token": mask_token(token),
            "status": record.status,
            "protocol": record.http_version,
            "message": message,
        }
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------- protocols


class _Connections:
    """Open connections and their in-flight handler tasks, so stop() and hang/close can end them."""

    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # per-stream handlers (h2), cancelled on stop
        self.connections: set[asyncio.Task[Any]] = set()  # connection loops, ended by aborting transports
        self.stopping: asyncio.Event | None = None  # created in the peer's loop; hung requests wait on it

    async def hang(self) -> None:
        assert self.stopping is not None
        await self.stopping.wait()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


async def _serve_h2(
    core: _Core, conns: _Connections, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    )
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    window_changed = asyncio.Event()
    streams: dict[int, tuple[dict[str, str], bytearray]] = {}
    handlers: dict[int, asyncio.Task[Any]] = {}

    def flush() -> None:
        data = conn.data_to_send()
        if data and not writer.is_closing():
            writer.write(data)

    async def respond(stream_id: int, headers: dict[str, str], body: bytes) -> None:
        reply = await core.handle(
            headers.get(":method", ""),
            headers.get(":path", ""),
            {k: v for k, v in headers.items() if not k.startswith(":")},
            body,
            "h2",
        )
        if reply.action == "hang":
            await conns.hang()
            return
        if reply.action == "close":
            writer.transport.abort()
            return
        out = [(":status", str(reply.status)), ("content-length", str(len(reply.body))), *reply.headers]
        try:
            conn.send_headers(stream_id, out, end_stream=not reply.body)
            flush()
            view = memoryview(reply.body)
            while view:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if window <= 0:
                    window_changed.clear()
                    await window_changed.wait()
                    continue
                chunk, view = view[:window], view[window:]
                conn.send_data(stream_id, bytes(chunk), end_stream=not view)
                flush()
            await writer.drain()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass  # the client reset the stream or went away

    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                flush()
                break
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = (dict(event.headers), bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in streams:
                        streams[event.stream_id][1].extend(event.data)
                    # Flow control: give the window back as soon as the data is buffered.
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = streams.pop(event.stream_id, ({}, bytearray()))
                    task = conns.spawn(respond(event.stream_id, headers, bytes(body)))
                    handlers[event.stream_id] = task
                    task.add_done_callback(lambda _t, sid=event.stream_id: handlers.pop(sid, None))
                elif isinstance(event, h2.events.StreamReset):
                    streams.pop(event.stream_id, None)
                    task = handlers.pop(event.stream_id, None)
                    if task:
                        task.cancel()
                elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                    window_changed.set()
                elif isinstance(event, h2.events.ConnectionTerminated):
                    flush()
                    return
            flush()
    finally:
        for task in list(handlers.values()):
            task.cancel()


async def _serve_http1(
    core: _Core, conns: _Connections, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        line = await reader.readline()
        if not line or not line.strip():
            if not line:
                return
            continue
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body.extend(await reader.readexactly(size))
                await reader.readline()
        else:
            body = bytearray(await reader.readexactly(int(headers.get("content-length", "0") or 0)))
        reply = await core.handle(method, target, headers, bytes(body), "http/1.1")
        if reply.action == "hang":
            await conns.hang()
            return
        if reply.action == "close":
            writer.transport.abort()
            return
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        head = [
            f"HTTP/1.1 {reply.status} {_reason(reply.status)}",
            f"content-length: {len(reply.body)}",
            f"date: {email.utils.formatdate(usegmt=True)}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        head += [f"{k}: {v}" for k, v in reply.headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        await writer.drain()
        if not keep_alive:
            return


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# ---------------------------------------------------------------------------------------------- server


class FcmPeer:
    """FCM v1 + OAuth2 token endpoint on one TLS port, run in a background thread with its own loop."""

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        accept_any_auth: bool = False,
        log_messages: bool = False,
    ) -> None:
        if pki is not None:
            cert_file, key_file = pki.cert_file, pki.key_file
        if cert_file is None or key_file is None:
            raise ValueError("FcmPeer needs a TestPki or cert_file and key_file")
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        self.host = host
        self.port = port
        self._core = _Core(accept_any_auth, log_messages)
        self._conns = _Connections()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ---------------------------------------------------------------------------------- public API

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``messages:send`` request received, in arrival order (including unauthorized ones)."""
        return self._core.requests

    @property
    def token_requests(self) -> list[TokenRequest]:
        return self._core.token_requests

    @property
    def issued_tokens(self) -> set[str]:
        return self._core.issued_tokens

    def requests_for(self, token: str) -> list[RecordedRequest]:
        return [r for r in self._core.requests if r.token == token]

    def script(
        self,
        token: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        message: str | None = None,
        times: int | None = None,
    ) -> None:
        """Tell the peer how to answer sends to ``token``.

        error_code: an FCM errorCode (UNREGISTERED, SENDER_ID_MISMATCH, INVALID_ARGUMENT, QUOTA_EXCEEDED,
        UNAVAILABLE, INTERNAL, THIRD_PARTY_AUTH_ERROR); its HTTP status is FCM's unless ``status`` is given.
        status alone: a plain google.rpc error of that status without FcmError detail (or success if < 400).
        message: replaces FCM's message; for INVALID_ARGUMENT the default message and field violation
        say the registration token is invalid, a custom message makes it a payload error.
        retry_after: Retry-After header value (seconds or HTTP date). delay: seconds before answering.
        action: "hang" (never answer) or "close" (drop the connection). times: apply to the next N sends only.
        """
        if action not in (None, "hang", "close"):
            raise ValueError("action must be 'hang' or 'close'")
        if error_code is not None and error_code not in ERRORS:
            raise ValueError(f"unknown FCM error code {error_code!r} (known: {', '.join(ERRORS)})")
        self._core.scripts[token] = Script(
            status=status,
            error_code=error_code,
            message=message,
            retry_after=None if retry_after is None else str(retry_after),
            delay=delay or 0.0,
            action=action,
            times=times,
        )

    def revoke_tokens(self) -> None:
        """Forget every issued access token: the next send gets 401 UNAUTHENTICATED."""
        self._core.issued_tokens.clear()

    def reset(self) -> None:
        """Forget scripts and recorded requests (issued tokens and known service accounts stay valid)."""
        self._core.scripts.clear()
        self._core.requests.clear()
        self._core.token_requests.clear()

    def write_service_account(self, path: str | Path, project_id: str = DEFAULT_PROJECT) -> Path:
        """Write a service-account JSON with a fresh RSA key whose token_uri points at this peer."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        email_addr = f"pushsvc-test-{secrets.token_hex(4)}@{project_id}.iam.gserviceaccount.com"
        self._core.public_keys[email_addr] = key.public_key()
        info = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email_addr,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": f"{self.base_url}/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": f"{self.base_url}/certs",
            "client_x509_cert_url": f"{self.base_url}/certs/{email_addr}",
            "universe_domain": "googleapis.com",
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=2))
        return out

    async def wait_for_requests(self, count: int, within: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` send requests arrived; returns them."""
        deadline = time.monotonic() + within
        while len(self._core.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} FCM requests, got {len(self._core.requests)}")
            await asyncio.sleep(0.01)
        return list(self._core.requests)

    # ---------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FcmPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run_thread, name="fcm-peer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._started.wait, 10)
        if self._start_error is not None:
            raise self._start_error
        if not self._started.is_set():
            raise TimeoutError("FCM peer did not start")

    async def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        await asyncio.wrap_future(future)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self._loop = None

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        self._core.token_uri = ""  # set once the port is known
        self._conns.stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        self._core.token_uri = self.token_uri

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._conns.stopping is not None:
            self._conns.stopping.set()
        for task in list(self._conns.tasks):
            task.cancel()
        for writer in list(self._conns.writers):
            writer.transport.abort()
        pending = [*self._conns.tasks, *self._conns.connections]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def serve_forever(self) -> None:
        """Standalone mode: serve in the current loop until cancelled."""
        await self._listen()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self._shutdown()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._conns.connections.add(task)
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
        serve: Callable[..., Any] = _serve_h2 if protocol == "h2" else _serve_http1
        try:
            await serve(self._core, self._conns, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._conns.writers.discard(writer)
            if task is not None:
                self._conns.connections.discard(task)
            writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FCM HTTP v1 simulator for pushsvc development")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument(
        "--write-service-account",
        metavar="PATH",
        help="also write a service-account JSON whose token_uri points here",
    )
    parser.add_argument("--project", default="demo-project")
    args = parser.parse_args(argv)
    peer = FcmPeer(
        cert_file=args.cert,
        key_file=args.key,
        host=args.host,
        port=args.port,
        accept_any_auth=True,
        log_messages=True,
    )
    if args.write_service_account:
        path = peer.write_service_account(args.write_service_account, project_id=args.project)
        sys.stderr.write(f"service account written to {path}\n")
    sys.stderr.write(f"FCM peer listening on {peer.base_url} (h2 + http/1.1)\n")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(peer.serve_forever())


if __name__ == "__main__":
    main()
