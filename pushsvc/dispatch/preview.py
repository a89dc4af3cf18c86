"""What a push would look like on each platform, and whom it reaches, before anything is sent: a campaign's
preview (`GET /v1/campaigns/{id}/preview`, and a dry-run campaign's answer to its creation).

For every platform whose token kind takes the request's route and whose provider the app configures, and
for the default text and every locale of `message.localized`, the provider's own `render` builds the request
it would send (headers and body, no credentials). A marketer checks these before a big campaign; the dry run
itself then builds and checks every device's payload through the normal dispatch path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pushsvc.model import Message, PushRequest, Recipient, WebSubscription
from pushsvc.providers.base import Delivery, PayloadRejected, Provider
from pushsvc.token_kinds import KINDS

# The default text (no locale, or one without its own text) is shown under this key.
DEFAULT_LOCALE = "default"
# A placeholder device: previews name no real device.
PREVIEW_TOKEN = "preview-token"
# A well-formed subscription for rendering a web push (render encrypts nothing; the keys are never used).
PREVIEW_SUBSCRIPTION = WebSubscription("https://push.example/preview", "B" + "A" * 86, "A" * 22)


def preview_payloads(
    providers: Mapping[tuple[str, str], Provider], request: PushRequest, expires_at: float | None = None
) -> dict[str, dict[str, Any]]:
    """{platform: {locale: {"headers", "body"} or {"rejected": reason}}} for the request's app."""
    activity = request.message.live_activity
    activity_id = activity.activity_id if activity is not None else None
    locales: list[str | None] = [None, *request.message.localized]
    previews: dict[str, dict[str, Any]] = {}
    for kind in KINDS.values():
        provider = providers.get((request.app, kind.provider))
        if provider is None or not request.takes(kind.name, activity_id):
            continue
        for platform in sorted(kind.platforms):
            if platform in previews:
                continue  # one kind per platform takes a route (ios: apns for alerts, apns_voip for VoIP)
            previews[platform] = {
                locale or DEFAULT_LOCALE: _render(provider, request, kind.name, platform, locale, expires_at)
                for locale in locales
            }
    return previews


def audience_breakdown(message: Message, groups: Mapping[tuple[str, str | None], int]) -> dict[str, Any]:
    """A campaign's audience as a marketer checks it: in all, per platform, per text (the `localized` locale a
    device gets, as dispatch picks it from the device's locale, or `default`), and per platform and text.
    `groups`: devices per (platform, device locale) (DeviceStore.count_audience_by)."""
    by_platform: Counter[str] = Counter()
    by_locale: Counter[str] = Counter()
    by_both: dict[str, Counter[str]] = {}
    for (platform, locale), count in groups.items():
        text = message.localized_key(locale) or DEFAULT_LOCALE
        by_platform[platform] += count
        by_locale[text] += count
        by_both.setdefault(platform, Counter())[text] += count
    return {
        "total": sum(by_platform.values()),
        "by_platform": dict(sorted(by_platform.items())),
        "by_locale": dict(sorted(by_locale.items())),
        "by_platform_and_locale": {p: dict(sorted(c.items())) for p, c in sorted(by_both.items())},
    }


def _render(
    provider: Provider, request: PushRequest, kind: str, platform: str, locale: str | None, expires_at: float | None
) -> dict[str, Any]:
    device = Recipient(
        app=request.app,
        token=PREVIEW_TOKEN,
        platform=platform,
        locale=locale,
        kind=kind,
        subscription=PREVIEW_SUBSCRIPTION if platform == "web" else None,
        activity_id=request.message.live_activity.activity_id if request.message.live_activity else None,
    )
    delivery = Delivery(request.id, device, request.message, request.options, expires_at)
    try:
        rendered = provider.render(delivery)
    except PayloadRejected as exc:
        return {"rejected": exc.reason}
    return {"headers": dict(rendered.headers), "body": dict(rendered.body)}


__all__ = ["DEFAULT_LOCALE", "audience_breakdown", "preview_payloads"]
