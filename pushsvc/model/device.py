"""A recipient (a registered device as a push addresses it), and a browser's Web Push subscription."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from pushsvc.token_kinds import default_kind

Platform = Literal["ios", "android", "huawei", "web"]
PLATFORMS: tuple[str, ...] = typing.get_args(Platform)


@dataclass(frozen=True)
class WebSubscription:
    """A browser's Web Push subscription (the PushSubscription JSON: endpoint and keys)."""

    endpoint: str
    p256dh: str  # base64url of the client's P-256 public key (65 bytes, uncompressed)
    auth: str  # base64url of the 16-byte authentication secret


@dataclass(frozen=True)
class Recipient:
    """A registered device as a push addresses it: the fields of its stored document that dispatch reads
    (store/device_documents.py `to_recipient`), nothing of its registration's other state. The whole device,
    as registered and stored, is `device_contract.Device`."""

    app: str
    token: str
    platform: str
    locale: str | None = None
    timezone: str | None = None
    user_id: str | None = None
    # What the token is for (pushsvc/token_kinds.py: apns, apns_voip, fcm, ...). Left empty, the platform's
    # default (as for devices registered before kinds existed).
    kind: str = ""
    # Web Push devices only: where and how to send (the token is then pushsvc's name for the subscription).
    subscription: WebSubscription | None = None
    # Live Activity update tokens only: the activity the token belongs to.
    activity_id: str | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", default_kind(self.platform) or "")
