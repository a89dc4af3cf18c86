"""Web Push's request content: the JSON payload, its encryption (RFC 8291, aes128gcm with http-ece), the
request headers, and what each push service answer means. Pure functions, apart from the adapter's transport
(providers/webpush.py), so that intake can measure a payload (ingest/payload_limits.py) and a dry run can
render one without a connection.

The payload
    Every push carries one JSON document (UTF-8, compact), which the service worker reads with
    ``event.data.json()``::

        {
          "notification_id": "n-42",          always: the pushsvc notification id
          "type": "alert",                    always: "alert" (options.push_type)
          "title": "Hi", "body": "there",     alerts only, each when set: the device locale's text
          "badge": 3, "sound": "default",     alerts only, each when set
          "tag": "orders-7",                  when options.collapse_key is set: for showNotification({tag}),
                                              so that a newer notification replaces an older one on screen
          "data": {"order": 42}               always: message.data with its JSON types ({} when none)
        }

    A service worker must show a notification for every push it receives (browsers subscribe with
    ``userVisibleOnly: true``), so background pushes are not sent to web subscriptions (token_kinds).

    The document is encrypted for each subscription into one aes128gcm record, which must fit the 4096 bytes
    every push service accepts (RFC 8291 section 4): 86 bytes of header (salt, record size, our ephemeral
    public key) and 17 of padding delimiter and tag leave MAX_PAYLOAD_BYTES (3993) for the JSON. A larger
    one is refused before anything is sent (PayloadRejected / REJECTED, reason "PayloadTooLarge").

The request headers
    * TTL: seconds the push service may keep the message for an offline browser: what is left until
      ``delivery.expires_at`` (0 for ttl_seconds 0: deliver now or never), else DEFAULT_TTL_SECONDS. RFC 8030
      requires the header on every request.
    * Urgency (RFC 8030 section 5.3): "high" for priority high, "normal" otherwise; "low" or "very-low"
      would let the browser hold the push until the device is on power or Wi-Fi, a delay the API never
      offered and the caller cannot ask for.
    * Topic (RFC 8030 section 5.4) from options.collapse_key: at most 32 characters of the base64url
      alphabet. A collapse key that is one already is sent as it is; any other is sent as the first 32
      characters of the base64url SHA-256 of the key (192 bits: no two keys in practice share one, and every
      replica and restart maps a key alike, which is all collapsing needs).
    * Content-Encoding: aes128gcm; Authorization: ``vapid t=<JWT>,k=<public key>`` (RFC 8292).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import http_ece
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.model import MAX_TTL_SECONDS, Outcome, WebSubscription
from pushsvc.providers.base import Delivery, PayloadRejected, SendResult, parse_retry_after
from pushsvc.subscriptions import base64url_decode

# RFC 8291 section 4: one record, and a push service need not accept more than 4096 bytes of it.
MAX_RECORD_BYTES = 4096
# aes128gcm header (RFC 8188 section 2.1): salt (16), record size (4), key id length (1), key id = our
# uncompressed P-256 public key (65).
_HEADER_BYTES = 16 + 4 + 1 + 65
# Per record: the padding delimiter (1) and the AES-GCM tag (16).
_RECORD_OVERHEAD = 1 + 16
MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES - _HEADER_BYTES - _RECORD_OVERHEAD
# Without an expiry the push service keeps the message as long as FCM keeps one (4 weeks).
DEFAULT_TTL_SECONDS = MAX_TTL_SECONDS
TOPIC_LENGTH = 32
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# What token_kinds routes to webpush: alerts only. Browsers subscribe with userVisibleOnly (Chrome requires
# it), so a push the service worker shows nothing for still shows a generic notification: no silent pushes.
PUSH_TYPES = ("alert",)


def build_payload(delivery: Delivery) -> dict[str, Any]:
    """The JSON document the service worker receives (the shape in the module docstring)."""
    message, options = delivery.message, delivery.options
    if options.push_type not in PUSH_TYPES:
        raise PayloadRejected("UnsupportedPushType", f"web push takes {' and '.join(PUSH_TYPES)} pushes")
    payload: dict[str, Any] = {"notification_id": delivery.notification_id, "type": options.push_type}
    if options.push_type == "alert":
        text = message.text_for(delivery.device.locale)
        for key, value in (("title", text.title), ("body", text.body), ("badge", message.badge),
                           ("sound", message.sound)):
            if value is not None:
                payload[key] = value
    if options.collapse_key:
        payload["tag"] = options.collapse_key
    payload["data"] = dict(message.data)
    return payload


def payload_json(payload: Mapping[str, Any]) -> bytes:
    """The plaintext that is encrypted, whatever its size (intake measures it: ingest/payload_limits.py)."""
    return orjson.dumps(payload)


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The plaintext that is encrypted; raises PayloadRejected when its record would not fit 4096 bytes."""
    try:
        plaintext = payload_json(payload)
    except TypeError as exc:  # an integer orjson cannot hold (intake refuses these; a Python caller may not)
        raise PayloadRejected("InvalidPayload", str(exc)) from exc
    if len(plaintext) > MAX_PAYLOAD_BYTES:
        raise PayloadRejected(
            "PayloadTooLarge",
            f"{len(plaintext)} bytes of JSON, over the {MAX_PAYLOAD_BYTES} that fit one {MAX_RECORD_BYTES}-byte "
            "encrypted record",
        )
    return plaintext


