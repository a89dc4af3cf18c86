"""FCM HTTP v1 ``messages:send`` as the peer plays it: the bearer token's check, the project's quota if one is set,
then a script for the device token or the subset of FCM's validation a test can trip over; every request is
recorded whatever the answer."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pushsvc.logs import mask_token
from pushsvc.simulators.fcm.oauth import TokenEndpoint, to_json
from pushsvc.simulators.http_server import Reply
from pushsvc.simulators.rules import take_rule

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
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
    # The bearer token as the token endpoint judged it: "valid", "expired", "unknown", "missing" (oauth.py).
    auth: str = "valid"

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
class Script:
    status: int | None = None
    error_code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    action: str | None = None  # "hang" | "close"
    times: int | None = None  # how many more sends it answers (rules.py); None: every one


@dataclass
class Quota:
    """A per-project quota the peer enforces itself, as FCM does (600,000 a minute; scaled down in tests): at most
    `limit` requests per project in each window of `window_seconds` (windows aligned on the peer's clock), the
    rest refused with 429 QUOTA_EXCEEDED. Counts what each window saw, refused requests included."""

    limit: int
    window_seconds: float
    retry_after: str | None = None
    # (project, window start) -> authorized requests that arrived in it, accepted or refused
    seen: Counter[tuple[str, float]] = field(default_factory=Counter)
    refused: int = 0

    def admit(self, project: str, now: float) -> bool:
        start = (now // self.window_seconds) * self.window_seconds
        key = (project, start)
        self.seen[key] += 1
        if self.seen[key] > self.limit:
            self.refused += 1
            return False
        return True


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


class MessagesEndpoint:
    """The send requests received and the scripts per device token."""

    def __init__(self, tokens: TokenEndpoint, accept_any_auth: bool, log_messages: bool) -> None:
        self.tokens = tokens
        self.accept_any_auth = accept_any_auth
        self.log_messages = log_messages
        self.requests: list[RecordedRequest] = []
        self.scripts: dict[str, Script] = {}
        self.quota: Quota | None = None
        self._counter = 0

    async def handle(self, project: str, headers: dict[str, str], body: bytes, version: str) -> Reply:
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        judged = self.tokens.auth(bearer)
        authorized = bool(bearer) and (self.accept_any_auth or judged == "valid")
        record = RecordedRequest(project, dict(headers), payload, self.tokens.clock(), version, authorized, auth=judged)
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
        if self.quota is not None and not self.quota.admit(project, record.time):
            reply = self._scripted_error(Script(error_code="QUOTA_EXCEEDED", retry_after=self.quota.retry_after))
            record.status = reply.status
            return reply
        script = take_rule(self.scripts.get(record.token or ""), None)
        if script and script.delay:
            await asyncio.sleep(script.delay)
        if script and script.action in ("hang", "close"):
            return Reply(0, action=script.action)
        if script and (script.error_code or script.status):
            reply = self._scripted_error(script)
        else:
            reply = self._validate(payload) or self._success(project, record.validate_only)
        record.status = reply.status
        if self.log_messages and payload is not None:
            self._log(record)
        return reply

    def _scripted_error(self, script: Script) -> Reply:
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

    def _validate(self, payload: Any) -> Reply | None:
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
        size = len(to_json({"data": data, "notification": message.get("notification", {})}))
        if size > MAX_PAYLOAD_BYTES:
            return self._error(400, "INVALID_ARGUMENT", "Android message is too big", "INVALID_ARGUMENT")
        return None

    def _success(self, project: str, validate_only: bool = False) -> Reply:
        if validate_only:  # FCM answers a validate_only request with a fixed fake message name
            name = f"projects/{project}/messages/fake_message_id"
            return Reply(200, to_json({"name": name}), [("content-type", "application/json; charset=utf-8")])
        self._counter += 1
        name = f"projects/{project}/messages/0:{int(time.time() * 1000)}%{self._counter:08x}"
        return Reply(200, to_json({"name": name}), [("content-type", "application/json; charset=utf-8")])

    def _error(
        self,
        status: int,
        rpc_status: str,
        message: str,
        error_code: str | None,
        extra: list[dict[str, Any]] | None = None,
    ) -> Reply:
        body = to_json(fcm_error_body(status, rpc_status, message, error_code, extra))
        return Reply(status, body, [("content-type", "application/json; charset=utf-8")])

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
