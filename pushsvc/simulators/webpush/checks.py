"""A push as the Web Push peer received it, and a push service's checks of it, in a push service's order.

The subscription exists (404; the peer checks that), the VAPID token (401/403, vapid.py), the headers (400:
Content-Encoding aes128gcm, TTL present, Urgency and Topic valid when present), the size (413 over 4096
bytes) and the record itself (400 when it does not decrypt as one aes128gcm record, decryption.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pushsvc.simulators.webpush.decryption import DecryptError, decrypt_aes128gcm
from pushsvc.simulators.webpush.keys import PeerSubscription, b64url_decode
from pushsvc.simulators.webpush.vapid import VapidCheck, check_vapid

MAX_BODY_BYTES = 4096  # RFC 8291 section 4: what every push service accepts
URGENCIES = frozenset({"very-low", "low", "normal", "high"})  # RFC 8030 section 5.3
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # RFC 8030 section 5.4


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


def check_push(
    subscription: PeerSubscription, headers: dict[str, str], body: bytes, origin: str, now: float
) -> tuple[int, str | None, bytes | None, VapidCheck | None]:
    """The checks after the subscription's: (status, problem or None, plaintext, the VAPID check)."""
    vapid = check_vapid(headers.get("authorization"), origin, now, subscription.application_server_key)
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


def json_or_none(plaintext: bytes | None) -> Any:
    if plaintext is None:
        return None
    try:
        return json.loads(plaintext)
    except ValueError:
        return None