def ttl_seconds(delivery: Delivery, now: float) -> int:
    if delivery.options.ttl_seconds == 0:
        return 0
    if delivery.expires_at is not None:
        return max(0, int(delivery.expires_at - now))
    if delivery.options.ttl_seconds is not None:  # no request time known: count from now
        return delivery.options.ttl_seconds
    return DEFAULT_TTL_SECONDS


def topic(collapse_key: str) -> str:
    """The Topic header for a collapse key (the rule in the module docstring)."""
    if _TOPIC.match(collapse_key):
        return collapse_key
    digest = hashlib.sha256(collapse_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:TOPIC_LENGTH]


def request_headers(delivery: Delivery, now: float) -> dict[str, str]:
    """The push request's headers, without credentials (no Authorization)."""
    options = delivery.options
    headers = {
        "TTL": str(ttl_seconds(delivery, now)),
        "Urgency": "high" if options.priority == "high" else "normal",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
    }
    if options.collapse_key:
        headers["Topic"] = topic(options.collapse_key)
    return headers


def encrypt(plaintext: bytes, subscription: WebSubscription) -> bytes:
    """One aes128gcm record for the subscription (a fresh ECDH key and salt per message); raises ValueError
    (or http_ece.ECEException) when the subscription's keys are unusable, e.g. p256dh not on the curve."""
    return http_ece.encrypt(
        plaintext,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=base64url_decode(subscription.p256dh),
        auth_secret=base64url_decode(subscription.auth),
        version="aes128gcm",
        rs=MAX_RECORD_BYTES,
    )


# ------------------------------------------------------------------------------------------ classification

# Push service answers (RFC 8030, RFC 8292 section 4) -> outcome class and reason. Other 2xx: delivered;
# other 4xx (and 3xx: redirects are not followed): REJECTED; 5xx: RETRYABLE. Retry-After is honoured on
# every retryable answer.
ANSWERS: dict[int, tuple[Outcome, str]] = {
    400: (Outcome.REJECTED, "BadRequest"),  # a header or the body refused: resending cannot help
    401: (Outcome.AUTH_ERROR, "Unauthorized"),  # VAPID token missing, malformed, expired or badly signed
    # The push service refuses our VAPID credential for this subscription (RFC 8292 section 4.2: a key other
    # than the one it was made with; Apple's service also answers 403 BadJwtToken for a subject it refuses).
    # An auth error: the device is kept (a 403 says nothing sure about the subscription) and the provider
    # pauses. After a VAPID key rotation every subscription made before it answers so: the web app must
    # subscribe again with the new applicationServerKey (README, runbook).
    403: (Outcome.AUTH_ERROR, "Forbidden"),
    404: (Outcome.INVALID_TOKEN, "NotFound"),  # no such subscription (unknown or expired)
    410: (Outcome.INVALID_TOKEN, "Gone"),  # the subscription expired or the user unsubscribed
    413: (Outcome.REJECTED, "PayloadTooLarge"),
    429: (Outcome.RETRYABLE, "TooManyRequests"),  # rate limited: wait Retry-After
}


def classify(status: int, headers: Mapping[str, str], location: str | None = None) -> SendResult:
    """The outcome of one push service answer. Push services do not say when a subscription died, so an
    invalid token's ``invalid_since`` stays None."""
    if 200 <= status < 300:
        return SendResult(Outcome.DELIVERED, status=status, provider_id=location)
    outcome, reason = ANSWERS.get(status) or (
        (Outcome.RETRYABLE, f"http_{status}") if status >= 500 else (Outcome.REJECTED, f"http_{status}")
    )
    retry_after = parse_retry_after(headers.get("Retry-After")) if outcome is Outcome.RETRYABLE else None
    return SendResult(outcome, reason, status, retry_after)
