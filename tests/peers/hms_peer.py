"""A Huawei Push Kit test peer: the OAuth 2 token endpoint and ``/v1/{app_id}/messages:send``, over TLS.

One TLS listener negotiates ALPN ``h2`` (pushsvc sends messages over HTTP/2) or ``http/1.1`` (it fetches
tokens with httpx over HTTP/1.1); both reach both routes. The HTTP/1.1 and HTTP/2 server side is fcm_peer's,
shared rather than copied. The peer runs on the caller's event loop: the adapter never blocks it.

What it checks, as Push Kit does:
    * ``POST /oauth2/v3/token``: the client-credentials form (grant_type, client_id, client_secret); wrong
      credentials are refused (HTTP 400, Account Kit's error JSON); a granted token lives ``token_lifetime``
      seconds on ``clock`` (both settable, so tests can run an hour in a moment).
    * ``POST /v1/{app_id}/messages:send``: the bearer token (unknown, missing or for another app ->
      80200001, expired -> 80200003, both HTTP 401), then the exact JSON shape: unknown keys anywhere are
      refused (80100003), ``data`` must be a string, ``token`` a list of 1..1000 tokens, android.urgency
      HIGH|NORMAL, android.category only with HIGH, android.ttl "<seconds>s" within 15 days and ending after
      now (80100004), android.collapse_key an integer -1..100 (80100013), android.bi_tag at most 64 bytes, a
      notification's click_action complete, the message without its token at most 4096 bytes (80300008).
Every request is recorded (``requests``, ``token_requests``) whatever the answer.

Usage in tests::

    async with HmsPeer(pki) as peer:
        settings = peer.settings(pki.ca_file)
        peer.script("tok-gone", code="80300007")
        ...
        assert peer.requests_for("tok-1")[0].message["android"]["urgency"] == "HIGH"

Standalone simulator for ``pushsvc dev`` (any client credentials get a token; one JSON line on stdout per
request received, token requests included, secrets never printed)::

    python -m tests.peers.hms_peer --port 8443 --cert server.pem --key server.key [--app-id 100000001]
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
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pushsvc.config import HmsSettings
from pushsvc.logging import mask_token
from tests.peers.fcm_peer import _Connections, _Reply, _serve_h2, _serve_http1

if TYPE_CHECKING:
    from tests.peers.tls import TestPki

DEFAULT_APP_ID = "100000001"
DEFAULT_CLIENT_ID = "100000001"  # AppGallery Connect's OAuth client id of an app is usually its app id
DEFAULT_CLIENT_SECRET = "peer-client-secret-7d1f0c9e4b"
TOKEN_PATH = "/oauth2/v3/token"
DEFAULT_TOKEN_LIFETIME = 3600  # Account Kit's expires_in
MAX_MESSAGE_BYTES = 4096  # "The message body cannot exceed 4096 bytes (excluding token)"
MAX_TOKENS = 1000
MAX_TTL_SECONDS = 15 * 24 * 3600
MAX_BI_TAG_BYTES = 64

# Result code -> (HTTP status, msg) as the peer answers it. The adapter classifies by the code; the statuses
# follow Huawei's result-code table (200 for the 8000xxxx successes, 400 parameter errors, 401 OAuth, 403 no
# permission, 500 internal error).
RESULTS: dict[str, tuple[int, str]] = {
    "80000000": (200, "Success"),
    "80100000": (200, "Some tokens are successfully sent"),
    "80100001": (400, "Some request parameters are incorrect"),
    "80100003": (400, "Incorrect message structure"),
    "80100004": (400, "The message expiration time is earlier than the current time"),
    "80100013": (400, "The collapse_key message field is invalid"),
    "80100016": (400, "The message contains sensitive information"),
    "80200001": (401, "Oauth authentication error"),
    "80200003": (401, "Oauth token expired"),
    "80300002": (403, "The current app does not have the permission to send messages"),
    "80300007": (400, "All the tokens are invalid"),
    "80300008": (400, "The message body size exceeds the default value"),
    "80300010": (400, "The number of tokens in the message body exceeds the default value"),
    "80300011": (403, "You are not authorized to send high-priority notification messages"),
    "81000001": (500, "System internal error"),
}

_SEND_PATH = re.compile(r"^/v1/([^/]+)/messages:send$")
# Push tokens are long base64-ish strings; one with a space or other stray character is "invalid" (80300007).
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_:.+/=\-]{1,512}$")
_TTL = re.compile(r"^(\d+)(\.\d{1,9})?[sS]?$")
_TOP_KEYS = frozenset({"validate_only", "message"})
_MESSAGE_KEYS = frozenset({"data", "notification", "android", "apns", "webpush", "token", "topic", "condition"})
_NOTIFICATION_KEYS = frozenset({"title", "body", "image"})
_ANDROID_KEYS = frozenset(
    {"collapse_key", "urgency", "category", "ttl", "bi_tag", "receipt_id", "fast_app_target", "data", "notification"}
)
_ANDROID_NOTIFICATION_KEYS = frozenset(
    {
        "title", "body", "icon", "color", "sound", "default_sound", "tag", "click_action", "body_loc_key",
        "body_loc_args", "title_loc_key", "title_loc_args", "multi_lang_key", "channel_id", "notify_summary",
        "image", "style", "big_title", "big_body", "auto_clear", "notify_id", "group", "badge", "ticker",
        "auto_cancel", "when", "importance", "use_default_vibrate", "use_default_light", "vibrate_config",
        "visibility", "light_settings", "foreground_show", "inbox_content", "buttons", "profile_id",
    }
)
_CLICK_ACTION_KEYS = frozenset({"type", "intent", "action", "url", "rich_resource"})
_DATA_CATEGORIES = frozenset({"VOIP", "PLAY_VOICE"})  # high-priority data message scenarios


@dataclass
class RecordedRequest:
    """One messages:send request as the peer received it."""

    app_id: str
    headers: dict[str, str]  # lower-case names, pseudo-headers excluded
    body: Any  # decoded JSON (None if the body was not JSON)
    time: float  # on the peer's clock
    http_version: str  # "h2" or "http/1.1"
    bearer: str  # the access token presented ("" if none)
    auth: str  # "valid", "expired", "unknown" (never issued, revoked, or for another app) or "missing"
    status: int | None = None  # what the peer answered (None: hung or closed)
    code: str | None = None

    @property
    def token(self) -> str | None:
        """The first device token of message.token."""
        try:
            tokens = self.body["message"]["token"]
            return tokens[0] if isinstance(tokens, list) and tokens else None
        except (TypeError, KeyError):
            return None

    @property
    def message(self) -> dict[str, Any]:
        return self.body["message"]


@dataclass
class TokenRequest:
    """One request to the token endpoint (the client secret itself is not kept)."""

    form: dict[str, str]  # client_secret removed
    secret_matched: bool
    time: float
    status: int | None = None
    granted: str | None = None  # the access token issued, None if refused


@dataclass
class Script:
    code: str | None = None
    status: int | None = None
    msg: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    action: str | None = None  # "hang" | "close"
    times: int | None = None  # None: every request it applies to


@dataclass
class _Issued:
    client_id: str
    expires_at: float  # on the peer's clock


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _answer(status: int, code: str, msg: str, headers: list[tuple[str, str]] | None = None) -> _Reply:
    body = {"code": code, "msg": msg, "requestId": f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"}
    return _Reply(status, _json(body), [("content-type", "application/json;charset=UTF-8"), *(headers or [])])


def _refuse(code: str, detail: str | None = None) -> _Reply:
    status, msg = RESULTS[code]
    return _answer(status, code, f"{msg}: {detail}" if detail else msg)


class _Core:
    """Routes and state; the shared protocol handlers call ``handle``."""

    def __init__(self, peer: HmsPeer) -> None:
        self.peer = peer
        self.requests: list[RecordedRequest] = []
        self.token_requests: list[TokenRequest] = []
        self.scripts: dict[str, Script] = {}
        self.token_script: Script | None = None
        self.issued: dict[str, _Issued] = {}

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, version: str) -> _Reply:
        path_only = path.split("?", 1)[0]
        if path_only == TOKEN_PATH:
            if method != "POST":
                return _Reply(405, _json({"error": 1101, "error_description": "method not allowed"}))
            return await self._token(body)
        match = _SEND_PATH.match(path_only)
        if match and method == "POST":
            return await self._send(urllib.parse.unquote(match.group(1)), headers, body, version)
        return _Reply(404, _json({"code": "404", "msg": f"no route for {method} {path_only}"}))

    # ------------------------------------------------------------------------------------- token

    async def _token(self, body: bytes) -> _Reply:
        peer = self.peer
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        secret = form.pop("client_secret", None)
        record = TokenRequest(form, secret == peer.client_secret, peer.clock())
        self.token_requests.append(record)
        reply = await self._token_reply(form, record)
        record.status = reply.status
        if peer.log_messages:
            peer.log_line({"endpoint": "token", "client_id": form.get("client_id"), "status": reply.status,
                           "granted": mask_token(record.granted)})
        return reply

    async def _token_reply(self, form: dict[str, str], record: TokenRequest) -> _Reply:
        peer = self.peer
        script = _take(self.token_script, lambda: setattr(self, "token_script", None))
        if script is not None:
            if script.delay:
                await asyncio.sleep(script.delay)
            if script.action:
                return _Reply(0, action=script.action)
            if script.status:
                headers = [("retry-after", script.retry_after)] if script.retry_after is not None else []
                error = {"error_description": script.msg or f"scripted HTTP {script.status}"}
                return _Reply(script.status, _json(error), [("content-type", "application/json"), *headers])
        if form.get("grant_type") != "client_credentials" or not form.get("client_id"):
            return _Reply(400, _json({"error": 1102, "error_description": "invalid request"}))
        client_ok = form["client_id"] == peer.client_id and record.secret_matched
        if not (client_ok or peer.accept_any_auth):
            # What Account Kit says for a wrong client id or secret.
            return _Reply(400, _json({"error": 1101, "sub_error": 20203, "error_description": "invalid client"}))
        # Base64 like Huawei's tokens ("+", "/" and "=" included), so headers and log masking meet them.
        access_token = base64.b64encode(secrets.token_bytes(48)).decode()
        lifetime = peer.token_lifetime
        self.issued[access_token] = _Issued(form["client_id"], peer.clock() + lifetime)
        record.granted = access_token
        answer = {"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}
        return _Reply(200, _json(answer), [("content-type", "application/json;charset=UTF-8")])

    # -------------------------------------------------------------------------------------- send

    async def _send(self, app_id: str, headers: dict[str, str], body: bytes, version: str) -> _Reply:
        peer = self.peer
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        record = RecordedRequest(app_id, dict(headers), payload, peer.clock(), version, bearer, self._auth(bearer))
        self.requests.append(record)
        reply = await self._send_reply(app_id, record)
        if reply.action is None:
            record.status = reply.status
            record.code = _code_of(reply)
        if peer.log_messages:
            self._log(record, body)
        return reply

    def _auth(self, bearer: str) -> str:
        if not bearer:
            return "missing"
        issued = self.issued.get(bearer)
        if issued is None:
            return "unknown"
        return "valid" if self.peer.clock() < issued.expires_at else "expired"

    async def _send_reply(self, app_id: str, record: RecordedRequest) -> _Reply:
        peer = self.peer
        if not peer.accept_any_auth or record.auth != "unknown":
            if record.auth == "expired":
                return _refuse("80200003")
            if record.auth != "valid" or app_id != peer.app_id:
                # A token of another app (or an app id that is not ours) is refused like a bad token.
                return _refuse("80200001")
        token = record.token
        script = _take(self.scripts.get(token or ""), lambda: self.scripts.pop(token or "", None))
        if script is not None:
            if script.delay:
                await asyncio.sleep(script.delay)
            if script.action:
                return _Reply(0, action=script.action)
            return self._scripted(script, token or "")
        return check_request(record.body) or _answer(200, "80000000", "Success")

    def _scripted(self, script: Script, token: str) -> _Reply:
        headers = [("retry-after", script.retry_after)] if script.retry_after is not None else []
        if script.code is None:  # a plain HTTP answer, as a proxy or HMS's flow control gives it
            status = script.status or 503
            return _Reply(status, (script.msg or "").encode(), [("content-type", "text/plain"), *headers])
        status, msg = RESULTS.get(script.code, (400, script.code))
        if script.code == "80100000" and script.msg is None:
            msg = json.dumps({"success": 0, "failure": 1, "illegal_tokens": [token]})
        return _answer(script.status or status, script.code, script.msg or msg, headers)

    def _log(self, record: RecordedRequest, raw: bytes) -> None:
        message: Any
        if isinstance(record.body, dict) and isinstance(record.body.get("message"), dict):
            message = {k: v for k, v in record.body["message"].items() if k != "token"}
        else:
            message = raw[:500].decode("utf-8", "replace")
        self.peer.log_line({"endpoint": "messages:send", "app_id": record.app_id, "token": mask_token(record.token),
                            "auth": record.auth, "status": record.status, "code": record.code,
                            "protocol": record.http_version, "message": message})


def _script(
    code: str | None,
    status: int | None,
    msg: str | None,
    retry_after: float | str | None,
    delay: float | None,
    action: str | None,
    times: int | None,
) -> Script:
    if action not in (None, "hang", "close"):
        raise ValueError("action must be 'hang' or 'close'")
    return Script(code, status, msg, None if retry_after is None else str(retry_after), delay or 0.0, action, times)


def _take(script: Script | None, drop: Callable[[], object]) -> Script | None:
    """The script to apply now, counting down its ``times``."""
    if script is None:
        return None
    if script.times is not None:
        script.times -= 1
        if script.times <= 0:
            drop()
    return script


def _code_of(reply: _Reply) -> str | None:
    try:
        code = json.loads(reply.body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


# ------------------------------------------------------------------------------------------- the JSON


def check_request(payload: Any) -> _Reply | None:
    """Push Kit's refusal of a messages:send body, or None when it would accept it."""
    try:
        _check_request(payload)
    except _Refused as refused:
        return _refuse(refused.code, refused.detail or None)
    return None


