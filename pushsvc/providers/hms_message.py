"""Huawei Push Kit's message and answers: the HMS v1 message built for one delivery, its size, and what each
result code means (the five outcome classes). Pure functions: intake measures a message with them
(ingest/payload_limits.py) and a dry run renders one without a connection. The adapter is providers/hms.py.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pushsvc.model import Outcome
from pushsvc.providers.base import Delivery, PayloadRejected, SendResult, parse_retry_after
from pushsvc.providers.transport import HttpReply

# ------------------------------------------------------------------------------------------ result codes

SUCCESS = "80000000"
# "Some tokens are successfully sent. Tokens identified by illegal_token are those failed to be sent": with one
# token per request, read from the msg's illegal_tokens whether ours is one of them (classify_answer).
PARTIAL_SUCCESS = "80100000"
# The access token was refused: fetched again once and the message resent (module docstring).
TOKEN_REJECTED = frozenset({"80200001", "80200003"})

# Huawei's result-code table for messages:send, one row per code, each with Huawei's own description. Sources:
# the v1 API reference "Sending Messages" (developer.huawei.com/consumer/en/doc/HMS-References/push-sendapi,
# result codes), Huawei's FAQ on the common server-side codes (HMS Core, 2022: 80200001, 80200003, 80300007,
# 80300010, 80100016), and Push Kit's response reference for the HTTP statuses (push-scenariozed-api-response:
# 400 parameters, 401 authentication, 404 wrong URL, 500 internal, 502 connection, 503 traffic control).
# Codes not listed are classified by their HTTP status (_by_status). Only a token problem deactivates a device.
RESULT_CODES: Mapping[str, Outcome] = {
    SUCCESS: Outcome.DELIVERED,  # Success
    "80100001": Outcome.REJECTED,  # Some request parameters are incorrect
    "80100003": Outcome.REJECTED,  # Incorrect message structure
    "80100004": Outcome.REJECTED,  # The message expiration time is earlier than the current time (ttl)
    "80100013": Outcome.REJECTED,  # The collapse_key message field is invalid
    "80100016": Outcome.REJECTED,  # The message contains sensitive information
    # OAuth authentication error / OAuth token expired: still refused after one new token (module docstring):
    # a wrong client id or secret for this app id, or an access token of another app. Needs an operator.
    "80200001": Outcome.AUTH_ERROR,
    "80200003": Outcome.AUTH_ERROR,
    "80300002": Outcome.AUTH_ERROR,  # The current app does not have the permission to send messages
    "80300007": Outcome.INVALID_TOKEN,  # All tokens are invalid
    "80300008": Outcome.REJECTED,  # The message body size exceeds the default value
    "80300010": Outcome.REJECTED,  # The number of tokens in the message body exceeds the default value
    # You are not authorized to send high-priority messages: refused for this message (urgency HIGH, e.g. VoIP),
    # not for the app's normal-priority ones, so the provider is not paused for it.
    "80300011": Outcome.REJECTED,
    "81000001": Outcome.RETRYABLE,  # System internal error
}
# An answer without a known code (a proxy's page, a flow-control 503). 404 is "service not found: check the
# request URL" (a wrong endpoint or app id): app-wide, so AUTH_ERROR pauses the provider until fixed. Any other
# 4xx fails this delivery and keeps the token; 429 and 5xx (503 is HMS flow control) are temporary.
HTTP_OUTCOMES: Mapping[int, Outcome] = {401: Outcome.AUTH_ERROR, 403: Outcome.AUTH_ERROR, 404: Outcome.AUTH_ERROR}

# "The message body cannot exceed 4096 bytes (excluding token)" (push-sendapi, restrictions).
MAX_MESSAGE_BYTES = 4096
# android.ttl: Push Kit caches a message for at most 15 days. A TTL that ends before the send is refused
# (80100004 "expiration time earlier than the current time"), so a delivery already past its expiry goes out
# with 1s: delivered now or never, as FCM's "0s".
MAX_TTL_SECONDS = 15 * 24 * 3600
MIN_TTL_SECONDS = 1
# android.collapse_key takes a cache group number 1..100 (-1: all offline messages are kept, the default; 0:
# Push Kit's own policy, usually the latest only). Names cannot be mapped onto 100 groups without collisions, and
# a collision would drop an unrelated message of an offline device: only a collapse key that is such a number is
# sent, and it collapses the same messages on APNs and FCM, which take it as a name.
COLLAPSE_GROUPS = range(1, 101)
_GROUP_NUMBER = re.compile(r"[1-9][0-9]{0,2}")
# android.bi_tag comes back in HMS delivery receipts: up to 64 bytes (Push Kit's v3 reference; v1 names no limit).
MAX_BI_TAG_BYTES = 64


# -------------------------------------------------------------------------------------------- encoding


def bi_tag_for(notification_id: str) -> str:
    """The receipt tag of a notification: its id, or for an id over 64 bytes a stable digest of it.

    Pure, so a receipt handler can compute the same tag for a notification it looks up."""
    if len(notification_id.encode()) <= MAX_BI_TAG_BYTES:
        return notification_id
    digest = base64.urlsafe_b64encode(hashlib.sha256(notification_id.encode()).digest()).decode().rstrip("=")
    return f"sha256:{digest}"


def collapse_group(collapse_key: str | None) -> int | None:
    """The HMS cache group for a collapse key: "1".."100" name one; any other key sends none (COLLAPSE_GROUPS)."""
    if collapse_key is None or not _GROUP_NUMBER.fullmatch(collapse_key):
        return None
    group = int(collapse_key)
    return group if group in COLLAPSE_GROUPS else None


def ttl_seconds(expires_at: float | None, now: float) -> int | None:
    """android.ttl in whole seconds, within what HMS accepts (MIN_TTL_SECONDS..MAX_TTL_SECONDS)."""
    if expires_at is None:
        return None
    return min(MAX_TTL_SECONDS, max(MIN_TTL_SECONDS, math.floor(expires_at - now)))


def build_message(delivery: Delivery, now: float) -> dict[str, Any]:
    """The ``message`` object of a messages:send request, without its ``token`` (added per device).

    alert: a notification message (android.notification with the device locale's text); background: a data
    message; voip: a high-priority data message of category VOIP (HMS's scenario for calls), as FCM sends
    VoIP. ``data`` is one string, the JSON object of the data as strings (Message.data_as_strings), which
    the HMS client SDK hands to the app as a map, as FCM's data arrives.
    """
    msg, opts = delivery.message, delivery.options
    android: dict[str, Any] = {"urgency": "HIGH" if opts.priority == "high" else "NORMAL"}
    if opts.push_type == "voip":
        android["category"] = "VOIP"
    ttl = ttl_seconds(delivery.expires_at, now)
    if ttl is not None:
        android["ttl"] = f"{ttl}s"
    group = collapse_group(opts.collapse_key)
    if group is not None:
        android["collapse_key"] = group
    android["bi_tag"] = bi_tag_for(delivery.notification_id)
    if opts.push_type not in ("background", "voip"):
        android["notification"] = _notification(delivery)
    message: dict[str, Any] = {}
    data = msg.data_as_strings()
    if data:
        message["data"] = orjson.dumps(data).decode()
    message["android"] = android
    return message


def _notification(delivery: Delivery) -> dict[str, Any]:
    """android.notification of an alert: the text, a tap opening the app, and the sound."""
    text = delivery.message.text_for(delivery.device.locale)
    notification: dict[str, Any] = {}
    if text.title:
        notification["title"] = text.title
    if text.body:
        notification["body"] = text.body
    notification["click_action"] = {"type": 3}  # 3: open the app's home page (the action HMS requires)
    sound = delivery.message.sound
    if sound and sound != "default":
        notification["sound"] = sound  # a ringtone in the app's res/raw
        notification["default_sound"] = False
    else:
        notification["default_sound"] = True
    return notification


def message_bytes(message: Mapping[str, Any]) -> int:
    """The bytes HMS counts against MAX_MESSAGE_BYTES: the message without its token. Pure, for intake too."""
    return len(orjson.dumps({k: v for k, v in message.items() if k != "token"}))


def check_size(message: Mapping[str, Any]) -> None:
    size = message_bytes(message)
    if size > MAX_MESSAGE_BYTES:
        # The reason HMS itself gives (80300008), so a count means one thing whoever noticed it.
        raise PayloadRejected("80300008", f"message is {size} bytes, over HMS's {MAX_MESSAGE_BYTES}-byte limit")


def request_body(message: Mapping[str, Any], token: str) -> bytes:
    return orjson.dumps({"validate_only": False, "message": {**message, "token": [token]}})


# ------------------------------------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class Answer:
    """A messages:send answer as read: HTTP status and, when the body is HMS's JSON, its fields."""

    status: int
    code: str | None
    msg: str
    request_id: str | None
    retry_after: float | None


def read_answer(reply: HttpReply) -> Answer:
    """Never raises: a body that is not HMS's JSON object leaves code None (classified by status)."""
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code, msg, request_id = body.get("code"), body.get("msg"), body.get("requestId")
    return Answer(
        status=reply.status,
        code=code if isinstance(code, str) else None,
        msg=msg if isinstance(msg, str) else "",
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=parse_retry_after(reply.headers.get("retry-after")),
    )


def is_token_rejection(answer: Answer) -> bool:
    """HMS refused our access token (not the device token): worth one new token."""
    return answer.code in TOKEN_REJECTED or (answer.status == 401 and answer.code not in RESULT_CODES)


def classify_answer(answer: Answer, device_token: str) -> SendResult:
    """The SendResult for a messages:send answer to a request for ``device_token``."""
    if answer.code == PARTIAL_SUCCESS:
        return _partial(answer, device_token)
    outcome = RESULT_CODES.get(answer.code or "")
    if outcome is None:
        outcome = _by_status(answer.status)
    if outcome is Outcome.DELIVERED:
        return SendResult(outcome, status=answer.status, provider_id=answer.request_id)
    reason = answer.code or f"http_{answer.status}"
    retry_after = answer.retry_after if outcome is Outcome.RETRYABLE else None
    return SendResult(outcome, reason, answer.status, retry_after=retry_after, provider_id=answer.request_id)


def _by_status(status: int) -> Outcome:
    if status == 429 or status >= 500:
        return Outcome.RETRYABLE
    if status in HTTP_OUTCOMES:
        return HTTP_OUTCOMES[status]
    # A 2xx that is not "80000000" (an unknown code, or no HMS answer at all) was not accepted as far as we
    # can tell; resending could deliver twice, deactivating could lose a good device: fail this delivery.
    return Outcome.REJECTED


def _partial(answer: Answer, device_token: str) -> SendResult:
    """80100000 for a one-token request: ours failed if the msg lists it in illegal_tokens."""
    try:
        detail = orjson.loads(answer.msg)
    except orjson.JSONDecodeError:
        detail = None
    if isinstance(detail, dict):
        illegal = detail.get("illegal_tokens")
        if isinstance(illegal, list) and device_token in illegal:
            return SendResult(Outcome.INVALID_TOKEN, PARTIAL_SUCCESS, answer.status, provider_id=answer.request_id)
        success = detail.get("success")
        if isinstance(success, int) and success >= 1 and not illegal:
            return SendResult(Outcome.DELIVERED, status=answer.status, provider_id=answer.request_id)
    # Unreadable: whether it was delivered is unknown, and nothing says the token is dead.
    return SendResult(Outcome.REJECTED, PARTIAL_SUCCESS, answer.status, provider_id=answer.request_id)
