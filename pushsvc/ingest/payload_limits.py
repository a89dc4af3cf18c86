"""Provider payload limits, checked when a request is validated instead of failing on every device.

APNs refuses a body over 4096 bytes (5120 for VoIP) with 413 PayloadTooLarge, FCM a message over 4096
counted bytes with a 400, Huawei Push Kit a message over 4096 bytes (its token left out) with 80300008, a push
service an encrypted Web Push record over 4096 bytes with 413: either way each targeted device would fail, one
provider round trip each. The sizes come from the adapters' own code (apns_payload.build_body,
fcm.counted_payload_bytes, hms.build_message, webpush.payload_json), so intake and adapters cannot disagree.
This lives in ingest, not in pushsvc/model: the contract model does not depend on provider modules.

Only the providers whose tokens take the request's route are measured (a Live Activity is APNs only, a VoIP
push never goes to Web Push). Each text variant a device can receive is measured: the defaults and, for
pushes with text (alerts, Live Activities), every `localized` entry (merged over the defaults as
Message.text_for does). The error names the field to shorten: `message.data` (or `message.live_activity`)
when that alone is too big, `message.localized.<locale>` for one locale's variant, else `message`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from pushsvc.model import Message, PushRequest, Recipient, RequestError
from pushsvc.providers import apns, apns_payload, fcm
from pushsvc.providers import hms_message as hms
from pushsvc.providers import webpush_payload as webpush
from pushsvc.providers.base import Delivery
from pushsvc.token_kinds import KINDS, kinds_for_push_type

# Routes whose payload carries the message's text, so each locale is a variant of its own.
TEXT_ROUTES = frozenset({"alert", "liveactivity", "liveactivity_start"})


@dataclass(frozen=True)
class _Limit:
    provider: str  # the name in the error message
    what: str  # what is measured, for the error message
    # The size of `message` for a device of `locale` under `request`'s options.
    size: Callable[[PushRequest, Message, str | None], int]
    limit: Callable[[PushRequest], int]


def _device(request: PushRequest, platform: str, locale: str | None) -> Recipient:
    return Recipient(app=request.app, token="", platform=platform, locale=locale)


def _apns_size(request: PushRequest, message: Message, locale: str | None) -> int:
    # Any 10-digit time: a Live Activity's timestamp is stamped at acceptance, always 10 digits until 2286.
    return len(apns_payload.build_body(message, request.options, locale, now=1_000_000_000))


def _fcm_size(request: PushRequest, message: Message, locale: str | None) -> int:
    text = message.text_for(locale) if request.route in TEXT_ROUTES else None
    data = message.data_as_strings()
    return fcm.counted_payload_bytes(text and text.title, text and text.body, data)


def _hms_size(request: PushRequest, message: Message, locale: str | None) -> int:
    # The longest TTL HMS takes: its string is as long as any a delivery could carry.
    expires_at = None if request.options.ttl_seconds is None else float(hms.MAX_TTL_SECONDS)
    delivery = Delivery(request.id, _device(request, "huawei", locale), message, request.options, expires_at)
    return hms.message_bytes(hms.build_message(delivery, now=0.0))


def _webpush_size(request: PushRequest, message: Message, locale: str | None) -> int:
    delivery = Delivery(request.id, _device(request, "web", locale), message, request.options)
    return len(webpush.payload_json(webpush.build_payload(delivery)))


LIMITS: dict[str, _Limit] = {
    "apns": _Limit("APNs", "body", _apns_size, lambda request: apns.payload_limit(request.options.push_type)),
    "fcm": _Limit("FCM", "title, body and data", _fcm_size, lambda request: fcm.MAX_PAYLOAD_BYTES),
    "hms": _Limit("Huawei Push Kit", "message", _hms_size, lambda request: hms.MAX_MESSAGE_BYTES),
    "webpush": _Limit("Web Push", "payload", _webpush_size, lambda request: webpush.MAX_PAYLOAD_BYTES),
}


# Per route, the providers (with a limit) whose tokens take it, in name order: the same for every request.
_ROUTE_PROVIDERS: dict[str, tuple[str, ...]] = {
    route: tuple(sorted({KINDS[kind].provider for kind in kinds_for_push_type(route)} & set(LIMITS)))
    for route in {push_type for kind in KINDS.values() for push_type in kind.push_types}
}


def check_payload_size(request: PushRequest, configured: Collection[str] | None = None) -> None:
    """Raise RequestError naming the field when the payload of `request` is over a provider's limit.

    `configured`: the providers the request's app configures (None: every provider). A provider the app does
    not use never sees the request: a VoIP push with data too big for Huawei's string-encoded data is fine
    for an app without Huawei.
    """
    message, route = request.message, request.route
    providers = _ROUTE_PROVIDERS.get(route, ())
    if configured is not None:
        providers = tuple(name for name in providers if name in configured)
    locales: list[str | None] = [None]
    if route in TEXT_ROUTES:
        locales += list(message.localized)
    for name in providers:
        rule = LIMITS[name]
        limit = rule.limit(request)
        for locale in locales:
            size = rule.size(request, message, locale)
            if size <= limit:
                continue
            if locale is not None:
                raise RequestError(
                    f"message.localized.{locale}", _over(rule.provider, size, limit, f"{rule.what} for locale {locale}")
                )
            raise RequestError(_culprit(request, rule, limit), _over(rule.provider, size, limit, rule.what))


def _culprit(request: PushRequest, rule: _Limit, limit: int) -> str:
    """The field to shorten when the default variant is too big: the data or the Live Activity if that part
    alone is over the limit, else the message as a whole."""
    message = request.message
    if message.live_activity is not None:
        alone = Message(live_activity=message.live_activity)
        return "message.live_activity" if rule.size(request, alone, None) > limit else "message"
    alone = Message(data=message.data)
    return "message.data" if rule.size(request, alone, None) > limit else "message"


def _over(provider: str, size: int, limit: int, what: str) -> str:
    return f"the {provider} {what} would be {size} bytes, over its {limit}-byte limit"