class _Refused(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _object(value: Any, path: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused("80100003", f"{path} must be an object")
    for key in value:
        if key not in keys:
            raise _Refused("80100003", f"unknown field {path}.{key}")
    return value


def _strings(value: dict[str, Any], path: str, *names: str) -> None:
    for name in names:
        if name in value and not isinstance(value[name], str):
            raise _Refused("80100003", f"{path}.{name} must be a string")


def _check_request(payload: Any) -> None:
    body = _object(payload, "request", _TOP_KEYS)
    if not isinstance(body.get("validate_only", False), bool):
        raise _Refused("80100003", "validate_only must be a boolean")
    message = _object(body.get("message"), "message", _MESSAGE_KEYS)
    _check_target(message)
    _strings(message, "message", "data")
    if "notification" in message:
        _strings(_object(message["notification"], "message.notification", _NOTIFICATION_KEYS),
                 "message.notification", *_NOTIFICATION_KEYS)
    android = _object(message.get("android", {}), "message.android", _ANDROID_KEYS)
    _check_android(android)
    for name in ("apns", "webpush"):
        if name in message and not isinstance(message[name], dict):
            raise _Refused("80100003", f"message.{name} must be an object")
    if "data" not in message and "notification" not in message and "notification" not in android:
        raise _Refused("80100003", "neither data nor a notification")
    size = len(_json({k: v for k, v in message.items() if k != "token"}))
    if size > MAX_MESSAGE_BYTES:
        raise _Refused("80300008", f"{size} bytes")


def _check_target(message: dict[str, Any]) -> None:
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1:
        raise _Refused("80100003", "exactly one of token, topic, condition")
    if "token" not in message:
        return
    tokens = message["token"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _Refused("80100003", "message.token must be a list of strings")
    if not 1 <= len(tokens) <= MAX_TOKENS:
        raise _Refused("80300010", f"{len(tokens)} tokens")
    if not any(_TOKEN_SHAPE.match(t) for t in tokens):
        raise _Refused("80300007")


def _check_android(android: dict[str, Any]) -> None:
    _strings(android, "message.android", "urgency", "category", "ttl", "bi_tag", "receipt_id", "data")
    collapse_key = android.get("collapse_key", -1)
    if not isinstance(collapse_key, int) or isinstance(collapse_key, bool) or not -1 <= collapse_key <= 100:
        raise _Refused("80100013", f"collapse_key {collapse_key!r} is not an integer from -1 to 100")
    urgency = android.get("urgency", "NORMAL")
    if urgency not in ("HIGH", "NORMAL"):
        raise _Refused("80100001", f"urgency must be HIGH or NORMAL, not {urgency!r}")
    if "category" in android and (android["category"] not in _DATA_CATEGORIES or urgency != "HIGH"):
        raise _Refused("80100001", "category is VOIP or PLAY_VOICE, for a HIGH urgency data message")
    if "ttl" in android:
        match = _TTL.match(android["ttl"])
        if match is None:
            raise _Refused("80100001", f"malformed ttl {android['ttl']!r}")
        seconds = float(match.group(1) + (match.group(2) or ""))
        if seconds <= 0:
            raise _Refused("80100004")
        if seconds > MAX_TTL_SECONDS:
            raise _Refused("80100001", "ttl over 15 days")
    if "bi_tag" in android and len(android["bi_tag"].encode()) > MAX_BI_TAG_BYTES:
        raise _Refused("80100001", "bi_tag over 64 bytes")
    if android.get("fast_app_target", 1) not in (1, 2):
        raise _Refused("80100001", "fast_app_target must be 1 or 2")
    if "notification" in android:
        _check_android_notification(android["notification"])


def _check_android_notification(value: Any) -> None:
    path = "message.android.notification"
    notification = _object(value, path, _ANDROID_NOTIFICATION_KEYS)
    _strings(notification, path, "title", "body", "sound", "channel_id", "tag", "group", "image", "icon")
    if not notification.get("title") and not notification.get("body"):
        raise _Refused("80100003", f"{path} needs a title or a body")
    if not isinstance(notification.get("default_sound", False), bool):
        raise _Refused("80100003", f"{path}.default_sound must be a boolean")
    action = _object(notification.get("click_action"), f"{path}.click_action", _CLICK_ACTION_KEYS)
    kind = action.get("type")
    required = {1: ("intent", "action"), 2: ("url",), 3: (), 4: ("rich_resource",)}
    if kind not in required or isinstance(kind, bool):
        raise _Refused("80100003", f"{path}.click_action.type must be 1 to 4")
    if required[kind] and not any(action.get(name) for name in required[kind]):
        raise _Refused("80100003", f"{path}.click_action of type {kind} needs {' or '.join(required[kind])}")


# ---------------------------------------------------------------------------------------------- server


class HmsPeer:
    """Push Kit's token endpoint and messages:send on one TLS port, on the caller's event loop."""

    def __init__(
        self,
        pki: TestPki | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = DEFAULT_APP_ID,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        accept_any_auth: bool = False,
        log_messages: bool = False,
    ) -> None:
        if pki is not None:
            cert_file, key_file = pki.cert_file, pki.key_file
        if cert_file is None or key_file is None:
            raise ValueError("HmsPeer needs a TestPki or cert_file and key_file")
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        self.host, self.port = host, port
        self.app_id, self.client_id, self.client_secret = app_id, client_id, client_secret
        # Standalone mode: any client credentials get a token, and any bearer token is taken (a restarted peer
        # does not know the tokens it gave before); tokens it issued still expire.
        self.accept_any_auth = accept_any_auth
        self.log_messages = log_messages
        self.clock: Callable[[], float] = time.time
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME
        self._core = _Core(self)
        self._conns = _Connections()
        self._server: asyncio.Server | None = None

    # ---------------------------------------------------------------------------------- public API

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    def settings(self, ca_file: str | Path, **overrides: Any) -> HmsSettings:
        """HmsSettings for this peer's app and client (the secret given inline unless overridden)."""
        values: dict[str, Any] = {
            "app_id": self.app_id, "client_id": self.client_id, "client_secret": self.client_secret,
            "endpoint": self.base_url, "token_url": self.token_url, "ca_file": str(ca_file),
        }
        values.update(overrides)
        return HmsSettings(**values)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every messages:send request received, in arrival order (refused ones included)."""
        return self._core.requests

    @property
    def token_requests(self) -> list[TokenRequest]:
        return self._core.token_requests

    def requests_for(self, token: str) -> list[RecordedRequest]:
        return [r for r in self._core.requests if r.token == token]

    def script(
        self,
        token: str,
        *,
        code: str | None = None,
        status: int | None = None,
        msg: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        times: int | None = None,
    ) -> None:
        """How to answer sends to the device ``token`` (after the bearer check, instead of the JSON check).

        code: a result code of RESULTS, with its HTTP status unless ``status`` is given (80100000's msg lists
        the token as failed unless ``msg`` says otherwise). status alone: a plain HTTP answer without HMS's JSON
        (a 503 of flow control, a proxy's 502). retry_after: a Retry-After value. delay: seconds before
        answering. action: "hang" (never answer) or "close" (drop the connection). times: the next N only.
        """
        if code is not None and code not in RESULTS:
            raise ValueError(f"unknown result code {code!r} (known: {', '.join(RESULTS)})")
        self._core.scripts[token] = _script(code, status, msg, retry_after, delay, action, times)

    def script_token_endpoint(
        self,
        *,
        status: int | None = None,
        msg: str | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        action: str | None = None,
        times: int | None = None,
    ) -> None:
        """How to answer token requests: an HTTP error ``status`` (with ``msg`` as its error_description), a
        ``delay``, or "hang"/"close"; the other arguments as for ``script``."""
        self._core.token_script = _script(None, status, msg, retry_after, delay, action, times)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now: its next use is answered 80200003."""
        now = self.clock()
        for issued in self._core.issued.values():
            issued.expires_at = min(issued.expires_at, now)

    def revoke_tokens(self) -> None:
        """Forget every issued token: its next use is answered 80200001."""
        self._core.issued.clear()

    def reset(self) -> None:
        """Forget scripts, records and issued tokens; back to the real clock and an hour's token lifetime."""
        core = self._core
        core.scripts.clear()
        core.token_script = None
        core.requests.clear()
        core.token_requests.clear()
        core.issued.clear()
        self.clock = time.time
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME

    def log_line(self, entry: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps({"time": self.clock(), **entry}, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    # ---------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> HmsPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._conns.stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
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
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def serve_forever(self) -> None:
        """Standalone mode: serve until cancelled."""
        await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._conns.connections.add(task)
        ssl_object = writer.get_extra_info("ssl_object")
        serve = _serve_h2 if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2" else _serve_http1
        try:
            # fcm_peer's handlers only call core.handle(method, path, headers, body, version).
            await serve(self._core, self._conns, reader, writer)  # type: ignore[arg-type]
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._conns.writers.discard(writer)
            if task is not None:
                self._conns.connections.discard(task)
            writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Huawei Push Kit simulator for pushsvc development")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID, help="the app id of /v1/{app_id}/messages:send")
    args = parser.parse_args(argv)
    peer = HmsPeer(cert_file=args.cert, key_file=args.key, host=args.host, port=args.port, app_id=args.app_id,
                   accept_any_auth=True, log_messages=True)
    sys.stderr.write(
        f"HMS peer listening on {peer.base_url} (h2 + http/1.1): token endpoint {peer.token_url}, "
        f"messages at {peer.base_url}/v1/{args.app_id}/messages:send\n"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(peer.serve_forever())


if __name__ == "__main__":
    main()
