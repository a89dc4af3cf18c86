"""A request as the APNs peer received it, and Apple's checks of it, in Apple's order.

Method and path, then provider authentication (JWT or client certificate), the apns-* headers and the payload
size; the first failing check decides the answer (a ``Rule``), as it does at api.push.apple.com.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote

import jwt

from pushsvc.simulators.apns.answers import Rule
from pushsvc.simulators.apns.live_activity import LIVE_ACTIVITY_TOPIC_SUFFIX, LiveActivityPush, read_live_activity
from pushsvc.simulators.apns.provider_tokens import ProviderTokenLog

MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120  # Apple's limit for VoIP pushes ("Generating a remote notification")
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

AuthMode = Literal["token", "cert", "none"]


@dataclass(frozen=True)
class ReceivedRequest:
    token: str  # device token from the path, URL-decoded
    headers: dict[str, str]  # every header, pseudo-headers included (":path", ":method", ...)
    body: Any  # decoded JSON, or None if the body was not valid JSON
    raw_body: bytes
    time: float  # epoch seconds when the request was complete, on the peer's clock
    connection_id: int
    stream_id: int
    client_cert: dict[str, str] | None  # subject of the TLS client certificate, if one was presented
    live_activity: LiveActivityPush | None = None  # read from the body of an apns-push-type liveactivity push
    never_indexed: frozenset[str] = frozenset()  # header names sent as HPACK never-indexed literals


class ProviderAuth(Protocol):
    """How the peer authenticates providers (ApnsPeer's settings; read per request, so tests may change them)."""

    auth: AuthMode
    jwt_public_key: str | bytes | None
    key_id: str | None
    team_id: str | None
    auth_error: str | None
    clock: Callable[[], float]  # epoch seconds: what a token's age is judged by
    provider_tokens: ProviderTokenLog


def read_request(
    headers: dict[str, str],
    raw: bytes,
    connection_id: int,
    stream_id: int,
    client_cert: dict[str, str] | None,
    received_at: float,
    never_indexed: frozenset[str] = frozenset(),
) -> tuple[ReceivedRequest, bool]:
    """The request one stream carried (complete at ``received_at``), and whether its path is a device path
    (``/3/device/<token>``)."""
    match = _PATH.match(headers.get(":path", ""))
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    request = ReceivedRequest(
        token=unquote(match.group(1)) if match else "",
        headers=dict(headers),
        body=body,
        raw_body=raw,
        time=received_at,
        connection_id=connection_id,
        stream_id=stream_id,
        client_cert=client_cert,
        never_indexed=never_indexed,
        live_activity=(
            read_live_activity(body, received_at) if headers.get("apns-push-type") == "liveactivity" else None
        ),
    )
    return request, match is not None


def check_request(request: ReceivedRequest, path_ok: bool, provider: ProviderAuth) -> Rule | None:
    """Apple's own validation, in Apple's order: method/path, auth, headers, payload."""
    h = request.headers
    if h.get(":method") != "POST":
        return Rule(405, "MethodNotAllowed")
    if not path_ok:
        return Rule(404, "BadPath")
    auth_reason = check_auth(h.get("authorization"), request.client_cert, provider, request.connection_id)
    if auth_reason:
        return Rule(429 if auth_reason == "TooManyProviderTokenUpdates" else 403, auth_reason)
    if "apns-topic" not in h and (provider.auth == "token" or "authorization" in h):
        return Rule(400, "MissingTopic")
    if "apns-priority" in h and h["apns-priority"] not in ("1", "5", "10"):
        return Rule(400, "BadPriority")
    push_type = h.get("apns-push-type")
    if push_type is not None and push_type not in _PUSH_TYPES:
        return Rule(400, "InvalidPushType")
    # Live Activity pushes have their own topic, and that topic takes nothing else.
    if (push_type == "liveactivity") != h.get("apns-topic", "").endswith(LIVE_ACTIVITY_TOPIC_SUFFIX):
        return Rule(400, "InvalidPushType")
    if push_type == "liveactivity" and "authorization" not in h and provider.auth == "cert":
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


def check_auth(
    authorization: str | None, client_cert: dict[str, str] | None, provider: ProviderAuth, connection_id: int = 0
) -> str | None:
    """The reason (403, or 429 TooManyProviderTokenUpdates) for a request's credentials, or None when they pass.

    A token that passes is logged in ``provider.provider_tokens`` (distinct tokens, refreshes, update limit).
    """
    if provider.auth == "none":
        return None
    if provider.auth == "cert" and authorization is None:
        return None if client_cert else "MissingProviderToken"
    if authorization is None:
        return "MissingProviderToken"
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "InvalidProviderToken"
    try:
        header = jwt.get_unverified_header(token)
        if provider.jwt_public_key is not None:
            claims = jwt.decode(
                token, provider.jwt_public_key, algorithms=["ES256"], options={"verify_iat": False}
            )
        else:
            claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "InvalidProviderToken"
    if header.get("alg") != "ES256" or not header.get("kid") or not claims.get("iss"):
        return "InvalidProviderToken"
    if (provider.key_id and header["kid"] != provider.key_id) or (
        provider.team_id and claims["iss"] != provider.team_id
    ):
        return "InvalidProviderToken"
    issued_at = claims.get("iat")
    if not isinstance(issued_at, int):
        return "InvalidProviderToken"
    now = provider.clock()
    if issued_at < now - JWT_MAX_AGE_SECONDS:
        return "ExpiredProviderToken"
    if provider.auth_error:
        return provider.auth_error
    tokens = provider.provider_tokens
    return tokens.presented(authorization, claims["iss"], header["kid"], issued_at, connection_id, now)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36
