"""Provider payload limits, checked when a request is validated instead of failing on every device.

APNs refuses a body over 4096 bytes (5120 for VoIP) with 413 PayloadTooLarge, FCM a message over 4096
counted bytes with a 400: either way each targeted device would fail, one provider round trip each. The
sizes come from the adapters' own code (apns.build_payload, fcm.counted_payload_bytes), so intake and
adapters cannot disagree. This lives in ingest, not in pushsvc/model.py: the contract model does not
depend on provider modules.

Each text variant a device can receive is measured: the defaults and, for alerts, every `localized` entry
(merged over the defaults as Message.text_for does). The error names the field to shorten: `message.data`
when the data alone is too big, `message.localized.<locale>` for one locale's variant, else `message`.
"""

from __future__ import annotations

from pushsvc.model import Device, Message, PushRequest, RequestError
from pushsvc.providers import apns, fcm
from pushsvc.providers.base import Delivery


def check_payload_size(request: PushRequest) -> None:
    """Raise RequestError naming the field when an APNs body or FCM message of `request` is over the limit."""
    message, options = request.message, request.options
    apns_limit = apns.MAX_VOIP_PAYLOAD_BYTES if options.push_type == "voip" else apns.MAX_PAYLOAD_BYTES
    data = message.data_as_strings()
    fcm_data = fcm.counted_payload_bytes(None, None, data)
    if fcm_data > fcm.MAX_PAYLOAD_BYTES:
        raise RequestError("message.data", _over("FCM", fcm_data, fcm.MAX_PAYLOAD_BYTES, "keys and values"))

    def apns_size(locale: str | None, of_message: Message = message) -> int:
        device = Device(app=request.app, token="", platform="ios", locale=locale)
        return len(apns.build_payload(Delivery(request.id, device, of_message, options)))

    default = apns_size(None)
    if default > apns_limit:
        data_only = apns_size(None, Message(data=message.data))
        field = "message.data" if data_only > apns_limit else "message"
        raise RequestError(field, _over("APNs", default, apns_limit, "body"))
    if options.push_type != "alert":
        return  # background and VoIP pushes carry no text: the default payload is the only one
    text = message.text_for(None)
    size = fcm_data + fcm.counted_payload_bytes(text.title, text.body, {})
    if size > fcm.MAX_PAYLOAD_BYTES:
        raise RequestError("message", _over("FCM", size, fcm.MAX_PAYLOAD_BYTES, "title, body and data"))
    for locale in message.localized:
        field = f"message.localized.{locale}"
        size = apns_size(locale)
        if size > apns_limit:
            raise RequestError(field, _over("APNs", size, apns_limit, f"body for locale {locale}"))
        text = message.text_for(locale)
        size = fcm_data + fcm.counted_payload_bytes(text.title, text.body, {})
        if size > fcm.MAX_PAYLOAD_BYTES:
            raise RequestError(field, _over("FCM", size, fcm.MAX_PAYLOAD_BYTES, f"message for locale {locale}"))


def _over(provider: str, size: int, limit: int, what: str) -> str:
    return f"the {provider} {what} would be {size} bytes, over its {limit}-byte limit"
