"""FCM messages: the firebase-admin Message for a delivery, its v1 JSON body, and FCM's payload size count."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from firebase_admin import messaging

from pushsvc.providers.base import (
    Delivery,
)

# FCM refuses a message whose payload is over 4096 bytes (400 INVALID_ARGUMENT "message is too big").
MAX_PAYLOAD_BYTES = 4096


def counted_payload_bytes(title: str | None, body: str | None, data: Mapping[str, str]) -> int:
    """The bytes FCM counts against MAX_PAYLOAD_BYTES: notification title and body plus data keys and values.

    ("the total size of the payload data ... This includes both the keys and the values", FCM's MessageTooBig.)

    UTF-8, with data as the strings FCM receives (Message.data_as_strings). Pure, so intake can refuse a
    request that would cost one FCM 400 per device (ingest/payload_limits.py) with the same count.
    """
    size = len(title.encode()) if title else 0
    if body:
        size += len(body.encode())
    for key, value in data.items():
        size += len(key.encode()) + len(value.encode())
    return size


def build_message(delivery: Delivery, now: float | None = None) -> messaging.Message:
    """The firebase-admin Message for one delivery (notification block for alerts only).

    Besides the Android block, FCM takes an override block per platform it relays to (``apns`` for an iOS app,
    ``webpush`` for a browser), each read only by a device of that platform. A message carries the one for
    its device's platform: an fcm token is registered for Android (token_kinds.py), whose devices read neither,
    and building and encoding both was ~half of firebase-admin's work per message and ~230 bytes per request.
    """
    msg, opts, device = delivery.message, delivery.options, delivery.device
    # voip: a high-priority data-only message (FCM has no PushKit route; its APNs part is a background push).
    background = opts.push_type in ("background", "voip")
    high = opts.priority == "high"
    ttl: int | None = None
    if delivery.expires_at is not None:
        ttl = max(0, int(delivery.expires_at - (time.time() if now is None else now)))

    notification = None
    if not background:
        text = msg.text_for(device.locale)
        notification = messaging.Notification(title=text.title, body=text.body)

    message = messaging.Message(
        notification=notification,
        data=msg.data_as_strings() or None,
        android=messaging.AndroidConfig(priority="high" if high else "normal", ttl=ttl, collapse_key=opts.collapse_key),
        apns=_apns_config(delivery, background, ttl) if device.platform == "ios" else None,
        webpush=_webpush_config(high, ttl) if device.platform == "web" else None,
    )
    # Our devices hold FCM registration tokens, which v1 takes in "token". firebase-admin 7.7 marks the
    # constructor's token= as deprecated in favour of fid= (Firebase installation IDs, a different
    # identifier) and warns on every message; setting the attribute encodes the same without the warning.
    message.token = device.token
    return message


def _apns_config(delivery: Delivery, background: bool, ttl: int | None) -> messaging.APNSConfig:
    """What FCM relays to APNs for an iOS device: the headers and aps of our own APNs adapter's push."""
    msg, opts = delivery.message, delivery.options
    apns_type = "background" if background else opts.push_type
    high = opts.priority == "high"
    apns_headers = {"apns-priority": "10" if high and not background else "5", "apns-push-type": apns_type}
    if ttl is not None:
        # APNs: 0 means "deliver now or never"; otherwise the absolute expiry in epoch seconds.
        apns_headers["apns-expiration"] = "0" if ttl == 0 else str(int(delivery.expires_at or 0))
    if opts.collapse_key:
        apns_headers["apns-collapse-id"] = opts.collapse_key
    if background:
        aps = messaging.Aps(content_available=True)
    else:
        aps = messaging.Aps(
            badge=msg.badge,
            sound=msg.sound,
            category=msg.category,
            thread_id=msg.thread_id,
            mutable_content=True if msg.mutable_content else None,
        )
    return messaging.APNSConfig(headers=apns_headers, payload=messaging.APNSPayload(aps=aps))


def _webpush_config(high: bool, ttl: int | None) -> messaging.WebpushConfig:
    """What FCM relays to a browser's push service: the urgency and the TTL."""
    webpush_headers = {"Urgency": "high" if high else "normal"}
    if ttl is not None:
        webpush_headers["TTL"] = str(ttl)
    return messaging.WebpushConfig(headers=webpush_headers)


def encode_body(message: messaging.Message) -> bytes:
    """The v1 request body, encoded by firebase-admin (validates the message; raises ValueError)."""
    return orjson.dumps({"message": messaging._MessagingService.encode_message(message)})
